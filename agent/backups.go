package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/backup"
	"github.com/barnacle-pg/barnacle/pkg/basebackup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Request states in status/backup/<id> (DESIGN.md §3).
const (
	StateClaimed  = "claimed"
	StateRunning  = "running"
	StateDone     = "done"
	StateFailed   = "failed"
	StateRejected = "rejected"
)

// BackupRequest is the value of requests/backup/<id> (DESIGN.md §3), for
// every writer (barnacle backup, the schedule, the leader after a WAL gap)
// and the one reader, parseBackupRequest, which refuses unknown fields.
type BackupRequest struct {
	From  string `json:"from"`
	Label string `json:"label"`
	// RequestedBy and RequestedAt say which agent asked and when, for
	// requests an agent writes on its own (after a WAL gap).
	RequestedBy string    `json:"requestedBy,omitempty"`
	RequestedAt time.Time `json:"requestedAt,omitzero"`
}

// RequestStatusOf is the value of status/backup/<id> and status/restore/<id>; R is
// what a finished request reports.
type RequestStatusOf[R any] struct {
	State      string     `json:"state"`
	Agent      string     `json:"agent"`
	Error      string     `json:"error,omitempty"`
	Progress   *Progress  `json:"progress,omitempty"`
	StartedAt  time.Time  `json:"startedAt"`
	FinishedAt *time.Time `json:"finishedAt,omitempty"`
	Result     *R         `json:"result,omitempty"`
	// Request echoes the request when it is JSON of at most
	// requestEchoLimit bytes; otherwise RequestBytes gives its size.
	Request      json.RawMessage `json:"request,omitempty"`
	RequestBytes int             `json:"requestBytes,omitempty"`
}

// RequestStatus is the value of status/backup/<id>.
type RequestStatus = RequestStatusOf[BackupResult]

// Progress is bytes done of total (0 when unknown).
type Progress struct {
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
}

// BackupResult is what a finished backup request reports.
type BackupResult struct {
	ID       string `json:"id"`
	StartLSN string `json:"startLSN"`
	StopLSN  string `json:"stopLSN"`
	Bytes    int64  `json:"bytes"`
	Stored   int64  `json:"storedBytes"`
}

// RequestKey and StatusKey lay out the backup request keys.
func RequestKey(keys coordinator.Keys, id string) string {
	return keys.Prefix + "requests/backup/" + id
}

// StatusKey is the status key of backup request id.
func StatusKey(keys coordinator.Keys, id string) string { return keys.Prefix + "status/backup/" + id }

// backups serves backup requests: the leader takes those from the master,
// a follower beside a healthy standby those from a standby. Each request
// is claimed exactly once (a transaction that creates the status key only
// if it does not exist); a backup is done only once the leader has
// archived the WAL up to its stop position.
type backups struct {
	cfg   config.Config
	agent string
	log   hclog.Logger
	coord *coordinator.Coordinator
	etcd  *clientv3.Client
	keys  coordinator.Keys
	arch  *archiver
	live  *reloadable // backup-schedule and backup-from, as reloaded

	mu sync.Mutex // one backup at a time

	curMu   sync.Mutex
	current string // ID of the backup this agent is taking, if any

	work   jobs         // the claimed request running, in its own goroutine
	swept  *sweeper     // the leader's look for requests of dead agents
	status *statusStore // writes status/backup/<id>
}

// leaderDuties is the backups' share of the leader work: mark backups
// abandoned by dead agents failed, and keep the schedule.
func (b *backups) leaderDuties(ctx context.Context, _ coordinator.Term) error {
	// A backup whose agent is gone can never finish. The new leader marks
	// it failed so it never looks usable; a backup a live follower is
	// taking from its standby is left alone.
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		b.schedule(ctx)
	}()
	for {
		b.markAbandoned(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(staleCheckInterval):
		}
	}
}

// staleCheckInterval is how often the leader looks for backups whose agent
// died while taking them.
const staleCheckInterval = 10 * time.Second

// markAbandoned marks failed every running backup whose agent is gone, or
// that this agent's own earlier life left behind.
func (b *backups) markAbandoned(ctx context.Context) {
	agents := b.coord.State().Agents
	// Their requests too, so that whoever follows them learns the outcome;
	// first, as this needs etcd only.
	if b.swept == nil {
		b.swept = &sweeper{prefix: b.keys.Prefix + "status/backup/", what: "backup", hint: "request it again",
			self: b.agent, log: b.log, etcd: b.etcd, status: b.status}
	}
	b.swept.sweep(ctx, agents, b.work.current())
	be, err := b.arch.openBackend(ctx)
	if err != nil {
		return
	}
	b.curMu.Lock()
	current := b.current
	b.curMu.Unlock()
	ids, err := catalog.MarkStaleRunning(ctx, be, b.cfg.ClusterName, func(d catalog.Backup) bool {
		if d.Agent == b.agent {
			return d.ID != current
		}
		_, alive := agents[d.Agent]
		return !alive
	}, "the agent taking it stopped before it finished")
	if err != nil && ctx.Err() == nil {
		b.log.Warn("marking abandoned backups failed", "error", err)
	}
	for _, id := range ids {
		b.log.Warn("backup abandoned by a dead agent marked failed", "backup", id)
	}
}

// serveRequests runs on every agent: the leader serves requests from the
// master (and "any"), a follower beside a healthy standby serves requests
// from a standby. Each request is claimed exactly once.
func (b *backups) serveRequests(ctx context.Context) error {
	watchRequests(ctx, b.etcd, b.keys.Prefix+"requests/backup/", b.serve)
	b.work.wait()
	return nil
}

// watchRequests calls serve for every request under prefix that no agent
// has claimed, when it appears or changes and every 2 s while it stays
// unclaimed (who may claim depends on roles, which change without an
// event here), until ctx ends; see requestWatch.
func watchRequests(ctx context.Context, cli *clientv3.Client, prefix string, serve func(ctx context.Context, id string, value []byte)) {
	w, err := newRequestWatch(cli, prefix, serve)
	if err != nil {
		panic(err) // the callers build prefix as <prefix>/requests/<kind>/
	}
	w.run(ctx)
}

// serve claims and runs one request if this agent is the one to run it
// and no agent has claimed it yet.
func (b *backups) serve(ctx context.Context, id string, value []byte) {
	key := StatusKey(b.keys, id)
	if resp, err := b.etcd.Get(ctx, key, clientv3.WithCountOnly()); err != nil || resp.Count > 0 {
		return
	}
	req, rejectErr := parseBackupRequest(value)
	leading := b.coord.State().Leading
	switch {
	case rejectErr != nil && !leading:
		return // the leader rejects bad requests
	case rejectErr == nil && req.From == "standby" && !b.onStandby():
		if !leading {
			return
		}
		if !b.standbyAvailable() {
			rejectErr = errors.New(`no eligible standby: no healthy standby has a running barnacle agent; use "from":"master" or "any"`)
		} else {
			return // a follower beside a standby takes it
		}
	case rejectErr == nil && req.From != "standby" && !leading:
		return
	}
	// One backup at a time: while one runs, a valid request stays
	// unclaimed (another agent, or this one afterwards, takes it); bad
	// ones are still answered at once.
	if rejectErr == nil && !b.work.reserve(id) {
		return
	}
	st := RequestStatus{State: StateClaimed, Agent: b.agent, StartedAt: time.Now().UTC()}
	st.Request, st.RequestBytes = echoRequest(value)
	claimed, err := putStatus(ctx, b.status, key, st, true)
	if err != nil || !claimed {
		if rejectErr == nil {
			b.work.release()
		}
		return
	}
	if rejectErr != nil {
		st.State, st.Error = StateRejected, rejectErr.Error()
		finishStatus(ctx, b.status, key, st)
		b.log.Warn("backup request rejected", "request", id, "error", rejectErr)
		return
	}
	b.work.start(func() { b.run(ctx, id, key, req, st) })
}

// run takes the backup of a claimed request and writes its final status;
// it runs in the jobs goroutine and returns when the backup ends or ctx
// does.
func (b *backups) run(ctx context.Context, id, key string, req BackupRequest, st RequestStatus) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st.State = StateRunning
	_, _ = putStatus(ctx, b.status, key, st, false)
	b.log.Info("backup request claimed", "request", id, "from", req.From, "label", req.Label)
	var lastProgress time.Time
	doc, err := b.take(ctx, req, func(done, total int64) {
		// The status key carries the same numbers as a progress bar, at
		// most once a second, and the last call's (done == total).
		if time.Since(lastProgress) < time.Second && done != total {
			return
		}
		lastProgress = time.Now()
		st.Progress = &Progress{Done: done, Total: max(total, 0)}
		_, _ = putStatus(ctx, b.status, key, st, false)
	})
	b.setCurrent("")
	if err != nil {
		st.State, st.Error = StateFailed, err.Error()
	} else {
		st.State = StateDone
		st.Result = &BackupResult{ID: doc.ID, StartLSN: doc.StartLSN, StopLSN: doc.StopLSN, Bytes: doc.Bytes, Stored: doc.StoredBytes}
	}
	finishStatus(ctx, b.status, key, st)
	b.log.Info("backup request finished", "request", id, "state", st.State, "backup", doc.ID, "error", st.Error)
}

// parseBackupRequest checks a request and says what to change when it
// cannot run.
func parseBackupRequest(value []byte) (BackupRequest, error) {
	var req BackupRequest
	dec := json.NewDecoder(strings.NewReader(string(value)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf(`malformed request: %v; write JSON such as {"from":"master","label":"nightly"}`, err)
	}
	if err := noTrailingData(dec); err != nil {
		return req, fmt.Errorf(`malformed request: %v; write one JSON object such as {"from":"master","label":"nightly"}`, err)
	}
	switch req.From {
	case "", "master", "any":
		req.From = "master"
	case "standby":
	default:
		return req, fmt.Errorf(`unknown from %q: use "master", "standby" or "any"`, req.From)
	}
	return req, nil
}

// finishStatus writes a request's final status with the finish time, even
// when ctx has just ended (the agent is stopping).
func finishStatus[R any](ctx context.Context, w *statusStore, key string, st RequestStatusOf[R]) {
	now := time.Now().UTC()
	st.FinishedAt = &now
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = putStatus(fctx, w, key, st, false)
}

// putStatus writes a request's status key; with create, only if it does
// not exist yet (the claim, exactly once), reporting whether it wrote. The
// error is bounded (it may quote the request); a failed write is logged and
// counted here, so callers need not.
func putStatus[R any](ctx context.Context, w *statusStore, key string, st RequestStatusOf[R], create bool) (bool, error) {
	st.Error = boundText(st.Error, statusErrorLimit)
	v, err := json.Marshal(st)
	if err != nil {
		w.failed(key, st.State, err)
		return false, err
	}
	if !create {
		_, err := w.etcd.Put(ctx, key, string(v))
		if err != nil {
			w.failed(key, st.State, err)
		}
		return err == nil, err
	}
	resp, err := w.etcd.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, string(v))).Commit()
	if err != nil {
		w.failed(key, st.State, err)
		return false, err
	}
	return resp.Succeeded, nil
}

// onStandby reports whether this agent is a follower beside a healthy
// standby, which may serve requests from a standby.
func (b *backups) onStandby() bool {
	st := b.coord.State()
	if st.Leading || st.ClusterData == nil || b.cfg.KeeperUID == "" {
		return false
	}
	db, ok := st.ClusterData.DBForKeeper(b.cfg.KeeperUID)
	return ok && db.Spec.Role == stolon.RoleStandby && db.Status.Healthy
}

// standbyAvailable reports whether a live agent runs beside a healthy
// standby.
func (b *backups) standbyAvailable() bool {
	st := b.coord.State()
	if st.ClusterData == nil {
		return false
	}
	for _, a := range st.Agents {
		if db, ok := st.ClusterData.DBForKeeper(a.KeeperUID); ok && a.Name != b.agent &&
			db.Spec.Role == stolon.RoleStandby && db.Status.Healthy {
			return true
		}
	}
	return false
}

// take runs the backup against the master, or against this agent's own
// standby for a request from a standby, and waits until the leader has
// archived the WAL up to the stop position (the leader publishes what it
// archived in its agent record).
func (b *backups) take(ctx context.Context, req BackupRequest, progress func(done, total int64)) (catalog.Backup, error) {
	be, err := b.arch.openBackend(ctx)
	if err != nil {
		return catalog.Backup{}, err
	}
	st := b.coord.State()
	var host string
	var port int
	keeper := ""
	switch {
	case req.From == "standby":
		if host, port, err = localAddress(b.cfg, st); err != nil {
			return catalog.Backup{}, err
		}
		keeper = b.cfg.KeeperUID
	case !st.HasMaster:
		return catalog.Backup{}, errors.New("clusterdata names no master")
	default:
		host, port = masterAddress(b.cfg, st)
		keeper = st.Master.KeeperUID
	}
	cs, err := b.cfg.PGConnString(host, port, true)
	if err != nil {
		return catalog.Backup{}, err
	}
	defer b.arch.metrics.catalog.refreshSoon() // done or failed, the catalog changed
	return backup.TakeFrom(ctx, cs, backup.Options{
		Backend:           be,
		Cluster:           b.cfg.ClusterName,
		Compression:       b.cfg.Compression,
		ManifestChecksums: b.live.Config().ManifestChecksums,
		Label:             req.Label,
		Fast:              true,
		Agent:             b.agent,
		KeeperUID:         keeper,
		Host:              fmt.Sprintf("%s:%d", host, port),
		From:              req.From,
		Logger:            b.log,
		OnProgress:        progress,
		OnCreate:          b.setCurrent,
		WaitWAL:           b.waitArchived,
	})
}

func (b *backups) setCurrent(id string) {
	b.curMu.Lock()
	b.current = id
	b.curMu.Unlock()
}

// waitArchived waits until the leader's record says the archive holds the
// WAL up to stop.
func (b *backups) waitArchived(ctx context.Context, stop basebackup.Position) error {
	return backup.WaitArchived(func() (catalog.Position, error) {
		st := b.coord.State()
		if l, ok := st.Agents[st.Leader]; ok && l.ArchivedLSN != "" {
			if lsn, err := wal.ParseLSN(l.ArchivedLSN); err == nil {
				return catalog.Position{Timeline: wal.Timeline(l.Timeline), LSN: lsn}, nil
			}
		}
		return catalog.Position{}, nil
	}, nil, 200*time.Millisecond)(ctx, stop)
}

// schedule requests a backup whenever backup-schedule says the newest
// backup (done or running) is due for a successor, through the same request
// path as a user, so that it is claimed once and shows in etcd.
func (b *backups) schedule(ctx context.Context) {
	// Look often enough to start within a tenth of an interval, and within
	// 10 s of a cron time (cron's resolution is a minute).
	var pending string // the request we wrote and that has not finished yet
	for {
		// backup-schedule and backup-from are live (reload.go): read them
		// afresh each round; without a schedule, look again in a while.
		cfg := b.live.Config()
		check := 10 * time.Second
		if every := cfg.BackupSchedule.Interval(); every > 0 {
			check = min(max(every/10, time.Second), 30*time.Second)
		}
		if pending != "" {
			resp, err := b.etcd.Get(ctx, StatusKey(b.keys, pending))
			if err == nil && len(resp.Kvs) == 1 {
				var st RequestStatus
				if json.Unmarshal(resp.Kvs[0].Value, &st) == nil && st.FinishedAt != nil {
					pending = ""
				}
			}
		}
		if pending == "" && !cfg.BackupSchedule.IsZero() {
			if due, err := b.backupDue(ctx, cfg.BackupSchedule); err != nil {
				b.log.Warn("checking the backup schedule failed", "error", err)
			} else if due {
				id := "scheduled-" + time.Now().UTC().Format("20060102T150405")
				v, _ := json.Marshal(BackupRequest{From: cfg.BackupFrom, Label: "scheduled"})
				if _, err := b.etcd.Put(ctx, RequestKey(b.keys, id), string(v)); err != nil {
					b.log.Warn("requesting a scheduled backup failed", "error", err)
				} else {
					b.log.Info("scheduled backup requested", "request", id, "schedule", cfg.BackupSchedule.String())
					pending = id
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(check):
		}
	}
}

// backupDue reports whether backup-schedule's next time after the newest
// backup's start has come, or there is no backup.
func (b *backups) backupDue(ctx context.Context, sched config.Schedule) (bool, error) {
	be, err := b.arch.openBackend(ctx)
	if err != nil {
		return false, err
	}
	list, err := catalog.ListBackups(ctx, be, b.cfg.ClusterName)
	if err != nil {
		return false, err
	}
	for _, d := range list {
		if d.Status == catalog.StatusDone || d.Status == catalog.StatusRunning {
			return !time.Now().Before(sched.Next(d.StartTime)), nil
		}
	}
	return true, nil
}
