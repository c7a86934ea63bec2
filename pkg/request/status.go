package request

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/metrics"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// State is a request's state in its status key.
type State string

// The states of a request. Claimed and Running are live; the others are
// final.
const (
	StateClaimed  State = "claimed"
	StateRunning  State = "running"
	StateDone     State = "done"
	StateFailed   State = "failed"
	StateRejected State = "rejected"
)

// Final reports whether s is a final state: nothing changes the status
// afterwards.
func (s State) Final() bool { return s == StateDone || s == StateFailed || s == StateRejected }

// Status is the value of status/<kind>/<id>; R is what a finished request
// reports.
type Status[R any] struct {
	State      State      `json:"state"`
	Agent      string     `json:"agent"`
	Error      string     `json:"error,omitempty"`
	Progress   *Progress  `json:"progress,omitempty"`
	StartedAt  time.Time  `json:"startedAt"`
	FinishedAt *time.Time `json:"finishedAt,omitempty"`
	Result     *R         `json:"result,omitempty"`
	// Request echoes the request when it is JSON of at most echoLimit
	// bytes; otherwise RequestBytes gives its size.
	Request      json.RawMessage `json:"request,omitempty"`
	RequestBytes int             `json:"requestBytes,omitempty"`
}

// BackupStatus is the value of status/backup/<id>.
type BackupStatus = Status[BackupResult]

// RestoreStatus is the value of status/restore/<id>.
type RestoreStatus = Status[RestoreResult]

// DrillStatus is the value of status/drill/<id>: its result is the
// drill's record, as drills/<id>.json in the archive holds it (set on a
// failed drill too, when the drill began).
type DrillStatus = Status[catalog.Drill]

// Progress is bytes done of total (0 when unknown).
type Progress struct {
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
}

// BackupResult is what a finished backup request reports.
type BackupResult struct {
	ID       string  `json:"id"`
	StartLSN wal.LSN `json:"startLSN"`
	StopLSN  wal.LSN `json:"stopLSN"`
	Bytes    int64   `json:"bytes"`
	Stored   int64   `json:"storedBytes"`
}

// RestoreResult is what a finished restore request reports.
type RestoreResult struct {
	BackupID   string            `json:"backupID"`
	TargetDir  string            `json:"targetDir"`
	Bytes      int64             `json:"bytes"`
	Files      int               `json:"files"`
	MovedAside map[string]string `json:"movedAside,omitempty"`
	Notes      []string          `json:"notes,omitempty"`
}

// Bounds on what a status key repeats of a request, so that a request just
// under etcd's size limit still gets a status that fits (etcd refuses
// values over --max-request-bytes, 1.5 MiB by default).
const (
	echoLimit  = 4 << 10
	ErrorLimit = 2 << 10
)

// echo returns what a status echoes of a request: the request itself when
// it is JSON of at most echoLimit bytes, or else its size.
func echo(value []byte) (json.RawMessage, int) {
	if len(value) <= echoLimit && json.Valid(value) {
		return value, 0
	}
	return nil, len(value)
}

// BoundText cuts s to at most limit bytes (on a rune boundary), saying how
// much was cut.
func BoundText(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("... (%d more bytes)", len(s)-cut)
}

// Writer writes request status keys. Every failed write is logged and
// counted (barnacle_requests_status_write_errors_total): a status that is
// never written leaves its requester waiting with no sign why. It is safe
// for concurrent use.
type Writer struct {
	etcd   *clientv3.Client
	log    hclog.Logger
	errors prometheus.Counter
}

// NewWriter registers the write error counter with reg.
func NewWriter(cli *clientv3.Client, log hclog.Logger, reg prometheus.Registerer) *Writer {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "requests", Name: "status_write_errors_total",
		Help: "Failures to write a backup or restore request's status key in etcd."})
	reg.MustRegister(c)
	return &Writer{etcd: cli, log: log.Named("requests"), errors: c}
}

// failed logs and counts one failed status write.
func (w *Writer) failed(key string, state State, err error) {
	w.errors.Inc()
	w.log.Warn("writing a request status failed", "key", key, "state", string(state), "error", err)
}

// put writes a status key. With claim (the request's claim marker key),
// it is the claim: one transaction creates the status and the marker only
// if neither exists yet (claimed exactly once, and never again after its
// status key was deleted), reporting whether it wrote. The error is bounded
// (it may quote the request); a failed write is logged and counted here, so
// callers need not.
func put[R any](ctx context.Context, w *Writer, key string, st Status[R], claim string) (bool, error) {
	st.Error = BoundText(st.Error, ErrorLimit)
	v, err := json.Marshal(st)
	if err != nil {
		w.failed(key, st.State, err)
		return false, err
	}
	if claim == "" {
		_, err := w.etcd.Put(ctx, key, string(v))
		if err != nil {
			w.failed(key, st.State, err)
		}
		return err == nil, err
	}
	resp, err := w.etcd.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0), clientv3.Compare(clientv3.CreateRevision(claim), "=", 0)).
		// The marker first: watchers see its event before the status's, and
		// need not record the claim themselves.
		Then(clientv3.OpPut(claim, claimValue(st.StartedAt)), clientv3.OpPut(key, string(v))).Commit()
	if err != nil {
		w.failed(key, st.State, err)
		return false, err
	}
	return resp.Succeeded, nil
}

// claimValue is the value of a claim marker: the time of the claim.
func claimValue(at time.Time) string { return at.UTC().Format(time.RFC3339) }
