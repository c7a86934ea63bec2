package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walfetch"
)

// exitAbortRecovery is wal-fetch's exit code for a file that exists but
// could not be fetched (archive unreachable, checksum mismatch) during
// archive recovery: PostgreSQL treats an exit code above 125 as fatal and
// stops, where exit 1 would make it take the end of the archive for the
// end of WAL and, without a target, promote at that point: a restore
// silently short of the data the archive holds.
const exitAbortRecovery = 255

// inStandbyMode reports whether the server running restore_command is a
// standby (standby.signal in its data directory, the working directory of
// restore_command): a standby retries on exit 1, which suits a passing
// archive failure better than stopping.
func inStandbyMode() bool {
	_, err := os.Stat("standby.signal")
	return err == nil
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
	// fetchAttempts and fetchRetryDelay: a failure that PostgreSQL takes
	// for the end of the archive may end recovery early, so transient
	// failures are retried a few times first.
	fetchAttempts   = 3
	fetchRetryDelay = time.Second
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
		spoolDir string
		prefetch int
		worker   bool
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

DEST is written under a temporary name and renamed, but not fsynced: PostgreSQL
makes the files it keeps durable itself and fetches the others again.

Exit codes: 0 the file was written; 1 the file is not in the archive (no output,
unless log-level is debug: PostgreSQL asks for files past the end on purpose);
2 bad usage or configuration; 255 the file exists but could not be fetched (a
message on stderr names the file and the archive), after ` + fmt.Sprint(fetchAttempts) + ` attempts:
PostgreSQL stops recovery on it rather than taking the end of the archive for
the end of WAL and promoting short of the data. On a standby (standby.signal in
the working directory, which is the data directory when PostgreSQL runs it)
such a failure exits 1 instead, and the standby retries later.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, dest := args[0], args[1]
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
			log := newLogger(cfg, cmd.ErrOrStderr()).Named("wal-fetch")
			b, err := backends.Open(cmd.Context(), cfg.ArchiveURL)
			if err != nil {
				return err // names archive-url
			}
			if spoolDir == "" {
				spoolDir = filepath.Join(filepath.Dir(dest), defaultSpoolName)
			}
			opts := walfetch.Options{Prefetch: prefetch, Logger: log}
			if prefetch > 0 {
				opts.SpoolDir = spoolDir
			}
			if worker {
				ctx, cancel := context.WithTimeout(cmd.Context(), prefetchWorkerTimeout)
				defer cancel()
				return walfetch.Prefetch(ctx, b, cfg.ClusterName, name, opts)
			}
			err = fetchWithRetry(cmd.Context(), log, func(ctx context.Context) error {
				return walfetch.Fetch(ctx, b, cfg.ClusterName, name, dest, opts)
			})
			if errors.Is(err, walfetch.ErrNotFound) {
				log.Debug("not in the archive", "file", name, "archive", b.URL(), "cluster", cfg.ClusterName)
				// Quiet: PostgreSQL asks for files past the end on purpose.
				return exitCodeError{code: exitFailure}
			}
			if err != nil {
				err = fmt.Errorf("wal-fetch %s from %s (cluster %s): %w", name, b.URL(), cfg.ClusterName, err)
				if !inStandbyMode() && !errors.Is(err, context.Canceled) {
					return exitCodeError{code: exitAbortRecovery, err: err}
				}
				return err
			}
			if prefetch > 0 && wal.IsSegmentFileName(name) {
				if err := startPrefetcher(prefetcherArgs(cmd, name, dest)); err != nil {
					// The segment is served; without prefetch the next
					// ones only take longer.
					log.Warn("could not start the prefetcher", "error", err)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&spoolDir, "spool-dir", "", "prefetch spool directory, private to this server (default: "+defaultSpoolName+" in DEST's directory)")
	cmd.Flags().IntVar(&prefetch, "prefetch", defaultPrefetch, "how many segments after WALNAME to download in the background (0: none)")
	cmd.Flags().BoolVar(&worker, "prefetch-worker", false, "run as the prefetcher that wal-fetch starts")
	_ = cmd.Flags().MarkHidden("prefetch-worker")
	return cmd
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

// fetchWithRetry runs fetch until it succeeds, fails for good, or has
// been tried fetchAttempts times.
func fetchWithRetry(ctx context.Context, log hclog.Logger, fetch func(ctx context.Context) error) error {
	for attempt := 1; ; attempt++ {
		err := fetch(ctx)
		if err == nil || attempt == fetchAttempts || !retryable(err) {
			return err
		}
		log.Warn("wal-fetch failed; retrying", "attempt", attempt, "error", err)
		t := time.NewTimer(time.Duration(attempt) * fetchRetryDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// retryable reports whether trying a failed fetch again may succeed: not
// for a missing file or archive identity, damaged or foreign objects, or
// the end of the command's context.
func retryable(err error) bool {
	for _, permanent := range []error{
		walfetch.ErrNotFound, storage.ErrNotExist, storage.ErrChecksum, storage.ErrNoChecksum,
		storage.ErrInvalidName, context.Canceled, context.DeadlineExceeded,
	} {
		if errors.Is(err, permanent) {
			return false
		}
	}
	return true
}
