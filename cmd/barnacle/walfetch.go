package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/internal/retry"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walfetch"
)

// exitAbortRecovery is wal-fetch's exit code for every failure other than
// "looked, and it is not there": the archive could not be opened, listed
// or read, an object is damaged, the configuration or command line is
// wrong, a panic. PostgreSQL treats an exit code above 125 as fatal and
// stops recovery, where any code from 1 to 125 makes it take the end of
// the archive for the end of WAL and, without a target, promote at that
// point: a restore silently short of the data the archive holds. This is
// why wal-fetch never exits 2 (usage, and the Go runtime's panic code).
const exitAbortRecovery = 255

// walFetchExitCode maps the outcome of wal-fetch to its exit code, the
// contract with PostgreSQL's restore_command (see --help):
//   - nil: 0, the file is in place.
//   - ErrNotFound: 1, the archive was read and has no such file.
//   - interrupted by sig: 128+sig, what a shell reports for a command
//     killed by sig. PostgreSQL (xlogarchive.c) reads 128+SIGTERM as its
//     fast shutdown reaching restore_command and ends the startup process
//     (when no shutdown was under way, the postmaster takes that for a
//     crash and stops); any other 128+n is above 125 and stops recovery.
//     Neither reads "not found".
//   - any other failure on a standby (standby.signal): 1. A standby retries
//     restore_command (and streams meanwhile) and never promotes on its
//     own, so a passing archive failure costs it nothing, where 255 would
//     make PostgreSQL stop the whole standby.
//   - any other failure: exitAbortRecovery.
func walFetchExitCode(err error, standby bool, sig syscall.Signal) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, walfetch.ErrNotFound):
		return exitFailure
	case sig != 0:
		return 128 + int(sig)
	case standby:
		return exitFailure
	}
	return exitAbortRecovery
}

// walFetchError turns err, wal-fetch's failure, into the exitCodeError
// that run reports: quiet for ErrNotFound (PostgreSQL asks for files past
// the end on purpose), with err's message otherwise.
func walFetchError(err error, sig syscall.Signal) error {
	code := walFetchExitCode(err, inStandbyMode(), sig)
	if code == exitFailure && errors.Is(err, walfetch.ErrNotFound) {
		return exitCodeError{code: code}
	}
	if sig != 0 {
		err = fmt.Errorf("interrupted by %s: %w", unix.SignalName(sig), err)
	}
	return exitCodeError{code: code, err: err}
}

// inStandbyMode reports whether the server running restore_command is a
// standby (standby.signal in its data directory, the working directory of
// restore_command): a standby retries on exit 1, which suits a passing
// archive failure better than stopping.
func inStandbyMode() bool {
	_, err := os.Stat("standby.signal")
	return err == nil
}

// interruptSignal returns the signal that interrupted wal-fetch (one of
// those sigs is notified of), or 0 when ctx is not done: not interrupted,
// or the signal was not seen in time (then the failure exits 255, which
// also stops recovery).
func interruptSignal(ctx context.Context, sigs <-chan os.Signal) syscall.Signal {
	if ctx.Err() == nil {
		return 0
	}
	// The signal reaches every channel in one pass; the one that cancelled
	// ctx may have been served a moment before sigs.
	t := time.NewTimer(100 * time.Millisecond)
	defer t.Stop()
	select {
	case s := <-sigs:
		if sig, ok := s.(syscall.Signal); ok {
			return sig
		}
	case <-t.C:
	}
	return 0
}

const (
	// defaultSpoolName is the spool's directory, next to DEST (pg_wal when
	// PostgreSQL runs restore_command): on DEST's filesystem, so that a
	// spooled segment moves into place by rename, and inside pg_wal, whose
	// contents base backups leave out.
	defaultSpoolName = ".barnacle-prefetch"
	// defaultPrefetch is --prefetch's default.
	defaultPrefetch = 4
	// prefetchWorkerTimeout bounds the detached prefetcher, so that one
	// stuck on the archive does not outlive recovery by long.
	prefetchWorkerTimeout = 5 * time.Minute
	// defaultRetryFor is --retry-for's default: how long wal-fetch goes on
	// retrying an archive that cannot be opened, listed or read before it
	// exits 255 and recovery stops, which only an operator restarting the
	// server resumes. Long enough to ride out an NFS server failing over
	// or an object store restarting (minio-go's own retries of one request
	// last about 5 s of it), short enough that PostgreSQL's startup
	// process, blocked meanwhile, does not look hung.
	defaultRetryFor = 30 * time.Second
	// retryBase and retryMax bound the backoff between attempts
	// (retry.Backoff: doubled per attempt, jittered).
	retryBase = 250 * time.Millisecond
	retryMax  = 4 * time.Second
)

// startPrefetcher starts `barnacle <args>` detached (own session, no
// stdio), so that it outlives this process without holding PostgreSQL's
// pipes and without being waited for. A variable so that tests can see
// the arguments instead of starting a process.
var startPrefetcher = func(args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	c := exec.Command(exe, args...)
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		return err
	}
	return c.Process.Release()
}

func newWALFetchCommand() *cobra.Command {
	var (
		spoolDir       string
		prefetch       int
		worker         bool
		removeSpool    bool
		standbyPartial bool
		retryFor       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "wal-fetch WALNAME DEST",
		Short: "Fetch a WAL file from the archive for PostgreSQL's restore_command",
		Long: `Fetch the WAL file WALNAME (a segment or a timeline .history file) of cluster-name
from archive-url and write it to DEST, as PostgreSQL's restore_command does:

  restore_command = 'barnacle wal-fetch --config /etc/barnacle.yaml %f %p'

With Stolon, in the cluster specification used for a point-in-time recovery:

  "archiveRecoverySettings": {
    "restoreCommand": "barnacle wal-fetch --config /etc/barnacle.yaml %f %p"
  }

Segments are served decompressed, and everything is checked against the checksum
stored in the archive before DEST appears; DEST is written atomically. The
newest timeline's last segment, archived only as .partial while the master is
streaming, is served padded with zeros so that recovery replays every archived
byte; an older timeline's .partial is not served.

After serving segment N, wal-fetch starts a detached helper that downloads
segments N+1 to N+--prefetch in parallel into the spool directory (by default
.barnacle-prefetch next to DEST, i.e. inside pg_wal), where the next wal-fetch
finds them, verifies them and moves them into place. --prefetch 0 turns that off.
Nothing is prefetched after a .partial: it is the archive's end.

DEST is written under a temporary name and renamed, but not fsynced: PostgreSQL
makes the files it keeps durable itself and fetches the others again.

The prefetch spool is removed by 'barnacle wal-fetch --remove-spool', which
barnacle restore writes as recovery_end_command; PostgreSQL runs it in the data
directory once recovery has ended.

The archive is opened read-only: PostgreSQL's OS user needs read access only.

Exit codes, the contract with PostgreSQL (which reads 1 to 125 as "no such
file" and ends recovery there, and anything above 125 as fatal):
  0    the file was written to DEST.
  1    the archive was read and holds no such file (quiet unless log-level is
       debug: PostgreSQL asks for files past the end on purpose).
  255  any other failure: the archive cannot be opened (volume not mounted,
       directory missing, no permission, S3 unreachable), listed or read, an
       object is damaged (checksum, decompression, length), bad configuration
       or usage, an internal error. A message on stderr (the server log) names
       the cause; PostgreSQL stops recovery instead of promoting short of the
       data. Fix the cause and start the server again: recovery resumes.
       Before that, a failure to open, list or read the archive (and its
       identity, archive.json, missing: an unmounted volume) is retried
       with backoff for up to --retry-for (default ` + defaultRetryFor.String() + `), so that
       a passing outage costs a pause, not a stopped recovery; a damaged
       object (checksum, decompression) is read once more (a torn read),
       then fails. "Not found" is only ever the answer of an archive that
       was read, never the outcome of a retry.
  128+N  interrupted by signal N (SIGINT, SIGTERM), as a shell reports it:
       PostgreSQL takes 143 (SIGTERM) for its own shutdown, any other for a
       fatal error, never for "no such file".
On a standby (standby.signal in the working directory, which is the data
directory when PostgreSQL runs it) a failure exits 1 instead of 255, and at
once (no --retry-for wait unless given): a standby never promotes on its own;
it retries later and streams meanwhile. A panic dies by SIGABRT, which
PostgreSQL also takes as fatal.

A standby fed by the archive alone (standby.signal, restore_command, no
primary_conninfo) asks for the segment after the archive's end every
wal_retrieve_retry_interval and gets exit 1 at once. It is also served the
growing .partial, padded with zeros: it replays up to the last archived byte,
takes the zeros for the end of WAL, and asks for the same segment again at the
next retry, so it trails the source by about wal_retrieve_retry_interval, not
by a segment. While that .partial has not grown, the answer is exit 1 and the
standby reads the copy it holds in pg_wal (wal-fetch records what it served in
pg_wal/.barnacle-served-partial), so an idle source costs no downloads.
--standby-partial=false serves it complete segments only.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if removeSpool {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(2)(cmd, args)
		},
		// Errors before RunE (flags, arguments) are mapped by run with
		// walFetchExitCode too.
		Annotations: map[string]string{abortOnFailure: "true"},
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			if removeSpool {
				return removeWALSpool(spoolDir)
			}
			// An unrecovered panic in another goroutine, or a fatal runtime
			// error, exits 2 by default, which PostgreSQL would read as "not
			// found"; with crash the runtime dies by SIGABRT instead, which
			// stops recovery.
			debug.SetTraceback("crash")
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("wal-fetch %s: panic: %v\n%s", args[0], r, debug.Stack())
				}
				if err != nil {
					err = walFetchError(err, interruptSignal(cmd.Context(), sigs))
				}
			}()
			if retryFor < 0 {
				return usageError{fmt.Errorf("--retry-for %s: must be 0 or more", retryFor)}
			}
			return fetchWAL(cmd, args[0], args[1], spoolDir, prefetch, worker, standbyPartial, retryFor)
		},
	}
	cmd.Flags().StringVar(&spoolDir, "spool-dir", "", "prefetch spool directory, private to this server (default: "+defaultSpoolName+" in DEST's directory)")
	cmd.Flags().IntVar(&prefetch, "prefetch", defaultPrefetch, "how many segments after WALNAME to download in the background (0: none)")
	cmd.Flags().BoolVar(&standbyPartial, "standby-partial", true, "on a standby (standby.signal), serve the newest timeline's .partial padded with zeros, as in archive recovery; false: complete segments only (archive recovery always gets the .partial)")
	cmd.Flags().DurationVar(&retryFor, "retry-for", defaultRetryFor, "how long to go on retrying an archive that cannot be opened, listed or read before exiting 255 (0: no retry)")
	cmd.Flags().BoolVar(&worker, "prefetch-worker", false, "run as the prefetcher that wal-fetch starts")
	_ = cmd.Flags().MarkHidden("prefetch-worker")
	cmd.Flags().BoolVar(&removeSpool, "remove-spool", false, "remove the prefetch spool and exit, as recovery_end_command (no WALNAME, DEST; default spool: pg_wal/"+defaultSpoolName+" in the working directory)")
	return cmd
}

// removeWALSpool is wal-fetch --remove-spool: PostgreSQL runs it as
// recovery_end_command in the data directory. Its failure exits 1, never
// above 125: PostgreSQL takes that for a crash of recovery_end_command and
// stops the server that has just finished recovery, for a few leftover
// files.
func removeWALSpool(spoolDir string) error {
	if spoolDir == "" {
		spoolDir = filepath.Join("pg_wal", defaultSpoolName)
	}
	if err := walfetch.RemoveSpool(spoolDir); err != nil {
		return exitCodeError{code: exitFailure, err: err}
	}
	return nil
}

// abortOnFailure is the annotation of commands whose every failure, usage
// errors included, run maps with walFetchExitCode.
const abortOnFailure = "barnacle-abort-on-failure"

// walFetchHook, when set by a test, runs before the fetch.
var walFetchHook func()

// fetchWAL is wal-fetch's work; its errors are mapped to exit codes by
// walFetchError.
// standbyPartial is --standby-partial, retryFor --retry-for.
func fetchWAL(cmd *cobra.Command, name, dest, spoolDir string, prefetch int, worker, standbyPartial bool, retryFor time.Duration) error {
	if err := walfetch.CheckName(name); err != nil {
		return usageError{err}
	}
	if prefetch < 0 {
		return usageError{fmt.Errorf("--prefetch %d: must be 0 or more", prefetch)}
	}
	cfg, err := loadConfig(cmd, config.Needs{Keys: []string{"cluster-name", "archive-url"}})
	if err != nil {
		return err
	}
	// loadConfig checked archive-url's form (backends.Check): what fails
	// below is the archive itself, which may come back.
	log := newLogger(cfg, cmd.ErrOrStderr()).Named("wal-fetch")
	if spoolDir == "" {
		spoolDir = filepath.Join(filepath.Dir(dest), defaultSpoolName)
	}
	standby := inStandbyMode()
	if standby && !cmd.Flags().Changed("retry-for") {
		// A standby's failure exits 1 and PostgreSQL tries again after
		// wal_retrieve_retry_interval (and streams meanwhile): waiting
		// out the budget here would only hold it up.
		retryFor = 0
	}
	var servedPartial bool
	opts := walfetch.Options{
		Prefetch: prefetch, Logger: log, ServedPartial: &servedPartial,
		CompleteOnly: standby && !standbyPartial,
		// A standby asks for the segment at the archive's end again and
		// again; archive recovery asks once, and must get it.
		ReuseServedPartial: standby,
	}
	if prefetch > 0 {
		opts.SpoolDir = spoolDir
	}
	if worker {
		// Best effort, no retry: a segment it misses is fetched by the
		// wal-fetch that needs it.
		b, err := backends.OpenReadOnly(cmd.Context(), cfg.ArchiveURL)
		if err != nil {
			return fmt.Errorf("wal-fetch %s: %w", name, err)
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), prefetchWorkerTimeout)
		defer cancel()
		return walfetch.Prefetch(ctx, b, cfg.ClusterName, name, opts)
	}
	if walFetchHook != nil {
		walFetchHook()
	}
	// Opening is retried with the fetch: an unmounted volume or an
	// unreadable directory makes the file backend fail to open.
	var b storage.Backend
	err = fetchWithRetry(cmd.Context(), log, retryFor, func(ctx context.Context) error {
		if b == nil {
			// Read-only: restore_command runs as the PostgreSQL OS
			// user, who may only read the archive.
			ob, err := backends.OpenReadOnly(ctx, cfg.ArchiveURL)
			if err != nil {
				return err
			}
			b = ob
		}
		return walfetch.Fetch(ctx, b, cfg.ClusterName, name, dest, opts)
	})
	if errors.Is(err, walfetch.ErrNotFound) {
		log.Debug("not in the archive", "file", name, "archive", b.URL(), "cluster", cfg.ClusterName)
		return err
	}
	if err != nil && b == nil {
		return fmt.Errorf("wal-fetch %s: %w", name, err) // names archive-url
	}
	if err != nil {
		return fmt.Errorf("wal-fetch %s from %s (cluster %s): %w", name, b.URL(), cfg.ClusterName, err)
	}
	// After a .partial (the archive's end) there is nothing to prefetch,
	// and a standby asks for it again at every retry.
	if prefetch > 0 && wal.IsSegmentFileName(name) && !servedPartial {
		if err := startPrefetcher(prefetcherArgs(cmd, name, dest)); err != nil {
			// The segment is served; without prefetch the next
			// ones only take longer.
			log.Warn("could not start the prefetcher", "error", err)
		}
	}
	return nil
}

// prefetcherArgs is the command line of the prefetcher for the segments
// after name: this command's, with the flags the user set (the
// environment is inherited) and --prefetch-worker.
func prefetcherArgs(cmd *cobra.Command, name, dest string) []string {
	args := []string{cmd.Name(), "--prefetch-worker"}
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if f.Name != "prefetch-worker" {
			args = append(args, "--"+f.Name+"="+f.Value.String())
		}
	})
	return append(args, "--", name, dest)
}

// walFetchRetryHook, when set by a test, runs before each retry's wait
// with the attempt that failed and its error.
var walFetchRetryHook func(attempt int, err error)

// fetchWithRetry runs fetch until it succeeds, fails for good (see
// retryPolicy), or the next attempt would start more than budget after
// the first; it returns fetch's last error, never one of its own, so that
// a retry can neither make "not found" out of a failure nor hide one. An
// end of ctx during a wait returns the last error at once.
func fetchWithRetry(ctx context.Context, log hclog.Logger, budget time.Duration, fetch func(ctx context.Context) error) error {
	start := time.Now()
	reread := false
	for attempt := 1; ; attempt++ {
		err := fetch(ctx)
		if err == nil {
			return nil
		}
		switch retryPolicy(err) {
		case retryNever:
			return err
		case retryOnce:
			if reread {
				return err
			}
			reread = true
		}
		d := retry.Backoff(attempt, retryBase, retryMax)
		if time.Since(start)+d > budget {
			return err
		}
		log.Warn("reading the archive failed; retrying", "attempt", attempt, "retry_in", d, "error", err)
		if walFetchRetryHook != nil {
			walFetchRetryHook(attempt, err)
		}
		retry.Sleep(ctx, d)
		if ctx.Err() != nil {
			return err
		}
	}
}

type retryKind int

const (
	// retryNever: the answer is final.
	retryNever retryKind = iota
	// retryOnce: read once more, no more.
	retryOnce
	// retryTransient: retry within the budget.
	retryTransient
)

// retryPolicy says whether trying a failed fetch again may succeed.
//
//   - Never for the answer "not found" (the archive was read: its identity
//     and the listing agree), an object without a checksum or with an
//     invalid name (foreign, stays so), or the end of the command's
//     context (PostgreSQL's shutdown).
//   - Once for a checksum mismatch, or an object that does not
//     decompress or has the wrong length (walfetch.ErrDamaged: the read
//     stopped before the object's end, where its checksum is checked, so
//     it may be the same torn read). The archive's objects are written once
//     and replaced only by rename, so a mismatch is almost always damage
//     that a second read finds again, and then costs one more read of a
//     segment; but a read torn by a network filesystem (a client cache
//     serving pages of a .partial rewritten from its start by a restarted
//     receiver) or corrupted on the wire reads right the second time, and
//     stopping recovery for it would need an operator. The second read is
//     verified like the first, so it can never serve bad bytes.
//   - Otherwise, within the budget: the archive could not be opened,
//     listed or read, including its identity (archive.json) being missing,
//     which is what an unmounted volume or a renamed directory looks like.
func retryPolicy(err error) retryKind {
	for _, permanent := range []error{
		walfetch.ErrNotFound, storage.ErrNoChecksum, storage.ErrInvalidName,
		context.Canceled, context.DeadlineExceeded,
	} {
		if errors.Is(err, permanent) {
			return retryNever
		}
	}
	if errors.Is(err, storage.ErrChecksum) || errors.Is(err, walfetch.ErrDamaged) {
		return retryOnce
	}
	return retryTransient
}
