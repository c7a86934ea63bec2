package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/metrics"
)

// Bounds on what a status key repeats of a request, so that a request just
// under etcd's size limit still gets a status that fits (etcd refuses
// values over --max-request-bytes, 1.5 MiB by default).
const (
	requestEchoLimit = 4 << 10
	statusErrorLimit = 2 << 10
)

// echoRequest returns what a status echoes of a request: the request
// itself when it is JSON of at most requestEchoLimit bytes, or else its
// size.
func echoRequest(value []byte) (json.RawMessage, int) {
	if len(value) <= requestEchoLimit && json.Valid(value) {
		return value, 0
	}
	return nil, len(value)
}

// boundText cuts s to at most limit bytes (on a rune boundary), saying how
// much was cut.
func boundText(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("... (%d more bytes)", len(s)-cut)
}

// statusStore writes request status keys. Every failed write is logged
// and counted (barnacle_requests_status_write_errors_total): a status that
// is never written leaves its requester waiting with no sign why.
type statusStore struct {
	etcd   *clientv3.Client
	log    hclog.Logger
	errors prometheus.Counter
}

// newStatusStore registers the write error counter with reg.
func newStatusStore(cli *clientv3.Client, log hclog.Logger, reg prometheus.Registerer) *statusStore {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "requests", Name: "status_write_errors_total",
		Help: "Failures to write a backup or restore request's status key in etcd."})
	reg.MustRegister(c)
	return &statusStore{etcd: cli, log: log.Named("requests"), errors: c}
}

// failed logs and counts one failed status write.
func (w *statusStore) failed(key, state string, err error) {
	w.errors.Inc()
	w.log.Warn("writing a request status failed", "key", key, "state", state, "error", err)
}

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
	hint   string
	self   string
	log    hclog.Logger
	etcd   *clientv3.Client
	status *statusStore
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
			s.status.failed(key, st.State, err)
			continue
		}
		// Only if nobody changed it meanwhile: a late final status from
		// the agent wins.
		tr, err := s.etcd.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpPut(key, string(v))).Commit()
		switch {
		case err != nil:
			s.status.failed(key, st.State, err)
		case tr.Succeeded:
			s.log.Warn("request abandoned by a dead agent marked failed", "kind", s.what, "key", key, "agent", st.Agent)
		}
	}
	s.seen = seen
}
