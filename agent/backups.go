package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/backup"
	"github.com/barnacle-pg/barnacle/pkg/basebackup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// backups serves backup requests: the leader takes those from the master,
// a follower beside a healthy standby those from a standby. Each request
// is claimed exactly once (a transaction that creates the status key only
// if it does not exist); a backup is done only once the leader has
// archived the WAL up to its stop position.
type backups struct {
	opts    backupOptions
	log     hclog.Logger
	coord   *coordinator.Coordinator
	etcd    *clientv3.Client
	keys    request.Keys
	archive *archiveHandle

	mu sync.Mutex // one backup at a time

	curMu   sync.Mutex
	current string // ID of the backup this agent is taking, if any

	queue *request.Queue[request.BackupResult] // requests/backup/, status/backup/
}

// backupOptions is what backups take from the configuration; the live
// keys are functions that read the configuration as last reloaded.
type backupOptions struct {
	Agent       string
	Cluster     string
	KeeperUID   string // the keeper beside this agent; "" for none
	Compression string
	// PG holds the connection settings (pg-*) that pgaddr and
	// PGConnString read to reach the master or the local standby.
	PG config.Config
	// ManifestChecksums returns manifest-checksums.
	ManifestChecksums func() string
	// Schedule returns backup-schedule and backup-from, read together so
	// that a reload never pairs the old one with the new other.
	Schedule func() (config.Schedule, string)
}

// leaderDuties is the backups' share of the leader work: mark backups
// abandoned by dead agents failed, and keep the schedule.
func (b *backups) leaderDuties(ctx context.Context, term coordinator.Term) error {
	// A backup whose agent is gone can never finish. The new leader marks
	// it failed so it never looks usable; a backup a live follower is
	// taking from its standby is left alone.
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		b.schedule(ctx, term)
	}()
	return everyStaleCheck(ctx, func() { b.markAbandoned(ctx, term) })
}

// staleCheckInterval is how often the leader looks for backups whose agent
// died while taking them.
const staleCheckInterval = 10 * time.Second

// everyStaleCheck runs check now and then every staleCheckInterval until
// ctx ends; the leader's sweeps of work abandoned by dead agents run so.
func everyStaleCheck(ctx context.Context, check func()) error {
	for {
		check()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(staleCheckInterval):
		}
	}
}

// markAbandoned marks failed every running backup whose agent is gone, or
// that this agent's own earlier life left behind.
func (b *backups) markAbandoned(ctx context.Context, term coordinator.Term) {
	agents := b.coord.State().Agents
	// Their requests too, so that whoever follows them learns the outcome;
	// first, as this needs etcd only.
	b.queue.Sweep(ctx, aliveIn(agents), term.Fence())
	be, err := b.archive.open(ctx)
	if err != nil {
		return
	}
	b.curMu.Lock()
	current := b.current
	b.curMu.Unlock()
	ids, err := catalog.MarkStaleRunning(ctx, be, b.opts.Cluster, func(d catalog.Backup) bool {
		if d.Agent == b.opts.Agent {
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
	b.queue.Serve(ctx, b.serve)
	return nil
}

// serve claims and runs one request if this agent is the one to run it
// and no agent has claimed it yet.
func (b *backups) serve(ctx context.Context, id string, value []byte) {
	if b.queue.Claimed(ctx, id) {
		return
	}
	req, rejectErr := request.ParseBackup(value)
	leading := b.coord.State().Leading
	switch {
	case rejectErr != nil && !leading:
		return // the leader rejects bad requests
	case rejectErr == nil && req.From == request.FromStandby && !b.onStandby():
		if !leading {
			return
		}
		if !b.standbyAvailable() {
			rejectErr = errors.New(`no eligible standby: no healthy standby has a running barnacle agent; use "from":"master" or "any"`)
		} else {
			return // a follower beside a standby takes it
		}
	case rejectErr == nil && req.From != request.FromStandby && !leading:
		return
	}
	// One backup at a time: while one runs, a valid request stays
	// unclaimed (another agent, or this one afterwards, takes it); bad
	// ones are still answered at once.
	job, ok := b.queue.Claim(ctx, id, value, rejectErr == nil)
	if !ok {
		return
	}
	if rejectErr != nil {
		job.Reject(ctx, rejectErr)
		b.log.Warn("backup request rejected", "request", id, "error", rejectErr)
		return
	}
	b.queue.Start(func() { b.run(ctx, job, req) })
}

// run takes the backup of a claimed request and writes its final status;
// it runs in the queue's job goroutine and returns when the backup ends or
// ctx does.
func (b *backups) run(ctx context.Context, job *request.Job[request.BackupResult], req request.Backup) {
	b.mu.Lock()
	defer b.mu.Unlock()
	job.Running(ctx)
	b.log.Info("backup request claimed", "request", job.ID, "from", req.From, "label", req.Label)
	doc, err := b.take(ctx, req, func(done, total int64) { job.Progress(ctx, done, total) })
	b.setCurrent("")
	if err != nil {
		job.Fail(ctx, err)
	} else {
		job.Done(ctx, request.BackupResult{ID: doc.ID, StartLSN: doc.StartLSN, StopLSN: doc.StopLSN, Bytes: doc.Bytes, Stored: doc.StoredBytes})
	}
	b.log.Info("backup request finished", "request", job.ID, "state", string(job.Status.State), "backup", doc.ID, "error", job.Status.Error)
}

// aliveIn says whether the life of an agent that claimed a request at
// claimedAt still runs: the agent has a record in agents, begun no later.
func aliveIn(agents map[string]coordinator.AgentStatus) func(string, time.Time) bool {
	return func(name string, claimedAt time.Time) bool {
		a, ok := agents[name]
		// A life that began after the claim is a restart under the same
		// name: the life that claimed is gone. Both times are that agent's
		// own clock.
		return ok && !a.StartedAt.After(claimedAt)
	}
}

// onStandby reports whether this agent is a follower beside a healthy
// standby, which may serve requests from a standby.
func (b *backups) onStandby() bool {
	st := b.coord.State()
	if st.Leading || st.ClusterData == nil || b.opts.KeeperUID == "" {
		return false
	}
	db, ok := st.ClusterData.DBForKeeper(b.opts.KeeperUID)
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
		if db, ok := st.ClusterData.DBForKeeper(a.KeeperUID); ok && a.Name != b.opts.Agent &&
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
func (b *backups) take(ctx context.Context, req request.Backup, progress func(done, total int64)) (catalog.Backup, error) {
	be, err := b.archive.open(ctx)
	if err != nil {
		return catalog.Backup{}, err
	}
	st := b.coord.State()
	var host string
	var port int
	keeper := ""
	switch {
	case req.From == request.FromStandby:
		if host, port, err = localAddress(b.opts.PG, st); err != nil {
			return catalog.Backup{}, err
		}
		keeper = b.opts.KeeperUID
	case !st.HasMaster:
		return catalog.Backup{}, errors.New("clusterdata names no master")
	default:
		host, port = masterAddress(b.opts.PG, st)
		keeper = st.Master.KeeperUID
	}
	cs, err := b.opts.PG.PGConnString(host, port, true)
	if err != nil {
		return catalog.Backup{}, err
	}
	// Done or failed, the catalog changed. A done backup may resolve a
	// gap: the leader's archiver sees the request finish (watchGaps).
	defer b.archive.changed()
	return backup.TakeFrom(ctx, cs, backup.Options{
		Backend:           be,
		Cluster:           b.opts.Cluster,
		Compression:       b.opts.Compression,
		ManifestChecksums: b.opts.ManifestChecksums(),
		Label:             req.Label,
		Fast:              true,
		Agent:             b.opts.Agent,
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
		if l, ok := st.Agents[st.Leader]; ok && l.ArchivedLSN != wal.InvalidLSN {
			return catalog.Position{Timeline: wal.Timeline(l.Timeline), LSN: l.ArchivedLSN}, nil
		}
		return catalog.Position{}, nil
	}, nil, 200*time.Millisecond)(ctx, stop)
}

// schedule requests a backup whenever backup-schedule says the newest
// backup (done or running) is due for a successor, through the same request
// path as a user, so that it is claimed once and shows in etcd.
func (b *backups) schedule(ctx context.Context, term coordinator.Term) {
	// Look often enough to start within a tenth of an interval, and within
	// 10 s of a cron time (cron's resolution is a minute).
	var pending string // the request we wrote and that has not finished yet
	for {
		// backup-schedule and backup-from are live (reload.go): read them
		// afresh each round; without a schedule, look again in a while.
		sched, from := b.opts.Schedule()
		check := 10 * time.Second
		if every := sched.Interval(); every > 0 {
			check = min(max(every/10, time.Second), 30*time.Second)
		}
		if pending != "" {
			resp, err := b.etcd.Get(ctx, b.keys.Status(request.KindBackup, pending))
			if err == nil && len(resp.Kvs) == 1 {
				var st request.BackupStatus
				if json.Unmarshal(resp.Kvs[0].Value, &st) == nil && st.FinishedAt != nil {
					pending = ""
				}
			}
		}
		if pending == "" && !sched.IsZero() {
			if due, err := b.backupDue(ctx, sched); err != nil {
				b.log.Warn("checking the backup schedule failed", "error", err)
			} else if due {
				id := "scheduled-" + time.Now().UTC().Format("20060102T150405")
				// Fenced: an agent that no longer leads requests nothing.
				req := request.Backup{From: from, Label: "scheduled"}
				if _, err := request.Submit(ctx, b.etcd, b.keys, id, req, term.Fence()); err != nil {
					b.log.Warn("requesting a scheduled backup failed", "error", err)
				} else {
					b.log.Info("scheduled backup requested", "request", id, "schedule", sched.String())
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
	list, err := b.archive.listBackups(ctx)
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
