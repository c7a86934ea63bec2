package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
)

// noTrailingData reports anything after the one JSON value dec has read:
// `{...} {"x":1}` is not one request.
func noTrailingData(dec *json.Decoder) error {
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// jobs runs the requests an agent has claimed of one kind (backups or
// restores), one at a time, each in its own goroutine: the watch loop that
// claims them goes on answering other requests (rejecting bad ones,
// leaving others for later) while a long backup or restore runs. It is the
// owner of those goroutines: wait returns once the last has ended.
type jobs struct {
	mu      sync.Mutex
	running string // the request ID reserved or running, "" when idle
	wg      sync.WaitGroup
}

// reserve takes the single slot for request id before it is claimed, so
// that nothing else is claimed meanwhile; false when a job holds it. The
// caller either starts the job or releases the slot.
func (j *jobs) reserve(id string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.running != "" {
		return false
	}
	j.running = id
	return true
}

// release frees a reservation whose claim did not happen.
func (j *jobs) release() {
	j.mu.Lock()
	j.running = ""
	j.mu.Unlock()
}

// start runs the reserved job in its own goroutine and frees the slot when
// it returns.
func (j *jobs) start(run func()) {
	j.wg.Add(1)
	go func() {
		defer j.wg.Done()
		defer j.release()
		run()
	}()
}

// current is the ID of the request this agent is running, or "".
func (j *jobs) current() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.running
}

// wait blocks until every started job has returned.
func (j *jobs) wait() { j.wg.Wait() }

// sweeper marks failed the claimed or running requests under one status
// prefix whose agent is gone: nobody else would ever finish them, and
// whoever follows such a request (barnacle backup --wait, restore
// --via-etcd, a script) would wait forever. A status is swept only when two
// looks in a row, staleCheckInterval apart, find it unchanged and its agent
// gone or idle, so an agent that claims before the leader has seen its
// record is not swept by mistake.
type sweeper struct {
	prefix string // status/<kind>/ under the barnacle prefix
	what   string // "backup" or "restore", for messages
	// hint ends the error written into a swept status: what to do now.
	hint string
	self string
	log  hclog.Logger
	etcd *clientv3.Client
	// seen is the mod revision at which each key looked abandoned last
	// time.
	seen map[string]int64
}

// sweep looks once. agents is who is alive; current is the request this
// agent itself runs now ("" when none): this agent's other claimed or
// running statuses are from an earlier life of the same name.
func (s *sweeper) sweep(ctx context.Context, agents map[string]coordinator.AgentStatus, current string) {
	resp, err := s.etcd.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return
	}
	if s.seen == nil {
		s.seen = map[string]int64{}
	}
	seen := map[string]int64{}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		// The result stays as written; only the state and error change.
		var st RequestStatusOf[json.RawMessage]
		if json.Unmarshal(kv.Value, &st) != nil || (st.State != StateClaimed && st.State != StateRunning) {
			continue
		}
		if st.Agent == s.self {
			if strings.TrimPrefix(key, s.prefix) == current {
				continue // ours, and still running
			}
		} else if _, alive := agents[st.Agent]; alive {
			continue
		}
		seen[key] = kv.ModRevision
		if s.seen[key] != kv.ModRevision {
			continue // first look: sweep it next time if still so
		}
		st.State, st.Error = StateFailed, "agent "+st.Agent+" stopped before the "+s.what+" finished; "+s.hint
		now := time.Now().UTC()
		st.FinishedAt = &now
		v, err := json.Marshal(st)
		if err != nil {
			continue
		}
		// Only if nobody changed it meanwhile: a late final status from
		// the agent wins.
		tr, err := s.etcd.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpPut(key, string(v))).Commit()
		switch {
		case err != nil:
			s.log.Warn("marking an abandoned request failed did not work", "key", key, "error", err)
		case tr.Succeeded:
			s.log.Warn("request abandoned by a dead agent marked failed", "kind", s.what, "key", key, "agent", st.Agent)
		}
	}
	s.seen = seen
}
