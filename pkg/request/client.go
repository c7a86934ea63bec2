package request

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrFenced is returned by a write fenced on leadership that did not
// happen because the writer no longer leads.
var ErrFenced = errors.New("request: not leader any more")

// Request is a backup, restore or drill request.
type Request interface {
	Backup | Restore | Drill
	Kind() Kind
}

// Submit writes req as request id and returns its key. fence, when given,
// are comparisons that must hold for the write to happen (the leader's
// term, for requests only the leader writes); when one fails nothing is
// written and the error is ErrFenced.
func Submit[T Request](ctx context.Context, cli *clientv3.Client, keys Keys, id string, req T, fence ...clientv3.Cmp) (string, error) {
	key := keys.Request(req.Kind(), id)
	v, err := json.Marshal(req)
	if err != nil {
		return key, err
	}
	if len(fence) == 0 {
		_, err = cli.Put(ctx, key, string(v))
		return key, err
	}
	resp, err := cli.Txn(ctx).If(fence...).Then(clientv3.OpPut(key, string(v))).Commit()
	if err != nil {
		return key, err
	}
	if !resp.Succeeded {
		return key, ErrFenced
	}
	return key, nil
}

// NewID names a request: its UTC time, sortable, and 6 random hex digits
// so that two written in the same second differ.
func NewID(now time.Time) string {
	rnd := make([]byte, 3)
	_, _ = rand.Read(rnd)
	return now.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(rnd)
}

// Withdrawal is the outcome of Withdraw.
type Withdrawal struct {
	// Withdrawn: the request was deleted before any agent claimed it.
	Withdrawn bool
	// ClaimedBy names the agent whose status says it claimed the request,
	// when it was not withdrawn ("" if the status names none).
	ClaimedBy string
}

// Withdraw deletes request id of kind unless an agent has claimed it: one
// transaction deletes the request only while neither its status key nor
// its claim marker exists, so a claim made in between is never undone. A
// requester that gives up calls it, so that a leader elected later does
// not run what its requester gave up on.
func Withdraw(ctx context.Context, cli *clientv3.Client, keys Keys, kind Kind, id string) (Withdrawal, error) {
	statusKey := keys.Status(kind, id)
	unclaimed := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(statusKey), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(keys.Claim(kind, id)), "=", 0)}
	resp, err := cli.Txn(ctx).If(unclaimed...).
		Then(clientv3.OpDelete(keys.Request(kind, id))).Else(clientv3.OpGet(statusKey)).Commit()
	if err != nil {
		return Withdrawal{}, err
	}
	if resp.Succeeded {
		return Withdrawal{Withdrawn: true}, nil
	}
	var w Withdrawal
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
		var claimed Status[json.RawMessage]
		if json.Unmarshal(kvs[0].Value, &claimed) == nil {
			w.ClaimedBy = claimed.Agent
		}
	}
	return w, nil
}

// Follow watches the status of request id of kind until it reaches a final
// state, and returns it. update, if not nil, gets every status read on the
// way (for a progress bar). It waits as long as ctx lets it, and returns
// ctx's error when ctx ends first.
func Follow[R any](ctx context.Context, cli *clientv3.Client, keys Keys, kind Kind, id string, update func(Status[R])) (Status[R], error) {
	key := keys.Status(kind, id)
	for {
		var st Status[R]
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return st, fmt.Errorf("read %s: %w", key, err)
		}
		rev := resp.Header.Revision
		if len(resp.Kvs) == 1 {
			if err := json.Unmarshal(resp.Kvs[0].Value, &st); err != nil {
				return st, fmt.Errorf("read %s: %w", key, err)
			}
			if update != nil {
				update(st)
			}
			if st.State.Final() {
				return st, nil
			}
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		for range cli.Watch(wctx, key, clientv3.WithRev(rev+1)) {
			break
		}
		cancel()
		if ctx.Err() != nil {
			return st, ctx.Err()
		}
	}
}
