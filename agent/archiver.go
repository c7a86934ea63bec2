package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5/pgconn"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/retry"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

// archiver runs the WAL receiver against the current master while this
// agent leads: it is the coordinator's LeaderWork. It restarts the receiver
// when the master changes, retries failures with backoff, records WAL gaps
// and asks for a base backup after one.
type archiver struct {
	opts    archiverOptions
	log     hclog.Logger
	coord   *coordinator.Coordinator
	etcd    *clientv3.Client
	keys    request.Keys
	metrics *archiverMetrics
	updates <-chan struct{}

	archive *archiveHandle

	mu    sync.Mutex
	state archiverState
}

// archiverOptions is what the archiver takes from the configuration. All
// are fixed keys (none of them reloads), so it has no getters.
type archiverOptions struct {
	Agent      string
	Cluster    string
	Slot       string // slot-name: the slot a follower keeps on its standby
	StreamSlot string // the slot the stream uses (config.StreamingSlotName)
	CreateSlot bool   // slot-mode own: the receiver creates StreamSlot
	// DropStandbySlot (slot-mode stolon with standby-slots) drops Slot on
	// a promoted master once Stolon's slot protects the stream.
	DropStandbySlot bool
	Compression     string
	Synchronous     bool
	// PG holds the connection settings (pg-*) that pgaddr and
	// PGConnString read to reach the master and the other keepers.
	PG config.Config
}

// archiverState is what the agent record and /status show of the archiver.
type archiverState struct {
	Streaming   bool
	Timeline    wal.Timeline
	Received    wal.LSN
	Flushed     wal.LSN
	ServerEnd   wal.LSN
	LastSegment string
	LastError   string
	// Gap describes the newest recorded WAL gap that no done base backup
	// follows yet; "" when there is none. Unlike LastError, progress does
	// not clear it: only a backup after the gap ends the alarm.
	Gap string
}

func newArchiver(opts archiverOptions, log hclog.Logger, coord *coordinator.Coordinator, cli *clientv3.Client, m *archiverMetrics, archive *archiveHandle) *archiver {
	return &archiver{
		archive: archive,
		opts:    opts,
		log:     log.Named("archiver"),
		coord:   coord,
		etcd:    cli,
		keys:    request.Keys{Prefix: coord.Keys().Prefix},
		metrics: m,
		updates: coord.Subscribe(),
	}
}

// endLeaderView zeroes, when leader work ends, what only the leader
// knows: the archive lag and the WAL gap gauges and alarm. A former
// leader's values would stay as they were when its term ended, and an
// alert on any agent above 0 would fire for ever; the leader reports them.
func (a *archiver) endLeaderView() {
	a.mu.Lock()
	a.state.Gap = ""
	a.mu.Unlock()
	a.metrics.observeLag(0, 0, time.Now())
	a.archive.setGaps(nil)
}

func (a *archiver) snapshot() archiverState {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state
}

func (a *archiver) setError(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.state.Streaming = false
	if err == nil {
		a.state.LastError = ""
	} else {
		a.state.LastError = err.Error()
	}
}

// run is the leader work: stream until ctx ends (leadership is over).
func (a *archiver) run(ctx context.Context, term coordinator.Term) error {
	a.log.Info("archiving starts", "lead_reason", term.Reason)
	defer a.endLeaderView() // last: after the goroutines below have ended
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { a.watchGaps(ctx) })
	wg.Go(func() { a.trackMasterWhileDown(ctx) })
	defer func() {
		a.mu.Lock()
		a.state.Streaming = false
		a.mu.Unlock()
		a.metrics.streaming.Set(0)
		a.log.Info("archiving stops")
	}()
	failures := 0
	for ctx.Err() == nil {
		err := a.streamOnce(ctx, term)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if h := hint(err, a.opts.PG); h != "" {
				err = fmt.Errorf("%w; %s", err, h)
			}
		}
		if errors.Is(err, errGapFilled) {
			err = nil
		}
		a.setError(err)
		if err == nil {
			failures = 0 // the master changed, or a gap was filled: go on at once
			continue
		}
		failures++
		a.metrics.errors.Inc()
		delay := backoff(failures)
		if walstream.IsRetryable(err) {
			a.log.Warn("streaming failed; retrying", "error", err, "retry_in", delay.String())
		} else {
			// An operator must act (permissions, a conflicting archive, a gap
			// that could not be recorded); keep trying slowly so that the
			// fix is picked up without a restart.
			delay = max(delay, 10*time.Second)
			a.log.Error("streaming failed; fix the cause, barnacle keeps retrying", "error", err, "retry_in", delay.String())
		}
		sleepCtx(ctx, delay)
	}
	return nil
}

// streamOnce streams from the current master until the master changes
// (nil), ctx ends (nil) or the receiver fails.
func (a *archiver) streamOnce(ctx context.Context, term coordinator.Term) error {
	b, err := a.archive.open(ctx)
	if err != nil {
		return err
	}
	st := a.coord.State()
	if !st.HasMaster {
		// Wait for clusterdata to name a master.
		select {
		case <-ctx.Done():
		case <-a.updates:
		case <-time.After(time.Second):
		}
		return errors.New("clusterdata names no master yet")
	}
	host, port := masterAddress(a.opts.PG, st)
	conn, err := a.opts.PG.PGConnString(host, port, true)
	if err != nil {
		return err
	}
	r, err := walstream.New(walstream.Options{
		ConnString:  conn,
		Slot:        a.opts.StreamSlot,
		CreateSlot:  a.opts.CreateSlot,
		Backend:     b,
		Prefix:      catalog.WALPrefix(a.opts.Cluster),
		Compression: a.opts.Compression,
		Synchronous: a.opts.Synchronous,
		Logger:      a.log,
		OnConnect:   a.checkIdentity(b),
		OnGap:       a.recordGap(b, term),
		OnProgress:  a.progress,
	})
	if err != nil {
		return err
	}

	// Stop the receiver when clusterdata names another master: the old
	// one may still answer (a network partition), and only the new one's
	// WAL counts from now on.
	rctx, cancel := context.WithCancel(ctx)
	// This stream owns its helpers: it returns only after they have, so
	// none outlives the stream (or the leadership) it was started for.
	var helpers sync.WaitGroup
	helpers.Go(func() {
		for {
			select {
			case <-rctx.Done():
				return
			case <-a.updates:
				if now := a.coord.State(); now.HasMaster && now.Master.DBUID != st.Master.DBUID {
					a.log.Info("master changed; restarting the stream", "from", st.Master.KeeperUID, "to", now.Master.KeeperUID)
					cancel()
					return
				}
			}
		}
	})
	if a.opts.DropStandbySlot {
		// The promoted standby may still have the slot its agent kept as
		// a follower (slot-name, without Stolon's prefix, because the
		// keeper drops stolon_ slots on standbys). Once Stolon's slot
		// protects the stream, that one would only hold WAL forever.
		helpers.Go(func() { a.dropStandbySlotOnMaster(rctx, host, port) })
	}
	a.mu.Lock()
	a.state.Streaming = true
	a.mu.Unlock()
	a.metrics.streaming.Set(1)
	a.log.Info("streaming from the master", "keeper", st.Master.KeeperUID, "address", fmt.Sprintf("%s:%d", host, port), "slot", a.opts.StreamSlot)
	err = r.Run(rctx)
	cancel()
	helpers.Wait()
	a.metrics.streaming.Set(0)
	return err
}

// checkIdentity refuses to mix the WAL of two databases in one archive.
func (a *archiver) checkIdentity(b storage.Backend) func(context.Context, walstream.ServerInfo) error {
	return func(ctx context.Context, info walstream.ServerInfo) error {
		_, err := catalog.EnsureIdentity(ctx, b, catalog.Identity{
			Cluster: a.opts.Cluster, SystemID: info.SystemID, WALSegmentSize: info.SegmentSize,
		})
		return err
	}
}

// errGapFilled stops the receiver after the WAL the master lacked was
// fetched from another keeper; streaming restarts from the new archive end.
var errGapFilled = errors.New("missing wal fetched from another keeper")

// recordGap first tries to fetch the missing WAL from the other keepers;
// only when none has it does it write the gap to gaps.json before the
// receiver may skip it, raise the alarm and ask the cluster for a base
// backup, which is the only way to make points after the gap recoverable.
func (a *archiver) recordGap(b storage.Backend, term coordinator.Term) func(context.Context, walstream.Gap) error {
	return func(ctx context.Context, g walstream.Gap) error {
		if a.fillFromOtherKeepers(ctx, b, g) {
			return errGapFilled
		}
		gap := catalog.Gap{
			Timeline: g.Timeline,
			StartLSN: g.From,
			EndLSN:   g.ResumeAt,
			Reason:   fmt.Sprintf("the master no longer had this WAL when barnacle asked for it (timeline %d, resumed on timeline %d): %v", g.Timeline, g.ResumeTimeline, g.Err),
		}
		if err := catalog.RecordGap(ctx, b, a.opts.Cluster, gap); err != nil {
			return err
		}
		a.log.Error("wal gap: the archive cannot recover points in this range; requesting a new base backup",
			"timeline", g.Timeline, "from", g.From.String(), "to", g.ResumeAt.String(), "bytes", uint64(g.ResumeAt-g.From))
		a.mu.Lock()
		a.state.Gap = gapAlarm(gap)
		a.mu.Unlock()
		a.checkGaps(ctx, b) // the metrics; and the alarm, should a backup already follow
		return a.requestBackup(ctx, term, fmt.Sprintf("after WAL gap %s..%s", g.From, g.ResumeAt))
	}
}

// requestBackup asks for a base backup after a gap, fenced on term: an
// agent that no longer leads requests nothing (the new leader finds the gap
// in gaps.json and raises the alarm itself).
func (a *archiver) requestBackup(ctx context.Context, term coordinator.Term, label string) error {
	now := time.Now().UTC()
	key, err := request.Submit(ctx, a.etcd, a.keys, request.GapID(now), request.GapBackup(a.opts.Agent, label, now), term.Fence())
	if err != nil {
		return fmt.Errorf("request a base backup at %s: %w", key, err)
	}
	a.log.Info("base backup requested", "key", key)
	return nil
}

func (a *archiver) progress(p walstream.Progress) {
	a.mu.Lock()
	prevSegment := a.state.LastSegment
	a.state.Streaming = true
	a.state.Timeline = p.Timeline
	a.state.Received, a.state.Flushed, a.state.ServerEnd = p.Received, p.Flushed, p.ServerWALEnd
	if p.LastSegment != "" {
		a.state.LastSegment = p.LastSegment
	}
	a.state.LastError = ""
	a.mu.Unlock()
	a.metrics.observe(p, p.LastSegment != "" && p.LastSegment != prevSegment)
}

// backoff is the delay before the n-th consecutive retry of the stream:
// 500 ms doubling up to 30 s.
func backoff(n int) time.Duration { return retry.Backoff(n, 500*time.Millisecond, 30*time.Second) }

// sleepCtx waits for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) { retry.Sleep(ctx, d) }

// dropStandbySlotOnMaster drops the follower's slot (slot-name) on the new
// master once Stolon's stolon_<slot-name> is active and holds WAL from at
// least the same position, in slot-mode stolon. It gives up quietly when
// the stream ends first; the next stream tries again.
func (a *archiver) dropStandbySlotOnMaster(ctx context.Context, host string, port int) {
	tk := time.NewTicker(time.Second)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		done, err := a.tryDropStandbySlot(ctx, host, port)
		if err != nil && ctx.Err() == nil {
			a.log.Debug("dropping the standby slot on the master failed; retrying", "slot", a.opts.Slot, "error", err)
		}
		if done {
			return
		}
	}
}

func (a *archiver) tryDropStandbySlot(ctx context.Context, host string, port int) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := connect(cctx, a.opts.PG, host, port)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(cctx))
	// Drop only when the stream's slot is active and has a restart_lsn:
	// it advances only as far as the archive has flushed, so everything
	// before it is archived and nothing the archive lacks depends on the
	// old slot any more.
	tag, err := conn.Exec(cctx, `select pg_drop_replication_slot(old.slot_name)
		from pg_replication_slots old, pg_replication_slots stream
		where old.slot_name = $1 and not old.active
		  and stream.slot_name = $2 and stream.active and stream.restart_lsn is not null`,
		a.opts.Slot, a.opts.StreamSlot)
	if err != nil {
		return false, err
	}
	if tag.RowsAffected() > 0 {
		a.log.Info("dropped the standby slot on the new master; Stolon's slot protects the stream now", "slot", a.opts.Slot)
		return true, nil
	}
	var exists bool
	if err := conn.QueryRow(cctx, `select exists (select 1 from pg_replication_slots where slot_name = $1)`, a.opts.Slot).Scan(&exists); err != nil {
		return false, err
	}
	return !exists, nil
}

// hint says what to do about a streaming error an operator must fix, by
// SQLSTATE (https://www.postgresql.org/docs/15/errcodes-appendix.html).
func hint(err error, cfg config.Config) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return ""
	}
	switch pgErr.Code {
	case "42501":
		return fmt.Sprintf("the role %q needs the REPLICATION attribute: ALTER ROLE %s REPLICATION, or use Stolon's replication user (pg-user)", cfg.PGUser, cfg.PGUser)
	case "28000":
		return fmt.Sprintf("pg_hba.conf has no line for replication connections of %q: add one through Stolon's pgHBA (host replication %s <agent address>/32 md5)", cfg.PGUser, cfg.PGUser)
	case "28P01":
		return "the password is wrong: check pg-password-file (or PGPASSWORD/PGPASSFILE)"
	case "53400":
		return "max_wal_senders or max_replication_slots is exhausted on the master: raise Stolon's additionalWalSenders or maxStandbys"
	case "55006":
		return fmt.Sprintf("the slot %s is in use by another connection: is another barnacle or pg_receivewal streaming from it?", cfg.StreamingSlotName())
	}
	return ""
}

// fillFromOtherKeepers streams the WAL the master lacks from another
// keeper's PostgreSQL: a standby may still have it in pg_wal (walsenders
// serve historic timelines too). It streams without a slot, from the
// archive's end, until the archive reaches what the master still has
// (backfillDone), then stops so that streaming from the master resumes at
// once. Its progress is the archiver's like the master stream's: state,
// metrics, the agent record, and the archived position that backups wait
// for. It reports whether the archive grew past the gap's start.
func (a *archiver) fillFromOtherKeepers(ctx context.Context, b storage.Backend, g walstream.Gap) bool {
	st := a.coord.State()
	if st.ClusterData == nil {
		return false
	}
	for _, uid := range st.ClusterData.KeeperUIDs() {
		db, ok := st.ClusterData.DBForKeeper(uid)
		if !ok || db.UID == st.Master.DBUID {
			continue
		}
		host, port, err := db.Addr()
		if err != nil {
			continue
		}
		log := a.log.With("source_keeper", uid)
		log.Info("the master lacks wal the archive needs; trying another keeper", "timeline", g.Timeline, "from", g.From.String(),
			"until_timeline", g.ResumeTimeline, "until", g.ResumeAt.String())
		conn, err := a.opts.PG.PGConnString(host, port, true)
		if err != nil {
			return false
		}
		// The bound is for a source that stalls; one that sends WAL ends
		// the backfill as soon as it reaches the master's oldest WAL.
		fctx, cancel := context.WithTimeout(ctx, backfillTimeout)
		var (
			grew  bool
			where walstream.Progress
		)
		r, err := walstream.New(walstream.Options{
			ConnString:  conn,
			Backend:     b,
			Prefix:      catalog.WALPrefix(a.opts.Cluster),
			Compression: a.opts.Compression,
			Logger:      log,
			OnConnect:   a.checkIdentity(b),
			OnProgress: func(p walstream.Progress) {
				a.progress(p)
				where = p
				if p.Timeline > g.Timeline || p.Flushed > g.From {
					grew = true
				}
				if backfillDone(g, p) {
					cancel()
				}
			},
		})
		if err != nil {
			cancel()
			return false
		}
		err = r.Run(fctx)
		timedOut := errors.Is(fctx.Err(), context.DeadlineExceeded)
		cancel()
		if grew {
			log.Info("fetched missing wal from another keeper", "timeline", g.Timeline, "from", g.From.String(),
				"to_timeline", where.Timeline, "to", where.Flushed.String(), "complete", backfillDone(g, where), "timed_out", timedOut)
			return true
		}
		log.Info("that keeper does not have the missing wal either", "error", err)
	}
	return false
}

// backfillTimeout bounds a backfill from another keeper that stops sending
// WAL before the archive reaches what the master has.
const backfillTimeout = 5 * time.Minute

// backfillDone reports whether a backfill for gap g that reached p has
// fetched all the master lacks: the archive reaches the oldest WAL the
// master still has (ResumeAt on ResumeTimeline), or the source moved on to
// a later timeline than the gap's before the master's, so the gap's
// timeline is archived to its end and the master can be asked again.
func backfillDone(g walstream.Gap, p walstream.Progress) bool {
	if p.Timeline >= g.ResumeTimeline {
		return catalog.Position{Timeline: p.Timeline, LSN: p.Flushed}.Reached(catalog.Position{Timeline: g.ResumeTimeline, LSN: g.ResumeAt})
	}
	return p.Timeline > g.Timeline
}

// gapAlarm is what the agent record's lastError and /readyz say about a
// recorded gap until a backup after it is done.
func gapAlarm(g catalog.Gap) string {
	return fmt.Sprintf("wal gap %s..%s on timeline %d recorded: points in it and after it are not recoverable until a base backup after it is done (one was requested)",
		g.StartLSN, g.EndLSN, g.Timeline)
}

// unresolvedGap returns the newest recorded gap that no done backup
// follows (catalog.Gap.ResolvedBy): a backup that starts at or after the
// gap's end makes the points after the gap recoverable.
func unresolvedGap(gaps []catalog.Gap, backups []catalog.Backup) (catalog.Gap, bool) {
	if u := catalog.UnresolvedGaps(gaps, backups); len(u) > 0 {
		return u[len(u)-1], true
	}
	return catalog.Gap{}, false
}

// checkGaps reads gaps.json and the catalog, sets the gap metrics and
// raises or ends the gap alarm. A failed read changes nothing.
func (a *archiver) checkGaps(ctx context.Context, b storage.Backend) {
	gaps, list, err := a.archive.readGaps(ctx, b)
	if err != nil {
		return
	}
	alarm := ""
	if g, ok := unresolvedGap(gaps, list); ok {
		alarm = gapAlarm(g)
	}
	a.mu.Lock()
	prev := a.state.Gap
	a.state.Gap = alarm
	a.mu.Unlock()
	if prev != "" && alarm == "" {
		a.log.Info("a base backup after the wal gap is done; points after the gap are recoverable")
	}
}

// gapRecheck is how often, while a gap alarm is up, the catalog is read
// again for a backup after it, besides every finished backup request.
const gapRecheck = 30 * time.Second

// watchGaps is leader work: it raises the gap alarm for a gap recorded
// earlier (by this or another leader) and ends it once a backup after the
// gap is done, looking whenever a backup request finishes.
func (a *archiver) watchGaps(ctx context.Context) {
	for ctx.Err() == nil {
		rev, err := a.etcd.Get(ctx, a.keys.Statuses(request.KindBackup), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			sleepCtx(ctx, time.Second)
			continue
		}
		if b, err := a.archive.open(ctx); err == nil {
			a.checkGaps(ctx, b)
		}
		wait := gapRecheck
		if a.snapshot().Gap == "" {
			wait = time.Hour // recordGap raises a new alarm itself
		}
		waitBackupFinished(ctx, a.etcd, a.keys, rev.Header.Revision, wait)
	}
}

// waitBackupFinished returns when a backup request's status written after
// etcd revision rev says done, after d, or when ctx ends.
func waitBackupFinished(ctx context.Context, cli *clientv3.Client, keys request.Keys, rev int64, d time.Duration) {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for resp := range cli.Watch(wctx, keys.Statuses(request.KindBackup), clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		for _, ev := range resp.Events {
			var st request.BackupStatus
			if ev.Kv != nil && json.Unmarshal(ev.Kv.Value, &st) == nil && st.State == request.StateDone {
				return
			}
		}
	}
	// The watch ended early (rev compacted, etcd unreachable): the caller
	// looks again, but not in a tight loop.
	sleepCtx(wctx, time.Second)
}

// lagPollInterval is how often the leader asks the master for its position
// while it does not stream, so that the archive lag grows as the master
// writes instead of showing its last streamed value.
const lagPollInterval = 5 * time.Second

// trackMasterWhileDown is leader work: while streaming is down, it asks
// the master for its end of WAL (IDENTIFY_SYSTEM over a replication
// connection, as the stream connects) and sets the lag from the archived
// position the archiver last knew. It asks at once when the leader work
// starts too: a new leader whose stream cannot start shows the lag from its
// first second, not from its first tick.
func (a *archiver) trackMasterWhileDown(ctx context.Context) {
	tk := time.NewTicker(lagPollInterval)
	defer tk.Stop()
	for {
		a.lagFromMaster(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
	}
}

// lagFromMaster sets the lag from the master's end of WAL once, unless
// the stream runs (its reports are fresher) or the lag is unknown.
func (a *archiver) lagFromMaster(ctx context.Context) {
	if up, _ := a.metrics.streaming.state(); up {
		return
	}
	st := a.coord.State()
	if !st.HasMaster || a.snapshot().Flushed == 0 {
		return // no known archived position: the lag is unknown
	}
	host, port := masterAddress(a.opts.PG, st)
	pos, err := walPosition(ctx, a.opts.PG, host, port)
	if err != nil {
		a.log.Debug("asking the master for its wal position failed", "error", err)
		return
	}
	a.mu.Lock()
	if a.state.Streaming {
		a.mu.Unlock()
		return // streaming resumed meanwhile: its reports are fresher
	}
	a.state.ServerEnd = max(a.state.ServerEnd, pos)
	serverEnd, flushed := a.state.ServerEnd, a.state.Flushed
	a.mu.Unlock()
	a.metrics.observeLag(serverEnd, flushed, time.Now())
}

// walPosition asks the server at host:port for its end of WAL.
func walPosition(ctx context.Context, cfg config.Config, host string, port int) (wal.LSN, error) {
	cs, err := cfg.PGConnString(host, port, true)
	if err != nil {
		return 0, err
	}
	return walstream.ServerPosition(ctx, cs, 5*time.Second)
}
