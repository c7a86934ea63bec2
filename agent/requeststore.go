package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// pendingRetry is how often requests nobody has claimed yet are served
// again: who may claim one depends on roles (leader, the agent beside a
// keeper or a standby), which change without an event under requests/.
const pendingRetry = 2 * time.Second

// requestWatch serves the requests of one kind (backup, restore) from
// their revisions: each request once when it appears or changes, and again
// every pendingRetry only while no agent has claimed it. A claimed request
// is never read again, so idle agents cost nothing however many finished
// requests etcd holds, and is never run again, even when its status key
// is deleted: claimed/<kind>/<id> records the claim for as long as the
// request exists (expireRequests deletes the three keys together).
type requestWatch struct {
	cli   *clientv3.Client
	log   hclog.Logger
	serve func(ctx context.Context, id string, value []byte)
	// base is the cluster prefix "<barnacle-prefix>/<cluster>/"; kind is
	// "backup" or "restore".
	base, kind string
}

// newRequestWatch returns the watch for requests under
// "<base>requests/<kind>/".
func newRequestWatch(cli *clientv3.Client, requestPrefix string, serve func(ctx context.Context, id string, value []byte)) (*requestWatch, error) {
	rest, ok := strings.CutSuffix(requestPrefix, "/")
	i := strings.LastIndex(rest, "/requests/")
	if !ok || i < 0 {
		return nil, fmt.Errorf("request prefix %q is not <prefix>/requests/<kind>/", requestPrefix)
	}
	return &requestWatch{cli: cli, log: hclog.NewNullLogger(), serve: serve, base: rest[:i+1], kind: rest[i+len("/requests/"):]}, nil
}

func (w *requestWatch) requests() string { return w.base + "requests/" + w.kind + "/" }
func (w *requestWatch) statuses() string { return w.base + "status/" + w.kind + "/" }
func (w *requestWatch) claims() string   { return w.base + "claimed/" + w.kind + "/" }

// ClaimedKey is the key that records that request id of kind ("backup",
// "restore") was claimed; it lives as long as the request.
func ClaimedKey(base, kind, id string) string { return base + "claimed/" + kind + "/" + id }

// run serves until ctx ends. After a watch error (etcd compacted the
// revision it watched from, or is unreachable) it reads everything again.
func (w *requestWatch) run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := w.session(ctx); err != nil && ctx.Err() == nil {
			w.log.Debug("request watch restarts", "kind", w.kind, "error", err)
			sleepCtx(ctx, time.Second)
		}
	}
}

// session reads the requests, statuses and claims at one revision, serves
// the unclaimed requests, then follows the changes from that revision on,
// in order, in one watch over claimed/ .. status/.
func (w *requestWatch) session(ctx context.Context) error {
	resp, err := w.cli.Get(ctx, w.requests(), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	rev := resp.Header.Revision
	claimed := map[string]bool{}
	pending := map[string][]byte{}
	sts, err := w.cli.Get(ctx, w.statuses(), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev))
	if err != nil {
		return err
	}
	cls, err := w.cli.Get(ctx, w.claims(), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev))
	if err != nil {
		return err
	}
	for _, kv := range cls.Kvs {
		claimed[strings.TrimPrefix(string(kv.Key), w.claims())] = true
	}
	for _, kv := range sts.Kvs {
		id := strings.TrimPrefix(string(kv.Key), w.statuses())
		if !claimed[id] {
			// Claimed before claims were recorded, or the claiming agent
			// stopped before it recorded this one.
			w.recordClaim(ctx, id)
			claimed[id] = true
		}
	}
	for _, kv := range resp.Kvs {
		if id := strings.TrimPrefix(string(kv.Key), w.requests()); !claimed[id] {
			pending[id] = kv.Value
		}
	}
	w.serveAll(ctx, pending)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// One watch keeps the events of the three prefixes in revision order.
	wch := w.cli.Watch(wctx, w.base+"claimed/", clientv3.WithRange(w.base+"status0"), clientv3.WithRev(rev+1))
	tick := time.NewTicker(pendingRetry)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
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
				case strings.HasPrefix(key, w.requests()):
					id := strings.TrimPrefix(key, w.requests())
					switch {
					case !put:
						delete(pending, id)
					case !claimed[id]:
						pending[id] = ev.Kv.Value
						w.serve(ctx, id, ev.Kv.Value)
					}
				case strings.HasPrefix(key, w.statuses()):
					id := strings.TrimPrefix(key, w.statuses())
					if put && ev.IsCreate() {
						w.recordClaim(ctx, id)
					}
					if !put {
						w.log.Debug("status key deleted; the request is not run again", "kind", w.kind, "request", id)
					}
					claimed[id] = true
					delete(pending, id)
				case strings.HasPrefix(key, w.claims()):
					id := strings.TrimPrefix(key, w.claims())
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
func (w *requestWatch) serveAll(ctx context.Context, pending map[string][]byte) {
	ids := make([]string, 0, len(pending))
	for id := range pending {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		w.serve(ctx, id, pending[id])
	}
}

// recordClaim creates claimed/<kind>/<id> if it is missing. Every agent
// that sees a status appear tries; the transaction makes one write.
func (w *requestWatch) recordClaim(ctx context.Context, id string) {
	key := w.claims() + id
	_, err := w.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, time.Now().UTC().Format(time.RFC3339))).Commit()
	if err != nil && ctx.Err() == nil {
		// The next session (or agent start) records it from the status.
		w.log.Warn("recording a request's claim failed", "kind", w.kind, "request", id, "error", err)
	}
}

// expireRequests deletes, in one transaction each, the request, status
// and claim keys of every request of kind that finished more than
// retention before now, after logging its result (the log keeps it; the
// archive keeps a backup's catalog entry). A status changed meanwhile is
// left for the next pass.
func expireRequests(ctx context.Context, cli *clientv3.Client, base, kind string, retention time.Duration, now time.Time, log hclog.Logger) (int, error) {
	statuses := base + "status/" + kind + "/"
	resp, err := cli.Get(ctx, statuses, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	n := 0
	for _, kv := range resp.Kvs {
		var st struct {
			State      string          `json:"state"`
			Agent      string          `json:"agent"`
			Error      string          `json:"error"`
			FinishedAt *time.Time      `json:"finishedAt"`
			Result     json.RawMessage `json:"result"`
		}
		if json.Unmarshal(kv.Value, &st) != nil || st.FinishedAt == nil || now.Sub(*st.FinishedAt) <= retention {
			continue
		}
		id := strings.TrimPrefix(string(kv.Key), statuses)
		tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(base+"requests/"+kind+"/"+id), clientv3.OpDelete(string(kv.Key)), clientv3.OpDelete(ClaimedKey(base, kind, id))).Commit()
		if err != nil {
			return n, err
		}
		if tr.Succeeded {
			n++
			log.Info("finished request expired from etcd", "kind", kind, "request", id, "state", st.State, "agent", st.Agent,
				"finished_at", st.FinishedAt.Format(time.RFC3339), "error", st.Error, "result", string(st.Result))
		}
	}
	return n, nil
}

// expireInterval is how often the leader looks for expired requests: one
// read of the status keys a minute, on one agent, instead of every agent
// reading every request every 2 s.
const expireInterval = time.Minute

// expireLoop runs on the leader until ctx ends: it expires finished
// requests older than request-retention (read live, so a reload applies).
func (a *Agent) expireLoop(ctx context.Context) error {
	log := a.log.Named("requests")
	tk := time.NewTicker(expireInterval)
	defer tk.Stop()
	for {
		if ret := a.liveConfig().RequestRetention; ret > 0 {
			for _, kind := range []string{"backup", "restore"} {
				if _, err := expireRequests(ctx, a.etcd, a.coord.Keys().Prefix, kind, ret, time.Now(), log); err != nil && ctx.Err() == nil {
					log.Warn("expiring finished requests failed; retrying", "kind", kind, "error", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
		}
	}
}
