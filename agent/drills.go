package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/drill"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/restore"
	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// drills serves restore drill requests: an eligible agent
// (coordinator.DrillEligible: restore-root set, and not beside the master
// unless restore-drill-on-master) claims one and runs it (package drill)
// in the queue's job goroutine, one at a time, beside its backups and
// restores; the leader rejects those no live agent can run, sweeps those
// whose agent died, and requests drills on restore-drill-schedule.
type drills struct {
	opts    drillOptions
	log     hclog.Logger
	coord   *coordinator.Coordinator
	etcd    *clientv3.Client
	keys    request.Keys
	archive *archiveHandle
	metrics *drillMetrics

	queue *request.Queue[catalog.Drill] // requests/drill/, status/drill/
}

// drillOptions is what drills take from the configuration; Schedule reads
// the live restore-drill-schedule.
type drillOptions struct {
	Agent       string
	Cluster     string
	KeeperUID   string // the keeper beside this agent; "" for none
	RestoreRoot string // drills work below it; "" runs none
	ArchiveURL  string // for the restored server's restore_command
	PGBinDir    string
	Superuser   string // restore-drill-superuser
	OnMaster    bool   // restore-drill-on-master
	Schedule    func() config.Schedule
	// ReplayTimeout is the live restore-drill-replay-timeout (0: the
	// drill's default).
	ReplayTimeout func() time.Duration
}

// drillSweepHint ends the error of a drill request swept after its agent
// died: drill.Run removes its scratch directory on every return, but a
// killed agent never returned; its next drill removes what is left.
const drillSweepHint = "its scratch directory (barnacle-drill-* below its restore-root) is removed by its next drill; request the drill again"

// record is this agent's share of its etcd record: whether it may run
// drills, which the leader and barnacle drill read.
func (d *drills) record(s *coordinator.AgentStatus) {
	s.Drills = d.opts.RestoreRoot != ""
	s.DrillsOnMaster = d.opts.OnMaster
}

// eligible reports whether this agent may run a drill now.
func (d *drills) eligible(state coordinator.State) bool {
	self := coordinator.AgentStatus{KeeperUID: d.opts.KeeperUID}
	d.record(&self)
	return coordinator.DrillEligible(self, masterKeeper(state))
}

// masterKeeper is the master's keeper UID, "" when none is known.
func masterKeeper(state coordinator.State) string {
	if !state.HasMaster {
		return ""
	}
	return state.Master.KeeperUID
}

// serveRequests runs on every agent until ctx ends; it returns after the
// drill it runs has ended (drill.Run cleans up when ctx ends).
func (d *drills) serveRequests(ctx context.Context) error {
	d.queue.Serve(ctx, d.serve)
	return nil
}

// serve claims and runs (or, on the leader, rejects) one request.
func (d *drills) serve(ctx context.Context, id string, value []byte) {
	if d.queue.Claimed(ctx, id) {
		return
	}
	req, rejectErr := request.ParseDrill(value)
	if rejectErr == nil {
		// The ID names the record drills/<id>.json and the scratch
		// directory: one that cannot is refused before anything runs.
		if err := catalog.CheckDrillID(id); err != nil {
			rejectErr = fmt.Errorf("request key %s: %w; name drill requests like barnacle drill does", d.keys.Request(request.KindDrill, id), err)
		}
	}
	state := d.coord.State()
	mine := rejectErr == nil && (req.Agent == "" || req.Agent == d.opts.Agent) && d.eligible(state)
	if !mine {
		if !state.Leading {
			return
		}
		if rejectErr == nil {
			rejectErr = d.nobodyRuns(state, req)
			if rejectErr == nil {
				return // an eligible agent claims it
			}
		}
	}
	// One drill at a time: while one runs, this agent leaves the next
	// unclaimed (another eligible agent, or this one afterwards, takes it).
	job, ok := d.queue.Claim(ctx, id, value, rejectErr == nil)
	if !ok {
		return
	}
	if rejectErr != nil {
		job.Reject(ctx, rejectErr)
		d.log.Warn("drill request rejected", "request", id, "error", rejectErr)
		return
	}
	d.queue.Start(func() { d.run(ctx, job) })
}

// nobodyRuns says why no live agent can run req, or nil when one can.
func (d *drills) nobodyRuns(state coordinator.State, req request.Drill) error {
	master := masterKeeper(state)
	if req.Agent != "" {
		a, ok := state.Agents[req.Agent]
		switch {
		case !ok:
			return fmt.Errorf("agent %q is not running: name a live agent (barnacle status lists them), or leave agent out", req.Agent)
		case !coordinator.DrillEligible(a, master):
			return fmt.Errorf("agent %q may not run restore drills: %s", req.Agent, coordinator.NoDrillAgent(map[string]coordinator.AgentStatus{req.Agent: a}, master))
		}
		return nil
	}
	if len(coordinator.DrillAgents(state.Agents, master)) > 0 {
		return nil
	}
	return errors.New(coordinator.NoDrillAgent(state.Agents, master))
}

// run runs a claimed drill and writes its final status, with the drill's
// record as the result (also of a failed drill); it runs in the queue's
// job goroutine and returns when the drill ends. When ctx ends (the agent
// stops), drill.Run stops the server and removes the scratch directory
// before it returns.
func (d *drills) run(ctx context.Context, job *request.Job[catalog.Drill]) {
	job.Running(ctx)
	d.log.Info("drill request claimed", "request", job.ID)
	dctx, cancel := context.WithCancelCause(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		d.stopBesideMaster(dctx, cancel)
	}()
	rec, err := d.runDrill(dctx, job.ID)
	cancel(nil)
	<-watched
	if rec.ID != "" {
		d.metrics.observeOwn(rec)
		job.Status.Result = &rec
	}
	if err != nil {
		job.Fail(ctx, err)
	} else {
		job.Done(ctx, rec)
	}
	d.log.Info("drill request finished", "request", job.ID, "state", string(job.Status.State), "backup", rec.BackupID,
		"reached", rec.Reached.LSN.String(), "error", job.Status.Error)
}

// errBesideMaster ends a drill whose agent's keeper became the master
// while it ran (a failover): eligibility is decided when the drill is
// claimed, and the drill's load must not stay on the new master's host.
var errBesideMaster = errors.New("this agent's keeper became the master during the drill (a failover), and restore-drill-on-master is not set: the drill stopped to keep its load off the master's host; request the drill again (barnacle drill): an agent beside a standby takes it")

// stopBesideMaster cancels the drill with errBesideMaster when this agent
// is no longer eligible because its keeper became the master; it returns
// when ctx ends.
func (d *drills) stopBesideMaster(ctx context.Context, cancel context.CancelCauseFunc) {
	if d.opts.KeeperUID == "" || d.opts.OnMaster {
		return // never beside a master, or allowed to be
	}
	for {
		if masterKeeper(d.coord.State()) == d.opts.KeeperUID {
			d.log.Warn("keeper became the master during a drill: stopping the drill", "keeper", d.opts.KeeperUID)
			cancel(errBesideMaster)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// runDrill opens the archive and runs drill.Run.
func (d *drills) runDrill(ctx context.Context, id string) (catalog.Drill, error) {
	be, err := d.archive.open(ctx)
	if err != nil {
		return catalog.Drill{}, err
	}
	exe, err := os.Executable()
	if err != nil {
		return catalog.Drill{}, fmt.Errorf("find the barnacle executable for the restored server's restore_command: %w", err)
	}
	owner, err := drillOwner(os.Geteuid(), d.opts.RestoreRoot)
	if err != nil {
		return catalog.Drill{}, err
	}
	return drill.Run(ctx, drill.Options{
		ID:            id,
		Node:          d.opts.Agent,
		Backend:       be,
		Cluster:       d.opts.Cluster,
		ArchiveURL:    d.opts.ArchiveURL,
		Executable:    exe,
		ScratchRoot:   d.opts.RestoreRoot,
		PGBinDir:      d.opts.PGBinDir,
		Superuser:     d.opts.Superuser,
		Owner:         owner,
		ReplayTimeout: d.replayTimeout(),
		Logger:        d.log,
	})
}

// replayTimeout is restore-drill-replay-timeout, read as a drill starts:
// a reload applies to the next drill.
func (d *drills) replayTimeout() time.Duration {
	if d.opts.ReplayTimeout == nil {
		return 0 // the drill's default
	}
	return d.opts.ReplayTimeout()
}

// drillOwner is the OS user the drill's server runs as: PostgreSQL refuses
// to run as root, so an agent running as root gives the scratch directory
// to the owner of restore-root (as restore gives a target to its
// directory's owner); otherwise the agent's own user runs it (nil).
func drillOwner(euid int, root string) (*restore.Owner, error) {
	if euid != 0 {
		return nil, nil
	}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("restore-root %s: %w", root, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil, fmt.Errorf("restore-root %s belongs to root, and PostgreSQL does not run as root: give restore-root to the OS user PostgreSQL runs as (chown postgres %s)", root, root)
	}
	return &restore.Owner{UID: int(st.Uid), GID: int(st.Gid)}, nil
}

// leaderDuties runs while this agent leads: sweep the drills of dead
// agents every staleCheckInterval and keep restore-drill-schedule.
func (d *drills) leaderDuties(ctx context.Context, term coordinator.Term) error {
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		d.schedule(ctx, term)
	}()
	return everyStaleCheck(ctx, func() {
		for _, s := range d.queue.Sweep(ctx, aliveIn(d.coord.State().Agents), term.Fence()) {
			d.recordAbandoned(ctx, s)
		}
	})
}

// recordAbandoned writes drills/<id>.json for a drill whose agent died
// while it ran (Sweep marked its status failed), so that status, check,
// list-drills and the metrics see the failure, as they see one the agent
// recorded itself. A record the agent wrote before it died stays.
func (d *drills) recordAbandoned(ctx context.Context, s request.Swept) {
	rec := catalog.Drill{ID: s.ID, Node: s.Status.Agent, StartedAt: s.Status.StartedAt}
	if s.Status.Result != nil {
		_ = json.Unmarshal(*s.Status.Result, &rec) // what the agent had recorded of it, if anything
	}
	rec.ID, rec.Status, rec.Error = s.ID, catalog.DrillFailed, s.Status.Error
	if s.Status.FinishedAt != nil {
		rec.FinishedAt = *s.Status.FinishedAt
	}
	be, err := d.archive.open(ctx)
	if err == nil {
		err = catalog.WriteDrill(ctx, be, d.opts.Cluster, rec)
	}
	switch {
	case errors.Is(err, storage.ErrExist):
	case err != nil:
		d.log.Warn("recording a drill abandoned by a dead agent failed", "request", s.ID, "error", err)
	default:
		d.log.Warn("drill abandoned by a dead agent recorded as failed", "request", s.ID, "agent", s.Status.Agent)
	}
}

// schedule requests a drill whenever restore-drill-schedule says one is
// due (drillDue), through the same request path as barnacle drill, fenced
// on term.
func (d *drills) schedule(ctx context.Context, term coordinator.Term) {
	var (
		pending   string    // the request we wrote that has not finished yet
		requested time.Time // when we last wrote one
	)
	for {
		sched := d.opts.Schedule() // live: a reload applies at the next look
		check := 10 * time.Second
		if every := sched.Interval(); every > 0 {
			check = min(max(every/10, time.Second), 30*time.Second)
		}
		if pending != "" && d.finished(ctx, pending) {
			pending = ""
		}
		if pending == "" && !sched.IsZero() && !d.busy(ctx) {
			be, err := d.archive.open(ctx)
			var list []catalog.Drill
			if err == nil {
				list, err = catalog.ListDrills(ctx, be, d.opts.Cluster)
			}
			switch {
			case err != nil && ctx.Err() == nil:
				d.log.Warn("checking the restore drill schedule failed", "error", err)
			case err == nil && drillDue(sched, list, requested, time.Now()):
				id := "scheduled-drill-" + time.Now().UTC().Format("20060102T150405")
				req := request.Drill{RequestedBy: d.opts.Agent + " (restore-drill-schedule)", RequestedAt: time.Now().UTC()}
				// Fenced: an agent that no longer leads requests nothing.
				if _, err := request.Submit(ctx, d.etcd, d.keys, id, req, term.Fence()); err != nil {
					d.log.Warn("requesting a scheduled restore drill failed", "error", err)
				} else {
					d.log.Info("scheduled restore drill requested", "request", id, "schedule", sched.String())
					pending, requested = id, time.Now()
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

// busy reports whether a drill request is waiting for an agent or
// running (or etcd cannot say): a drill someone requested is as good as a
// scheduled one, and the schedule should not queue a second behind it. A
// request whose status key was deleted after its claim is neither.
func (d *drills) busy(ctx context.Context) bool {
	k := d.keys
	resp, err := d.etcd.Txn(ctx).Then(
		clientv3.OpGet(k.Requests(request.KindDrill), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(k.Statuses(request.KindDrill), clientv3.WithPrefix()),
		clientv3.OpGet(k.Claims(request.KindDrill), clientv3.WithPrefix(), clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return true
	}
	done := map[string]bool{} // finished, or claimed without a status
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		done[strings.TrimPrefix(string(kv.Key), k.Claims(request.KindDrill))] = true
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var st request.DrillStatus
		id := strings.TrimPrefix(string(kv.Key), k.Statuses(request.KindDrill))
		done[id] = json.Unmarshal(kv.Value, &st) == nil && st.State.Final()
	}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		if !done[strings.TrimPrefix(string(kv.Key), k.Requests(request.KindDrill))] {
			return true
		}
	}
	return false
}

// finished reports whether drill request id has a final status.
func (d *drills) finished(ctx context.Context, id string) bool {
	resp, err := d.etcd.Get(ctx, d.keys.Status(request.KindDrill, id))
	if err != nil || len(resp.Kvs) != 1 {
		return false
	}
	var st request.DrillStatus
	return json.Unmarshal(resp.Kvs[0].Value, &st) == nil && st.State.Final()
}

// drillDue reports whether sched's next time after the newest recorded
// drill's start (of any outcome: a failing drill is not retried in a
// loop), or after this leader's last scheduled request (one that was
// rejected left no record), has come; no drill at all is due at once.
func drillDue(sched config.Schedule, list []catalog.Drill, requested, now time.Time) bool {
	last := requested
	for _, r := range list {
		if r.StartedAt.After(last) {
			last = r.StartedAt
		}
	}
	return !now.Before(sched.Next(last))
}
