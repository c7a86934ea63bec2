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
//     restored, and the end of the newest recoverable window
//     (catalog.RecoverableWindows) is Promised: what the archive says a
//     restore reaches.
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
//     is not needed to replay or check). hot_standby is off: the server
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
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/restore"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
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
	windows := catalog.RecoverableWindows(a)
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
			return fmt.Errorf("drill cancelled while restoring backup %s (the agent is stopping or the drill was withdrawn): %w", b.ID, ctx.Err())
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

// makeScratch creates the drill's directory, owned by the server's user,
// and locks it so that a drill starting meanwhile does not take it for a
// leftover.
func (r *runner) makeScratch() error {
	r.scratch = filepath.Join(r.opts.ScratchRoot, dirPrefix+r.d.ID)
	if err := os.Mkdir(r.scratch, 0o700); err != nil {
		r.scratch = "" // not ours: never removed
		return fmt.Errorf("drill: create the scratch directory: %w", err)
	}
	f, err := os.Open(r.scratch)
	if err == nil {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) //nolint:gosec // a file descriptor fits in int
		if err != nil {
			_ = f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("drill: lock the scratch directory %s: %w", r.scratch, err)
	}
	r.lock = f
	if err := r.chown(r.scratch); err != nil {
		return err
	}
	r.socketDir = r.scratch
	if len(filepath.Join(r.socketDir, fmt.Sprintf(".s.PGSQL.%d", port))) > maxSocketPath {
		// A deep restore-root: the socket goes to a private directory
		// of its own, removed with the scratch directory, and locked
		// like it so that another drill's sweep leaves it alone.
		d, err := os.MkdirTemp(socketTempDir(), socketPrefix)
		if err != nil {
			return fmt.Errorf("drill: create a socket directory: %w", err)
		}
		r.socketDir = d
		sf, err := os.Open(d)
		if err == nil {
			err = unix.Flock(int(sf.Fd()), unix.LOCK_EX|unix.LOCK_NB) //nolint:gosec // a file descriptor fits in int
			if err != nil {
				_ = sf.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("drill: lock the socket directory %s: %w", d, err)
		}
		r.socketLock = sf
		if err := r.chown(d); err != nil {
			return err
		}
	}
	r.logPath = filepath.Join(r.scratch, "postgres.log")
	return nil
}

func (r *runner) chown(path string) error {
	if r.opts.Owner == nil || os.Geteuid() != 0 {
		return nil
	}
	if err := os.Lchown(path, r.opts.Owner.UID, r.opts.Owner.GID); err != nil {
		return fmt.Errorf("drill: give %s to the server's user: %w", path, err)
	}
	return nil
}

// removeLeftovers removes what killed drills left under ScratchRoot: a
// "barnacle-drill-*" directory that no drill holds locked and that has no
// running server. A directory with a live postmaster.pid is left alone and
// logged (the PID may be reused; removing a live server's files is worse).
func (r *runner) removeLeftovers() {
	entries, err := os.ReadDir(r.opts.ScratchRoot)
	if err != nil {
		r.log.Warn("could not list restore-root for leftovers of earlier drills", "error", err)
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), dirPrefix) || strings.HasPrefix(e.Name(), socketPrefix) {
			continue // socket directories: removeSocketLeftovers, with its own rules
		}
		dir := filepath.Join(r.opts.ScratchRoot, e.Name())
		f, err := os.Open(dir)
		if err != nil {
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil { //nolint:gosec // a file descriptor fits in int
			_ = f.Close()
			continue // a drill runs there
		}
		if pid, ok := serverPID(filepath.Join(dir, "data")); ok && processAlive(pid) {
			_ = f.Close()
			r.log.Warn("leftover drill directory has a running server; left alone", "directory", dir, "pid", pid)
			continue
		}
		err = os.RemoveAll(dir)
		_ = f.Close()
		if err != nil {
			r.log.Warn("could not remove a leftover drill directory", "directory", dir, "error", err)
			continue
		}
		r.log.Info("removed leftover drill directory", "directory", dir)
	}
	r.removeSocketLeftovers()
}

// removeSocketLeftovers removes the socket directories (barnacle-drill-
// socket-* in the system's temporary directory) that killed drills left:
// like removeLeftovers, only one no drill holds locked and whose server
// lock file (.s.PGSQL.<port>.lock, the postmaster's PID first) names no
// live process; and, as that directory is shared, only one this drill's
// users own, older than socketSweepAge.
func (r *runner) removeSocketLeftovers() {
	tmp := socketTempDir()
	entries, err := os.ReadDir(tmp)
	if err != nil {
		r.log.Warn("could not list the temporary directory for leftover drill sockets", "directory", tmp, "error", err)
		return
	}
	owners := []int{os.Geteuid()}
	if r.opts.Owner != nil {
		owners = append(owners, r.opts.Owner.UID)
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), socketPrefix) {
			continue
		}
		dir := filepath.Join(tmp, e.Name())
		fi, err := os.Lstat(dir)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < socketSweepAge {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || !slices.Contains(owners, int(st.Uid)) {
			continue // someone else's
		}
		f, err := os.Open(dir)
		if err != nil {
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil { //nolint:gosec // a file descriptor fits in int
			_ = f.Close()
			continue // a drill runs with it
		}
		if pid, ok := lockFilePID(filepath.Join(dir, fmt.Sprintf(".s.PGSQL.%d.lock", port))); ok && processAlive(pid) {
			_ = f.Close()
			r.log.Warn("leftover drill socket directory has a running server; left alone", "directory", dir, "pid", pid)
			continue
		}
		err = os.RemoveAll(dir)
		_ = f.Close()
		if err != nil {
			r.log.Warn("could not remove a leftover drill socket directory", "directory", dir, "error", err)
			continue
		}
		r.log.Info("removed leftover drill socket directory", "directory", dir)
	}
}

// serverPID reads the postmaster PID of a data directory.
func serverPID(dataDir string) (int, bool) {
	return lockFilePID(filepath.Join(dataDir, "postmaster.pid"))
}

// lockFilePID reads the PID on the first line of a postmaster lock file
// (postmaster.pid, or a socket's .s.PGSQL.<port>.lock).
func lockFilePID(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	return pid, err == nil && pid > 0
}

// serverReady reports whether postmaster.pid says the server accepts
// connections: its status line (the 8th, PostgreSQL 10 and later) is
// "ready".
func serverReady(dataDir string) bool {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return false
	}
	lines := strings.Split(string(b), "\n")
	return len(lines) >= 8 && strings.TrimSpace(lines[7]) == "ready"
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// serverSettings are the settings the drill gives on the command line;
// they override the restored configuration files.
func (r *runner) serverSettings() []string {
	hba := filepath.Join(r.scratch, "pg_hba.conf")
	return []string{
		// Reachable only through the drill's own socket.
		"listen_addresses=",
		"port=" + strconv.Itoa(port),
		"unix_socket_directories=" + r.socketDir,
		"unix_socket_permissions=0700",
		"unix_socket_group=",
		"hba_file=" + hba,
		"ssl=off",
		// Never archive, replicate, or wait for a standby.
		"archive_mode=off",
		"archive_command=",
		"archive_library=",
		"max_wal_senders=0",
		"primary_conninfo=",
		"primary_slot_name=",
		"synchronous_standby_names=",
		"hot_standby=off",
		// Small: the drill shares a host with a cluster member.
		"shared_buffers=32MB",
		"max_connections=10",
		"superuser_reserved_connections=1",
		"huge_pages=off",
		"max_wal_size=" + maxWALSize,
		"min_wal_size=32MB",
		"wal_keep_size=0",
		"autovacuum=off",
		"jit=off",
		"shared_preload_libraries=",
		"max_parallel_workers_per_gather=0",
		// A log the drill can read: to stderr (its file), in English, UTC.
		"logging_collector=off",
		"log_destination=stderr",
		"log_min_messages=warning",
		"lc_messages=C",
		"log_timezone=UTC",
		"timezone=UTC",
		"cluster_name=barnacle-drill",
		"default_transaction_read_only=off",
	}
}

// server is the restored postmaster.
type server struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // set before exited closes
}

// startAndWait starts PostgreSQL on the restored directory and waits until
// it has promoted.
func (r *runner) startAndWait(ctx context.Context, dataDir string) error {
	hba := "# barnacle drill: local socket connections only\nlocal all all trust\n"
	hbaPath := filepath.Join(r.scratch, "pg_hba.conf")
	if err := os.WriteFile(hbaPath, []byte(hba), 0o600); err != nil {
		return fmt.Errorf("drill: write %s: %w", hbaPath, err)
	}
	if err := r.chown(hbaPath); err != nil {
		return err
	}
	logf, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("drill: create the server log: %w", err)
	}
	defer logf.Close()
	args := []string{"-D", dataDir}
	for _, s := range append(r.serverSettings(), r.opts.Settings...) {
		args = append(args, "-c", s)
	}
	cmd := exec.Command(filepath.Join(r.opts.PGBinDir, "postgres"), args...)
	cmd.Dir = dataDir
	cmd.Env = serverEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a last SIGKILL reaches every
	// backend; Pdeathsig so that it does not outlive a killed agent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if o := r.opts.Owner; o != nil && os.Geteuid() == 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(o.UID), Gid: uint32(o.GID), NoSetGroups: true} //nolint:gosec // IDs fit
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("drill: start postgres from pg-bin-dir %s: %w", r.opts.PGBinDir, err)
	}
	s := &server{cmd: cmd, exited: make(chan struct{})}
	r.server = s
	go func() { s.err = cmd.Wait(); close(s.exited) }()
	r.log.Info("server started", "pid", cmd.Process.Pid, "data_dir", dataDir, "socket_dir", r.socketDir)

	timeout := r.opts.ReplayTimeout
	if timeout <= 0 {
		timeout = DefaultReplayTimeout
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	users := r.candidateUsers()
	var last error
	for {
		select {
		case <-s.exited:
			return fmt.Errorf("PostgreSQL exited before recovery ended (%v); last lines of its log:\n%s\nfix what the log names (a setting the restored configuration or the drill's settings give, the host's PostgreSQL installation in pg-bin-dir, or the WAL restore_command could not fetch)",
				s.err, r.logTail(15))
		default:
		}
		// Connect only once the postmaster says it is ready (with
		// hot_standby off: recovery ended), as pg_ctl does: attempts
		// before would each log a FATAL that hides the lines that
		// matter in the log tail of a failure.
		var promoted bool
		var err error
		if serverReady(dataDir) {
			promoted, err = r.promoted(wctx, users)
		}
		if promoted {
			return nil
		}
		if err != nil {
			var missing *missingRoleError
			if errors.As(err, &missing) {
				return err
			}
			last = err
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("drill cancelled during replay (the agent is stopping or the drill was withdrawn): %w", ctx.Err())
			}
			return fmt.Errorf("recovery did not end within %s (last: %v); last lines of the server log:\n%s\nallow more time (the drill's replay timeout) or take backups more often so that less WAL must be replayed",
				timeout, last, r.logTail(10))
		case <-s.exited:
		case <-time.After(pollInterval):
		}
	}
}

// serverEnv is the agent's environment without libpq's PG* variables,
// which must not redirect the server or the tools: restore_command runs
// barnacle wal-fetch, which needs the archive's credentials from it.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// candidateUsers are the roles the drill tries to connect as.
func (r *runner) candidateUsers() []string {
	if r.opts.Superuser != "" {
		return []string{r.opts.Superuser}
	}
	uid := os.Geteuid()
	if r.opts.Owner != nil && uid == 0 {
		uid = r.opts.Owner.UID
	}
	var out []string
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil && u.Username != "" {
		out = append(out, u.Username)
	}
	if !slices.Contains(out, "postgres") {
		out = append(out, "postgres")
	}
	return out
}

// missingRoleError means the server accepts connections but none of the
// candidate roles exists, or the one that does is not a superuser
// (pg_amcheck and the sample's queries need one).
type missingRoleError struct {
	users        []string
	named        bool   // users is Options.Superuser (restore-drill-superuser)
	notSuperuser string // the role that connected but is no superuser
}

// superuserHint is what to change: the drill cannot guess a superuser
// name that Stolon's keeper was told with --pg-su-username.
const superuserHint = "set restore-drill-superuser to the cluster's superuser name (Stolon's keeper --pg-su-username)"

func (e *missingRoleError) Error() string {
	switch {
	case e.notSuperuser != "":
		return fmt.Sprintf("the restored server runs, but role %s is not a superuser, and the drill's checks need one: %s", e.notSuperuser, superuserHint)
	case e.named:
		return fmt.Sprintf("the restored server runs, but role %s (restore-drill-superuser) does not exist in it: %s", strings.Join(e.users, ", "), superuserHint)
	}
	return fmt.Sprintf("the restored server runs, but none of the roles %s exists in it: %s", strings.Join(e.users, ", "), superuserHint)
}

// promoted reports whether the server accepts connections and is out of
// recovery; it settles r.user on the first role that connects.
func (r *runner) promoted(ctx context.Context, users []string) (bool, error) {
	try := users
	if r.user != "" {
		try = []string{r.user}
	}
	var (
		err      error
		notSuper string
	)
	for _, u := range try {
		var conn *pgx.Conn
		conn, err = r.connect(ctx, u, "template1")
		if err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "28000" && strings.Contains(pe.Message, "does not exist") {
				continue // no such role: try the next
			}
			return false, err
		}
		var in, super bool
		err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&in, &super)
		_ = conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return false, err
		}
		if !super {
			notSuper = u // an OS user's own role may exist without being the superuser: try the next
			continue
		}
		r.user = u
		return !in, nil
	}
	if notSuper != "" {
		return false, &missingRoleError{notSuperuser: notSuper}
	}
	return false, &missingRoleError{users: try, named: r.opts.Superuser != ""}
}

func (r *runner) dsn(db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=10",
		quoteDSN(r.socketDir), port, quoteDSN(r.user), quoteDSN(db))
}

func quoteDSN(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'"
}

func (r *runner) connect(ctx context.Context, user, db string) (*pgx.Conn, error) {
	saved := r.user
	r.user = user
	dsn := r.dsn(db)
	r.user = saved
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// readReached sets Reached from the history file the promotion wrote (the
// newest timeline's, in pg_wal: its last line is the timeline left and
// where replay ended on it) and ReachedTime from the server log.
func (r *runner) readReached(dataDir string) error {
	walDir := filepath.Join(dataDir, "pg_wal")
	entries, err := os.ReadDir(walDir)
	if err != nil {
		return fmt.Errorf("drill: list %s: %w", walDir, err)
	}
	var newest wal.Timeline
	for _, e := range entries {
		if tli, err := wal.ParseHistoryFileName(e.Name()); err == nil && tli > newest {
			newest = tli
		}
	}
	if newest == 0 {
		return fmt.Errorf("drill: the restored server promoted but %s has no timeline history file: cannot tell where replay ended", walDir)
	}
	name := filepath.Join(walDir, wal.HistoryFileName(newest))
	data, err := os.ReadFile(name)
	if err != nil {
		return fmt.Errorf("drill: read %s: %w", name, err)
	}
	h, err := wal.ParseHistory(data)
	if err != nil || len(h) == 0 {
		return fmt.Errorf("drill: history file %s of the promotion: %v", name, err)
	}
	last := h[len(h)-1]
	r.d.Reached = catalog.Position{Timeline: last.Timeline, LSN: last.SwitchPoint}
	r.d.ReachedTime = r.lastCommitTime()
	return nil
}

var lastCommitRE = regexp.MustCompile(`last completed transaction was at log time (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d(?::?\d\d)?)`)

// lastCommitTime finds the time PostgreSQL logs at the end of recovery for
// the last transaction it replayed; zero when the log has none.
func (r *runner) lastCommitTime() time.Time {
	f, err := os.Open(r.logPath)
	if err != nil {
		return time.Time{}
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if m := lastCommitRE.FindStringSubmatch(sc.Text()); m != nil {
			last = m[1]
		}
	}
	for _, layout := range []string{"2006-01-02 15:04:05.999999-07", "2006-01-02 15:04:05.999999-07:00", "2006-01-02 15:04:05.999999-0700"} {
		if t, err := time.Parse(layout, last); err == nil {
			return t.UTC()
		}
	}
	return time.Time{}
}

// logTail returns the last n lines of the server log.
func (r *runner) logTail(n int) string {
	b, err := os.ReadFile(r.logPath)
	if err != nil {
		return "(no server log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cleanup stops the server and removes the scratch directory. Removing
// what cannot be removed is an error: a drill leaves nothing behind.
func (r *runner) cleanup(ctx context.Context) error {
	var errs []error
	if r.server != nil {
		if err := r.stopServer(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for i, dir := range []string{r.scratch, r.socketDir} {
		if dir == "" || i == 1 && dir == r.scratch {
			continue
		}
		if err := os.RemoveAll(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("drill: remove %s: %w (remove it by hand)", dir, err))
		} else {
			r.log.Debug("removed", "directory", dir)
		}
	}
	if r.lock != nil {
		_ = r.lock.Close()
	}
	if r.socketLock != nil {
		_ = r.socketLock.Close()
	}
	return errors.Join(errs...)
}

// stopServer stops the postmaster: fast shutdown, then immediate, then
// SIGKILL of its process group.
func (r *runner) stopServer(ctx context.Context) error {
	s := r.server
	pid := s.cmd.Process.Pid
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
		what string
	}{
		{syscall.SIGINT, fastStop, "fast shutdown"},
		{syscall.SIGQUIT, immediateStop, "immediate shutdown"},
		{syscall.SIGKILL, immediateStop, "kill"},
	} {
		select {
		case <-s.exited:
			return r.reap(pid)
		default:
		}
		if step.sig == syscall.SIGKILL {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		} else {
			_ = s.cmd.Process.Signal(step.sig)
		}
		r.log.Debug("stopping the server", "how", step.what, "pid", pid)
		t := time.NewTimer(step.wait)
		select {
		case <-s.exited:
			t.Stop()
			return r.reap(pid)
		case <-ctx.Done():
			t.Stop()
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		case <-t.C:
		}
	}
	select {
	case <-s.exited:
		return r.reap(pid)
	case <-time.After(immediateStop):
		return fmt.Errorf("drill: the restored server (pid %d) did not exit after SIGKILL", pid)
	}
}

// reap kills what may remain of the server's process group once the
// postmaster has exited (backends exit on their own when it dies; a
// restore_command child might not) and waits until none is left, so the
// directory is not removed under a running process.
func (r *runner) reap(pid int) error {
	deadline := time.Now().Add(immediateStop)
	for {
		if err := syscall.Kill(-pid, 0); errors.Is(err, syscall.ESRCH) {
			r.log.Info("server stopped", "pid", pid)
			return nil
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		if time.Now().After(deadline) {
			return fmt.Errorf("drill: processes of the restored server (group %d) are still running", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
