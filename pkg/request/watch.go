package request

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/internal/retry"
)

// pendingRetry is how often requests nobody has claimed yet are served
// again: who may claim one depends on roles (leader, the agent beside a
// keeper or a standby), which change without an event under requests/.
const pendingRetry = 2 * time.Second

// watch serves the requests of one kind from their revisions: each
// request once when it appears or changes, and again every pendingRetry
// only while no agent has claimed it. A claimed request is never read
// again, so idle agents cost nothing however many finished requests etcd
// holds, and is never run again, even when its status key is deleted: its
// claim marker (Keys.Claim) records the claim for as long as the request
// exists (Expire deletes the three keys together).
type watch struct {
	cli   *clientv3.Client
	keys  Keys
	kind  Kind
	log   hclog.Logger
	serve func(ctx context.Context, id string, value []byte)
	// freed receives when the queue's slot is freed: the pending requests
	// are served again at once.
	freed <-chan struct{}
}

// run serves until ctx ends. After a watch error (etcd compacted the
// revision it watched from, or is unreachable) it reads everything again.
func (w *watch) run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := w.session(ctx); err != nil && ctx.Err() == nil {
			w.log.Debug("request watch restarts", "kind", string(w.kind), "error", err)
			retry.Sleep(ctx, time.Second)
		}
	}
}

// session reads the requests, statuses and claims at one revision, serves
// the unclaimed requests, then follows the changes from that revision on,
// in order, in one watch over claimed/ .. status/.
func (w *watch) session(ctx context.Context) error {
	requests, statuses, claims := w.keys.Requests(w.kind), w.keys.Statuses(w.kind), w.keys.Claims(w.kind)
	resp, err := w.cli.Get(ctx, requests, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	rev := resp.Header.Revision
	claimed := map[string]bool{}
	pending := map[string][]byte{}
	sts, err := w.cli.Get(ctx, statuses, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev))
	if err != nil {
		return err
	}
	cls, err := w.cli.Get(ctx, claims, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev))
	if err != nil {
		return err
	}
	for _, kv := range cls.Kvs {
		claimed[strings.TrimPrefix(string(kv.Key), claims)] = true
	}
	for _, kv := range sts.Kvs {
		id := strings.TrimPrefix(string(kv.Key), statuses)
		if !claimed[id] {
			// Claimed before claims were recorded, or by an agent that
			// writes no claim marker.
			w.recordClaim(ctx, id)
			claimed[id] = true
		}
	}
	for _, kv := range resp.Kvs {
		if id := strings.TrimPrefix(string(kv.Key), requests); !claimed[id] {
			pending[id] = kv.Value
		}
	}
	w.serveAll(ctx, pending)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// One watch keeps the events of the three prefixes in revision order.
	wch := w.cli.Watch(wctx, w.keys.Prefix+"claimed/", clientv3.WithRange(w.keys.Prefix+"status0"), clientv3.WithRev(rev+1))
	tick := time.NewTicker(pendingRetry)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			w.serveAll(ctx, pending)
		case <-w.freed:
			w.serveAll(ctx, pending)
		case wr, ok := <-wch:
			if !ok {
				return errors.New("watch closed")
			}
			if err := wr.Err(); err != nil {
				return err
			}
			for _, ev := range wr.Events {
				key := string(ev.Kv.Key)
				put := ev.Type == clientv3.EventTypePut
				switch {
				case strings.HasPrefix(key, requests):
					id := strings.TrimPrefix(key, requests)
					switch {
					case !put:
						delete(pending, id)
					case !claimed[id]:
						pending[id] = ev.Kv.Value
						w.serve(ctx, id, ev.Kv.Value)
					}
				case strings.HasPrefix(key, statuses):
					id := strings.TrimPrefix(key, statuses)
					if put && ev.IsCreate() && !claimed[id] {
						w.recordClaim(ctx, id)
					}
					if !put {
						w.log.Debug("status key deleted; the request is not run again", "kind", string(w.kind), "request", id)
					}
					claimed[id] = true
					delete(pending, id)
				case strings.HasPrefix(key, claims):
					id := strings.TrimPrefix(key, claims)
					if put {
						claimed[id] = true
						delete(pending, id)
					} else {
						delete(claimed, id)
					}
				}
			}
		}
	}
}

// serveAll serves the pending requests in ID order (request IDs sort by
// time where barnacle makes them).
func (w *watch) serveAll(ctx context.Context, pending map[string][]byte) {
	for _, id := range slices.Sorted(maps.Keys(pending)) {
		if ctx.Err() != nil {
			return
		}
		w.serve(ctx, id, pending[id])
	}
}

// recordClaim creates the claim marker of request id if it is missing
// (Claim writes it with the status; a status written otherwise has none).
// Every agent that sees such a status tries; the transaction makes one
// write.
func (w *watch) recordClaim(ctx context.Context, id string) {
	key := w.keys.Claim(w.kind, id)
	_, err := w.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, claimValue(time.Now()))).Commit()
	if err != nil && ctx.Err() == nil {
		// The next session (or agent start) records it from the status.
		w.log.Warn("recording a request's claim failed", "kind", string(w.kind), "request", id, "error", err)
	}
}

// Expire deletes, in one transaction each, the request, status and claim
// marker of every request of the queue's kind that finished more than
// retention before now, after logging its result (the log keeps it; the
// archive keeps a backup's catalog entry). A status changed meanwhile is
// left for the next pass. It also deletes the request and claim marker of
// a request whose status is gone (deleted by hand: the marker keeps it
// from ever running again, so nothing else would remove them) once the
// claim is older than retention (see expireOrphanClaims). Only the leader
// expires: fence is the comparison that holds while it leads, checked in
// each transaction; once it fails, Expire stops with ErrFenced. It returns
// how many requests it expired.
func (q *Queue[R]) Expire(ctx context.Context, retention time.Duration, now time.Time, fence clientv3.Cmp) (int, error) {
	n, err := q.expireFinished(ctx, retention, now, fence)
	if err != nil {
		return n, err
	}
	m, err := q.expireOrphanClaims(ctx, retention, now, fence)
	return n + m, err
}

// expireOrphanClaims deletes the request and claim marker of every
// request of the queue's kind that has a claim marker but no status, once
// the claim (the time the marker holds) is more than retention before now:
// the rule for finished requests, with the claim's time standing for the
// finish that the deleted status no longer tells. A request still running
// after retention (7 days by default) whose status was deleted loses only
// its request key: its agent goes on and writes its status again, which
// the first pass expires in turn. A marker whose value is no time was not
// written by barnacle (Claim and recordClaim write the time), so its age
// is unknown, and it goes at once with its status gone. Status, marker
// and fence are checked in the transaction: a status written meanwhile
// (a claim being recorded, a job's progress) keeps both.
func (q *Queue[R]) expireOrphanClaims(ctx context.Context, retention time.Duration, now time.Time, fence clientv3.Cmp) (int, error) {
	k, kind := q.opts.Keys, q.opts.Kind
	claims := k.Claims(kind)
	resp, err := q.opts.Client.Get(ctx, claims, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	n := 0
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		id := strings.TrimPrefix(key, claims)
		at, perr := time.Parse(time.RFC3339, string(kv.Value))
		if perr == nil && now.Sub(at) <= retention {
			continue
		}
		status := k.Status(kind, id)
		tr, err := q.opts.Client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision),
				clientv3.Compare(clientv3.CreateRevision(status), "=", 0), fence).
			Then(clientv3.OpDelete(k.Request(kind, id)), clientv3.OpDelete(key)).
			Else(clientv3.OpGet(key, clientv3.WithKeysOnly()), clientv3.OpGet(status, clientv3.WithKeysOnly())).Commit()
		if err != nil {
			return n, err
		}
		if !tr.Succeeded {
			// Marker unchanged and still no status: the fence failed.
			marker, st := tr.Responses[0].GetResponseRange().Kvs, tr.Responses[1].GetResponseRange().Kvs
			if len(marker) == 1 && marker[0].ModRevision == kv.ModRevision && len(st) == 0 {
				return n, ErrFenced
			}
			continue // it has a status (the first pass's business) or changed
		}
		n++
		q.log.Info("claimed request without a status expired from etcd", "kind", string(kind), "request", id,
			"claimed_at", string(kv.Value))
	}
	return n, nil
}

// expireFinished is Expire's pass over the statuses.
func (q *Queue[R]) expireFinished(ctx context.Context, retention time.Duration, now time.Time, fence clientv3.Cmp) (int, error) {
	k, kind := q.opts.Keys, q.opts.Kind
	statuses := k.Statuses(kind)
	resp, err := q.opts.Client.Get(ctx, statuses, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	n := 0
	for _, kv := range resp.Kvs {
		// The result as written, whatever its kind, for the log.
		var st Status[json.RawMessage]
		if json.Unmarshal(kv.Value, &st) != nil || st.FinishedAt == nil || now.Sub(*st.FinishedAt) <= retention {
			continue
		}
		key := string(kv.Key)
		id := strings.TrimPrefix(key, statuses)
		tr, err := q.opts.Client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision), fence).
			Then(clientv3.OpDelete(k.Request(kind, id)), clientv3.OpDelete(key), clientv3.OpDelete(k.Claim(kind, id))).
			Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).Commit()
		if err != nil {
			return n, err
		}
		if !tr.Succeeded {
			// The status as it is now: unchanged means the fence failed.
			if kvs := tr.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 && kvs[0].ModRevision == kv.ModRevision {
				return n, ErrFenced
			}
			continue
		}
		n++
		var result string
		if st.Result != nil {
			result = string(*st.Result)
		}
		q.log.Info("finished request expired from etcd", "kind", string(kind), "request", id, "state", string(st.State), "agent", st.Agent,
			"finished_at", st.FinishedAt.Format(time.RFC3339), "error", st.Error, "result", result)
	}
	return n, nil
}
