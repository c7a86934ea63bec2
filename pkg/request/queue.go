package request

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// QueueOptions configure a Queue.
type QueueOptions struct {
	Kind   Kind
	Keys   Keys
	Client *clientv3.Client
	// Agent is this agent's name, written into the statuses it claims.
	Agent  string
	Writer *Writer
	Logger hclog.Logger
	// SweepHint ends the error written into a swept status: what the
	// requester should do now.
	SweepHint string
}

// Queue is one agent's side of the requests of one kind: it watches them,
// claims each at most once, runs the claimed one in its own goroutine (one
// at a time) and writes its status to the end. On the leader it also
// sweeps the statuses of agents that died and expires finished requests.
// Create it with NewQueue.
//
// The watch loop that claims requests goes on answering others (rejecting
// bad ones, leaving valid ones for later) while a long backup or restore
// runs: the running job holds the single slot, and Serve waits for it
// before it returns.
type Queue[R any] struct {
	opts QueueOptions
	log  hclog.Logger

	mu      sync.Mutex
	running string // the request ID reserved or running, "" when idle
	wg      sync.WaitGroup
	// freed tells Serve that the slot is free again, so that requests left
	// unclaimed while a job ran are served at once instead of at the next
	// retry: a burst of requests then runs back to back.
	freed chan struct{}

	sweepMu sync.Mutex
	// seen is the mod revision at which each status key looked abandoned
	// at the last sweep.
	seen map[string]int64
}

// NewQueue returns a queue; it starts nothing.
func NewQueue[R any](opts QueueOptions) *Queue[R] {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	return &Queue[R]{opts: opts, log: opts.Logger, freed: make(chan struct{}, 1)}
}

// Serve calls serve for every request of the queue's kind that no agent
// has claimed, when it appears or changes and again every 2 s while it
// stays unclaimed (who may claim a request depends on roles, which change
// without an event here), until ctx ends; then it waits for the job it
// started to return. It follows the keys by revision (see watch): a
// claimed request is never read or served again. serve is called from
// this goroutine only.
func (q *Queue[R]) Serve(ctx context.Context, serve func(ctx context.Context, id string, value []byte)) {
	defer q.wg.Wait()
	w := &watch{cli: q.opts.Client, keys: q.opts.Keys, kind: q.opts.Kind, log: q.log, serve: serve, freed: q.freed}
	w.run(ctx)
}

// Kind is the kind of the queue's requests.
func (q *Queue[R]) Kind() Kind { return q.opts.Kind }

// Claimed reports whether request id has a status or a claim marker
// already (or etcd could not say): then nobody may claim it.
func (q *Queue[R]) Claimed(ctx context.Context, id string) bool {
	k, kind := q.opts.Keys, q.opts.Kind
	resp, err := q.opts.Client.Txn(ctx).Then(clientv3.OpGet(k.Status(kind, id), clientv3.WithCountOnly()),
		clientv3.OpGet(k.Claim(kind, id), clientv3.WithCountOnly())).Commit()
	if err != nil {
		return true
	}
	for _, r := range resp.Responses {
		if r.GetResponseRange().Count > 0 {
			return true
		}
	}
	return false
}

// Claim creates request id's status as claimed by this agent, and its
// claim marker, in a transaction that fails if either exists: a request is
// claimed exactly once, and never again after its status key was deleted.
// value is the request as read, echoed in the status. With run, the claim is for running the request and takes the queue's single
// slot first: while another job holds it, Claim leaves the request
// unclaimed and returns false. Without run the claim is for rejecting it
// (Job.Reject), which needs no slot. The caller of a run claim must Start
// the job.
func (q *Queue[R]) Claim(ctx context.Context, id string, value []byte, run bool) (*Job[R], bool) {
	if run && !q.reserve(id) {
		return nil, false
	}
	j := &Job[R]{q: q, ID: id, Key: q.opts.Keys.Status(q.opts.Kind, id),
		Status: Status[R]{State: StateClaimed, Agent: q.opts.Agent, StartedAt: time.Now().UTC()}}
	j.Status.Request, j.Status.RequestBytes = echo(value)
	claimed, err := put(ctx, q.opts.Writer, j.Key, j.Status, q.opts.Keys.Claim(q.opts.Kind, id))
	if err != nil || !claimed {
		if run {
			q.release()
		}
		return nil, false
	}
	return j, true
}

// Start runs a job claimed with run in its own goroutine and frees the
// queue's slot when it returns. Serve waits for it.
func (q *Queue[R]) Start(run func()) {
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		defer q.release()
		run()
	}()
}

// current is the ID of the request this agent is running, or "".
func (q *Queue[R]) current() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.running
}

// reserve takes the single slot for request id before it is claimed, so
// that nothing else is claimed meanwhile; false when a job holds it.
func (q *Queue[R]) reserve(id string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.running != "" {
		return false
	}
	q.running = id
	return true
}

// release frees the slot.
func (q *Queue[R]) release() {
	q.mu.Lock()
	q.running = ""
	q.mu.Unlock()
	select {
	case q.freed <- struct{}{}:
	default: // Serve has not taken the last one yet
	}
}

// Job is one claimed request and its status, written by the one goroutine
// that runs (or rejects) it. Callers may set Status fields (Progress,
// Result) before a write.
type Job[R any] struct {
	q            *Queue[R]
	ID, Key      string
	Status       Status[R]
	lastProgress time.Time
}

// Running marks the job running.
func (j *Job[R]) Running(ctx context.Context) {
	j.Status.State = StateRunning
	_, _ = put(ctx, j.q.opts.Writer, j.Key, j.Status, "")
}

// Progress records done of total bytes, at most once a second, and always
// the call with done == total, so that the status key carries the same
// numbers as a progress bar.
func (j *Job[R]) Progress(ctx context.Context, done, total int64) {
	if time.Since(j.lastProgress) < time.Second && done != total {
		return
	}
	j.lastProgress = time.Now()
	j.Status.Progress = &Progress{Done: done, Total: max(total, 0)}
	_, _ = put(ctx, j.q.opts.Writer, j.Key, j.Status, "")
}

// Done finishes the job with its result.
func (j *Job[R]) Done(ctx context.Context, result R) {
	j.Status.Result = &result
	j.finish(ctx, StateDone, "")
}

// Fail finishes the job as failed: it began, and may have written
// something. A Result set before stays.
func (j *Job[R]) Fail(ctx context.Context, err error) { j.finish(ctx, StateFailed, err.Error()) }

// Reject finishes the job as rejected: nothing was written; err says what
// to change.
func (j *Job[R]) Reject(ctx context.Context, err error) { j.finish(ctx, StateRejected, err.Error()) }

// finish writes the final status with the finish time, even when ctx has
// just ended (the agent is stopping), bounded by 5 s.
func (j *Job[R]) finish(ctx context.Context, state State, msg string) {
	now := time.Now().UTC()
	j.Status.State, j.Status.Error, j.Status.FinishedAt = state, msg, &now
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = put(fctx, j.q.opts.Writer, j.Key, j.Status, "")
}

// Sweep marks failed, once, the claimed or running statuses of this kind
// whose agent is gone: nobody else would ever finish them, and whoever
// follows such a request (barnacle backup --wait, restore --via-etcd, a
// script) would wait forever. A status is swept only when two sweeps in a
// row find it unchanged and its agent gone (see abandoned), so an agent
// that claims before the leader has seen its record is not swept by
// mistake. alive says whether the life of an agent that claimed a request
// at claimedAt still runs: an agent restarted under the same name (kill -9
// and a supervisor's restart within a sweep) is alive, but not the life
// that ran the request. Only the leader sweeps: fence is the comparison
// that holds while it leads (the election key's create revision), checked
// in the same transaction as the write; a sweep by an agent that lost
// leadership writes nothing. It returns the statuses it marked failed.
func (q *Queue[R]) Sweep(ctx context.Context, alive func(agent string, claimedAt time.Time) bool, fence clientv3.Cmp) []Swept {
	q.sweepMu.Lock()
	defer q.sweepMu.Unlock()
	prefix := q.opts.Keys.Statuses(q.opts.Kind)
	resp, err := q.opts.Client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil
	}
	current := q.current()
	seen := map[string]int64{}
	var swept []Swept
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		// The result stays as written; only the state and error change.
		var st Status[json.RawMessage]
		if json.Unmarshal(kv.Value, &st) != nil {
			continue
		}
		if !abandoned(st, strings.TrimPrefix(key, prefix), q.opts.Agent, current, alive) {
			continue
		}
		seen[key] = kv.ModRevision
		if q.seen[key] != kv.ModRevision {
			continue // first look: sweep it next time if still so
		}
		st.State, st.Error = StateFailed, "agent "+st.Agent+" stopped before the "+string(q.opts.Kind)+" finished; "+q.opts.SweepHint
		now := time.Now().UTC()
		st.FinishedAt = &now
		v, err := json.Marshal(st)
		if err != nil {
			q.opts.Writer.failed(key, st.State, err)
			continue
		}
		// Only if nobody changed it meanwhile (a late final status from
		// the agent wins) and this agent still leads.
		tr, err := q.opts.Client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision), fence).
			Then(clientv3.OpPut(key, string(v))).Commit()
		switch {
		case err != nil:
			q.opts.Writer.failed(key, st.State, err)
		case tr.Succeeded:
			swept = append(swept, Swept{Key: key, ID: strings.TrimPrefix(key, prefix), Status: st})
			q.log.Warn("request abandoned by a dead agent marked failed", "kind", string(q.opts.Kind), "key", key, "agent", st.Agent)
		}
	}
	q.seen = seen
	return swept
}

// Swept is a status Sweep marked failed, as it wrote it.
type Swept struct {
	Key, ID string
	Status  Status[json.RawMessage]
}

// abandoned decides whether the status of request id looks abandoned: it
// is claimed or running, and the life of its agent that claimed it is
// gone, or its agent is this agent (self), which does not run it now
// (current): then it is from an earlier life of the same name.
func abandoned[R any](st Status[R], id, self, current string, alive func(string, time.Time) bool) bool {
	if st.State != StateClaimed && st.State != StateRunning {
		return false
	}
	if st.Agent == self {
		return id != current
	}
	return !alive(st.Agent, st.StartedAt)
}
