// Package drill proves that the archive restores: it restores the newest
// backup and all archived WAL into a scratch directory below restore-root,
// starts PostgreSQL on it (no TCP listener at all, small memory, no
// archiving), waits until it has replayed to the end and promoted, checks
// it (pg_amcheck on the catalogs and a bounded sample; the LSN the archive
// promised is reached), stops it and removes the directory, always.
//
// # What a drill does
//
//  1. It removes what earlier drills left under ScratchRoot
//     ("barnacle-drill-*" directories no drill holds locked and whose
//     server is not running: an agent killed in the middle of one), and
//     their socket directories in the system's temporary directory
//     ("barnacle-drill-socket-*", made when ScratchRoot is too deep for a
//     socket path) under the same rules, when its users own them and they
//     are older than a minute.
//  2. It reads the archive (catalog.ReadArchive): the newest done backup is
//     restored, and the end of the newest recoverable window from it
//     (catalog.RecoverableWindows of that backup alone) is Promised: what
//     the archive says a restore reaches.
//  3. Before it writes anything it checks the free space of ScratchRoot
//     against the backup's restored size (the sum of its files) plus a WAL
//     margin: the WAL between the backup's start and the promised point
//     (what replay can add to the data files), counted up to the backup's
//     size, plus room for pg_wal (2 × the max_wal_size the drill sets,
//     walRoom). A drill that would not fit is refused with both figures.
//  4. It restores the backup with pkg/restore into
//     "<ScratchRoot>/barnacle-drill-<id>/data" (Fence ScratchRoot, so a
//     tablespace goes to "data.tablespaces/<oid>", inside the scratch
//     directory too), with archive recovery to the end of the archive on the
//     latest timeline: restore_command is `barnacle wal-fetch` with the
//     cluster and archive URL, recovery_end_command removes its spool.
//  5. It starts postgres (from PGBinDir, as Owner when run as root) with
//     command-line settings, which override whatever postgresql.conf and
//     postgresql.auto.conf the backup brought (Stolon's set addresses,
//     ports, replication and archiving): listen_addresses is empty, so the
//     server has no TCP socket at all and nothing from outside can connect,
//     and no port can be "in use"; its only socket is in the scratch
//     directory (mode 0700, owned by the server's user; a directory of
//     its own in the temporary directory, locked like the scratch
//     directory, when the path would be too long), and its own
//     hba_file admits only local socket connections. archive_mode is off
//     and replication is off (max_wal_senders 0, no primary_conninfo, no
//     synchronous standbys), so the restored server never writes to the
//     archive nor waits for a standby; memory is small (serverSettings);
//     shared_preload_libraries is emptied (a library of the source host
//     is not needed to replay or check), and so are the session and
//     local preload libraries. Paths of the source host the restored
//     configuration may name are overridden (data_directory, ident_file,
//     external_pid_file; the log goes to stderr, ssl is off), its
//     archive_cleanup_command is emptied (it would delete WAL at each
//     restartpoint), its statement and lock timeouts are off, and an
//     include, include_if_exists or include_dir naming a path outside the
//     restored data directory is commented out with a warning
//     (dropOutsideIncludes). hot_standby is off: the server
//     accepts connections only once recovery ended and it promoted, which
//     is what the drill waits for. Options.Settings come after these and
//     win.
//  6. It waits (bounded by ReplayTimeout, and by ctx) until postmaster.pid
//     says "ready" (as pg_ctl does; connection attempts before would fill
//     the log), the server accepts a connection and pg_is_in_recovery() is
//     false. A server that exits first fails the drill with the end of its
//     log (a FATAL of the restored configuration, or restore_command
//     refusing a damaged segment). Reached is the switch point the
//     promotion wrote in the new timeline's history file (the end of
//     replay on the timeline it left), ReachedTime the "last completed
//     transaction was at log time" the server logs at the end of recovery.
//     A drill whose Reached is before Promised (catalog.Position.Reached)
//     fails: the archive promised WAL that recovery did not replay, e.g.
//     a stored segment that is not the WAL it is named for. The comparison
//     is exact: a .partial that ends inside a record (streaming stopped
//     there, the leader agent down while the master wrote) fails the
//     drill too, although no replayable record is missing; the first drill
//     after streaming resumed passes.
//  7. It checks every database that accepts connections: a query, and
//     pg_amcheck --install-missing on its system catalogs (schema
//     pg_catalog, with their indexes and TOAST) plus a sample of user
//     tables (with their indexes and TOAST): the largest that fit, at most
//     SampleRelations tables and SampleBytes bytes of them over all
//     databases. Checked is the number of relations pg_amcheck reports it
//     checked.
//  8. It stops the server (fast shutdown, then immediate, then SIGKILL of
//     its process group) and removes the scratch directory, also when a
//     step failed or ctx ended (the agent stopping), with a context of its
//     own (cleanupTimeout).
//  9. It records the drill, done or failed, as drills/<id>.json
//     (catalog.WriteDrill). The archive is otherwise only read.
//
// Other modules may import this package, but its API is not stable.
package drill

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/restore"
	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// Defaults of the bounds in Options.
const (
	// DefaultSampleRelations and DefaultSampleBytes bound the user tables
	// pg_amcheck checks besides the catalogs: a drill should prove the
	// data readable without reading all of a large cluster every time.
	DefaultSampleRelations = 20
	DefaultSampleBytes     = 1 << 30
	// DefaultReplayTimeout bounds the wait from starting the server to
	// its promotion.
	DefaultReplayTimeout = 2 * time.Hour
)

const (
	// dirPrefix names a drill's scratch directory below ScratchRoot.
	dirPrefix = "barnacle-drill-"
	// port only names the socket file: with no TCP listener and a socket
	// directory of its own, the server cannot collide with another.
	port = 5432
	// maxWALSize is the max_wal_size the drill sets; walRoom is what the
	// space check keeps for pg_wal during replay.
	maxWALSize = "256MB"
	walRoom    = 2 * 256 << 20
	// cleanupTimeout bounds stopping the server and removing the
	// directory after ctx ended; recordTimeout bounds writing the record.
	cleanupTimeout = 2 * time.Minute
	recordTimeout  = time.Minute
	// fastStop and immediateStop are how long each shutdown mode gets
	// before the next, harder one.
	fastStop      = 30 * time.Second
	immediateStop = 10 * time.Second
	// pollInterval is how often the drill asks whether the server is up.
	pollInterval = 200 * time.Millisecond
	// maxSocketPath is what a unix socket path may hold (sun_path less
	// its NUL).
	maxSocketPath = 107
	// socketPrefix names the socket directory a drill makes in the
	// system's temporary directory when restore-root is too deep.
	socketPrefix = dirPrefix + "socket-"
	// socketSweepAge is how old a socket directory must be before a
	// sweep may take it for a leftover: a drill in another process locks
	// its new directory a moment after creating it, and no drill is
	// younger than this when its server has written the lock file.
	socketSweepAge = time.Minute
)

// socketTempDir is where socket directories go (os.TempDir); tests point
// it elsewhere.
var socketTempDir = os.TempDir

// Options configures Run.
type Options struct {
	ID      string // the drill's ID: the request ID, or a new one
	Node    string // recorded as catalog.Drill.Node
	Backend storage.Backend
	Cluster string
	// ArchiveURL and Executable make the restored server's restore_command
	// (restore.WALFetchCommand).
	ArchiveURL string
	Executable string
	// ScratchRoot is restore-root: the drill works in a new directory
	// below it, removed when Run returns.
	ScratchRoot string
	PGBinDir    string
	Owner       *restore.Owner // the OS user the server runs as, when root
	Logger      hclog.Logger

	// Superuser is the role the drill connects as (trust, over the
	// drill's own socket): the agent's restore-drill-superuser, which
	// names Stolon's keeper --pg-su-username when that is not the OS
	// user the keeper runs as. "" tries the OS user the server runs as
	// (initdb's and the keeper's default superuser name), then
	// "postgres". A role that does not exist, or is not a superuser,
	// fails the drill with a reason naming restore-drill-superuser.
	Superuser string
	// Settings are extra server settings, "name=value", given after the
	// drill's own (so they win).
	Settings []string
	// SampleRelations and SampleBytes bound the user tables checked
	// (0 = DefaultSampleRelations, DefaultSampleBytes; negative = none).
	SampleRelations int
	SampleBytes     int64
	// ReplayTimeout bounds the wait for the promotion (0 =
	// DefaultReplayTimeout).
	ReplayTimeout time.Duration
}

// freeSpace returns the bytes available to an unprivileged writer on the
// filesystem of dir. Tests replace it to test the space check without
// filling a disk.
var freeSpace = func(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil //nolint:gosec // block counts fit
}

// NewID names a drill run without a request: its UTC time and 6 random hex
// digits, like a request ID.
func NewID(now time.Time) string {
	rnd := make([]byte, 3)
	_, _ = rand.Read(rnd)
	return now.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(rnd)
}

// Run runs one drill and records it in the archive (catalog.WriteDrill)
// whether it succeeds or fails; the returned record is the one written.
// A drill that could not start (no backup, no space) is a failed record too.
//
// The error is nil exactly when the drill succeeded and its record was
// written. Otherwise it says why the drill failed (the record's Error), or
// that the record could not be written, or both. Only an ID that cannot
// name a record (catalog.CheckDrillID) or that is already recorded writes
// nothing at all.
func Run(ctx context.Context, opts Options) (catalog.Drill, error) {
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	log = log.Named("drill")
	d := catalog.Drill{ID: opts.ID, Node: opts.Node, StartedAt: time.Now().UTC()}
	if d.ID == "" {
		d.ID = NewID(d.StartedAt)
	}
	if err := catalog.CheckDrillID(d.ID); err != nil {
		return d, fmt.Errorf("drill: %w", err)
	}
	// An ID already recorded would make the record's write fail after the
	// whole drill ran; the first record stays.
	if opts.Backend != nil {
		name := catalog.DrillObject(opts.Cluster, d.ID)
		if _, err := opts.Backend.Stat(ctx, name); err == nil {
			return d, fmt.Errorf("drill: %s already records a drill with ID %s: give a new ID", name, d.ID)
		}
	}
	log = log.With("drill", d.ID)
	log.Info("drill started")
	r := &runner{opts: opts, log: log, d: &d}
	err := r.run(ctx)
	d.FinishedAt = time.Now().UTC()
	if err != nil {
		d.Status, d.Error = catalog.DrillFailed, err.Error()
		log.Error("drill failed", "error", err, "backup", d.BackupID)
	} else {
		d.Status = catalog.DrillDone
		log.Info("drill done", "backup", d.BackupID, "reached", d.Reached.LSN, "timeline", d.Reached.Timeline,
			"restore", d.Phases.Restore, "replay", d.Phases.Replay, "check", d.Phases.Check, "checked_relations", d.Checked)
	}
	// The record is written even when ctx ended: a drill cut short by
	// the agent stopping is a failed drill worth seeing.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if werr := catalog.WriteDrill(wctx, opts.Backend, opts.Cluster, d); werr != nil {
		log.Error("could not record the drill", "error", werr)
		return d, errors.Join(err, fmt.Errorf("drill %s: record it: %w", d.ID, werr))
	}
	return d, err
}

// runner is one drill in progress.
type runner struct {
	opts Options
	log  hclog.Logger
	d    *catalog.Drill

	scratch    string   // <ScratchRoot>/barnacle-drill-<id>
	lock       *os.File // the scratch directory, flocked while the drill runs
	socketDir  string
	socketLock *os.File // a socket directory of its own, flocked likewise
	logPath    string
	server     *server
	user       string // the role the drill connects as
}

// run does the drill; the caller records the outcome.
func (r *runner) run(ctx context.Context) (err error) {
	o := r.opts
	if err := r.checkOptions(); err != nil {
		return err
	}
	r.removeLeftovers()

	a, err := catalog.ReadArchive(ctx, o.Backend, o.Cluster)
	if err != nil {
		return fmt.Errorf("drill: %w", err)
	}
	var b *catalog.Backup
	for i := range a.Backups { // newest first
		if a.Backups[i].Status == catalog.StatusDone {
			b = &a.Backups[i]
			break
		}
	}
	if b == nil {
		return errors.New("no done backup to restore: take a backup (barnacle backup) before a drill")
	}
	r.d.BackupID = b.ID
	// The windows of the backup restored, not of the oldest one (what
	// RecoverableWindows measures from): a gap between an older backup
	// and this one would otherwise cut the promised point short, before
	// this backup even starts, and the Reached check would prove nothing.
	own := a
	own.Backups = []catalog.Backup{*b}
	windows := catalog.RecoverableWindows(own)
	if len(windows) == 0 {
		return fmt.Errorf("the archive has no recoverable window from backup %s: its WAL is missing (barnacle status shows the archive; take a new backup once streaming works)", b.ID)
	}
	w := windows[len(windows)-1]
	r.d.Promised = catalog.Position{Timeline: w.Timeline, LSN: w.ToLSN}

	if err := r.checkSpace(*b); err != nil {
		return err
	}

	defer func() {
		// Always, whatever failed and whether ctx ended.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if cerr := r.cleanup(cctx); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if err := r.makeScratch(); err != nil {
		return err
	}

	start := time.Now()
	res, err := restore.Restore(ctx, restore.Options{
		Backend:   o.Backend,
		Cluster:   o.Cluster,
		Backup:    *b,
		TargetDir: filepath.Join(r.scratch, "data"),
		Fence:     o.ScratchRoot,
		Recovery: &restore.Recovery{
			RestoreCommand:     restore.WALFetchCommand(o.Executable, "", o.Cluster, o.ArchiveURL),
			RecoveryEndCommand: restore.RemoveSpoolCommand(o.Executable),
		},
		Owner:  o.Owner,
		Logger: r.log,
	})
	r.d.Phases.Restore = time.Since(start)
	r.d.Bytes = res.Bytes
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("drill cancelled while restoring backup %s: %w", b.ID, cancelled(ctx))
		}
		return fmt.Errorf("restore of backup %s failed: %w; the backup cannot be restored as stored: check it with barnacle verify-backup %s and take a new backup", b.ID, err, b.ID)
	}
	r.log.Info("backup restored", "backup", b.ID, "bytes", res.Bytes, "files", res.Files, "tablespaces", fmt.Sprint(res.Tablespaces))

	start = time.Now()
	err = r.startAndWait(ctx, res.TargetDir)
	r.d.Phases.Replay = time.Since(start)
	if err != nil {
		return err
	}
	if err := r.readReached(res.TargetDir); err != nil {
		return err
	}
	if !r.d.Reached.Reached(r.d.Promised) {
		return fmt.Errorf("recovery of backup %s ended at %s on timeline %d, but the archive promised %s on timeline %d: WAL the archive counts as recoverable was not replayed; check the WAL after %s (barnacle verify-wal) and take a new backup",
			b.ID, r.d.Reached.LSN, r.d.Reached.Timeline, r.d.Promised.LSN, r.d.Promised.Timeline, r.d.Reached.LSN)
	}

	start = time.Now()
	err = r.check(ctx)
	r.d.Phases.Check = time.Since(start)
	return err
}

// cancelled says why ctx ended: the cause its canceller gave (the agent's
// keeper became the master), or that the agent is stopping or the drill
// was withdrawn.
func cancelled(ctx context.Context) error {
	if c := context.Cause(ctx); c != nil && c != ctx.Err() {
		return c
	}
	return fmt.Errorf("the agent is stopping or the drill was withdrawn: %w", ctx.Err())
}

// checkOptions refuses options a drill cannot run with, naming them.
func (r *runner) checkOptions() error {
	o := r.opts
	switch {
	case o.Backend == nil:
		return errors.New("drill: no archive backend")
	case o.Cluster == "":
		return errors.New("drill: no cluster name")
	case o.ArchiveURL == "" || o.Executable == "":
		return errors.New("drill: the archive URL and the barnacle executable are needed for the restored server's restore_command")
	case o.ScratchRoot == "" || !filepath.IsAbs(o.ScratchRoot):
		return fmt.Errorf("drill: restore-root %q: set an absolute directory for the drill's scratch space", o.ScratchRoot)
	}
	if st, err := os.Stat(o.ScratchRoot); err != nil || !st.IsDir() {
		return fmt.Errorf("drill: restore-root %s is not a directory (%v): create it, with room for a restore", o.ScratchRoot, err)
	}
	if _, err := os.Stat(filepath.Join(o.PGBinDir, "postgres")); err != nil {
		return fmt.Errorf("drill: pg-bin-dir %q has no postgres (%v): point it at PostgreSQL's bin directory", o.PGBinDir, err)
	}
	if os.Geteuid() == 0 && (o.Owner == nil || o.Owner.UID == 0) {
		return errors.New("drill: running as root but no owner for the restored server (PostgreSQL refuses to run as root): give the OS user PostgreSQL runs as")
	}
	return nil
}

// checkSpace refuses a drill whose restore and replay would not fit in
// ScratchRoot's filesystem, before anything is written.
func (r *runner) checkSpace(b catalog.Backup) error {
	var files int64
	for _, f := range b.Files {
		files += f.Bytes
	}
	// Replay can grow the data files by at most the WAL it replays; a
	// cluster does not usually grow by all its WAL (updates rewrite
	// pages), so the margin counts at most the backup's size again: an
	// old backup with much WAL after it is not refused for growth that
	// will not come, and a drill that does run out of space fails with
	// PostgreSQL's own message and is cleaned up like any other.
	var replay int64
	if r.d.Promised.LSN > b.StartLSN {
		replay = min(int64(r.d.Promised.LSN-b.StartLSN), files) //nolint:gosec // an LSN difference fits
	}
	margin := replay + walRoom
	free, err := freeSpace(r.opts.ScratchRoot)
	if err != nil {
		return fmt.Errorf("drill: free space of restore-root %s: %w", r.opts.ScratchRoot, err)
	}
	if need := files + margin; need > free {
		return fmt.Errorf("not enough space for a drill under restore-root %s: it needs %d bytes (backup %s restores to %d, plus %d for the WAL replayed and pg_wal) and the filesystem has %d free; free space there or point restore-root at a larger filesystem",
			r.opts.ScratchRoot, need, b.ID, files, margin, free)
	}
	return nil
}
