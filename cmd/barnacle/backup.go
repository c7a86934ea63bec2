package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/barnacle-pg/barnacle/pkg/backup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/pgaddr"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

func newBackupCommand() *cobra.Command {
	var (
		local, fast, asJSON, wait bool
		label, from               string
		timeout                   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "backup [--wait] [--from master|standby|any] | backup --local",
		Short: "Take a base backup into the archive",
		Long: `Ask the cluster for a base backup: write a request under
<barnacle-prefix>/<cluster-name>/requests/backup/<id>; the leading agent claims
it exactly once and reports in status/backup/<id>. It says who leads: with no
leading agent the request waits in etcd until one leads. With --wait, follow it
to the end (a progress bar on a terminal) and exit 0 only when it is done;
interrupted (Ctrl-C) or past --timeout, a request no agent has claimed yet is
withdrawn, and a claimed one goes on. Needs cluster-name and store-endpoints.

With --local the backup runs in this process, with no agent and no etcd,
against pg-host:pg-port into archive-url: it streams the WAL the backup needs
into the archive at the same time, as pg_basebackup -X stream does, so the
backup is restorable on its own. It streams through a temporary slot of its
own, which the server drops when the backup ends (nothing left to pin WAL),
or through slot-name when slot-name or slot-mode is set (created when missing
in slot-mode own); it copies nothing until that slot is streaming, so a slot
in use by another process fails the backup at once. Either way a backup is
"done" only once its WAL is archived.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !local {
				return requestBackup(cmd, from, label, wait, asJSON, timeout)
			}
			cfg, err := loadConfig(cmd, config.Needs{Keys: []string{"cluster-name", "archive-url", "pg-host"}})
			if err != nil {
				return err
			}
			log := newLogger(cfg, cmd.ErrOrStderr())
			b, err := backends.Open(cmd.Context(), cfg.ArchiveURL)
			if err != nil {
				return err // names archive-url
			}
			bar := newProgressBar(cmd, "backup", !asJSON)
			bar.Waiting(checkpointWait(fast))
			bar.AtEnd("waiting for the WAL up to the stop position to be archived")
			// With no bar drawn nothing reads the progress, and without a
			// reader the server is not asked for its size estimate (a stat
			// of every file before the first byte; backup.Options.OnProgress).
			var progress func(done, total int64)
			if bar.on {
				progress = bar.Update
			}
			doc, err := takeLocalBackup(cmd.Context(), cfg, b, log, label, fast, progress)
			bar.Done()
			if err != nil {
				if doc.ID != "" {
					return fmt.Errorf("backup %s failed: %w", doc.ID, err)
				}
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), doc)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "backup %s done: %s (stored %s, %s), %s .. %s on timeline %d, in %s\n",
				doc.ID, humanBytes(doc.Bytes), humanBytes(doc.StoredBytes), doc.Compression, doc.StartLSN, doc.StopLSN,
				doc.StopTimeline, doc.StopTime.Sub(doc.StartTime).Round(100*time.Millisecond))
			return nil
		},
	}
	cmd.Flags().BoolVar(&local, "local", false, "run the backup in this process against pg-host:pg-port")
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the request until it is done, failed or rejected")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "with --wait: give up after this long (0 = no limit); an unclaimed request is then withdrawn")
	cmd.Flags().StringVar(&from, "from", "", "where the backup runs: master, standby or any (default: backup-from)")
	cmd.Flags().BoolVar(&fast, "fast", false, "with --local: ask for an immediate checkpoint instead of a spread one (an agent's backup always does)")
	cmd.Flags().StringVar(&label, "label", "", "backup label")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the backup document as JSON")
	return cmd
}

// localSlot is the slot backup --local streams through: the configured one
// when slot-name or slot-mode is set, or else a temporary slot of its own,
// as pg_basebackup does, which the server drops when the backup ends, so
// that no slot is left behind to pin WAL and two backups at once do not
// compete for one slot.
func localSlot(cfg config.Config) (name string, temporary bool) {
	_, name1 := cfg.Sources["slot-name"]
	_, mode := cfg.Sources["slot-mode"]
	if name1 || mode {
		return cfg.StreamingSlotName(), false
	}
	return fmt.Sprintf("barnacle_local_%d", os.Getpid()), true
}

// takeLocalBackup streams WAL and takes the base backup side by side,
// like pg_basebackup -X stream (backup.TakeStreaming), against the
// PostgreSQL that package pgaddr says is local.
func takeLocalBackup(ctx context.Context, cfg config.Config, b storage.Backend, log hclog.Logger, label string, fast bool,
	progress func(done, total int64)) (catalog.Backup, error) {
	addr, err := pgaddr.Local(cfg, nil)
	if err != nil {
		return catalog.Backup{}, err
	}
	repl, err := cfg.PGConnString(addr.Host, addr.Port, true)
	if err != nil {
		return catalog.Backup{}, err
	}
	slot, temporary := localSlot(cfg)
	stream := walstream.Options{
		ConnString:    repl,
		Slot:          slot,
		CreateSlot:    temporary || cfg.SlotMode == config.SlotModeOwn,
		TemporarySlot: temporary,
		// The archive may end long before this backup starts (an
		// earlier backup, no agent since) and the server no longer have
		// that WAL: the backup needs only WAL from its own start, so the
		// missing range is recorded as a gap, as the agent records it,
		// and streaming goes on.
		OnGap: func(ctx context.Context, g walstream.Gap) error {
			log.Warn("wal gap: the archive lacks WAL the server no longer has; recorded", "timeline", g.Timeline,
				"from", g.From.String(), "to", g.ResumeAt.String())
			return catalog.RecordGap(ctx, b, cfg.ClusterName, catalog.Gap{
				Timeline: g.Timeline, StartLSN: g.From, EndLSN: g.ResumeAt,
				Reason: fmt.Sprintf("the server no longer had this WAL when barnacle backup --local asked for it (timeline %d): %v", g.Timeline, g.Err),
			})
		},
		Backend:     b,
		Prefix:      catalog.WALPrefix(cfg.ClusterName),
		Compression: cfg.Compression,
		Logger:      log,
		OnConnect: func(ctx context.Context, info walstream.ServerInfo) error {
			_, err := catalog.EnsureIdentity(ctx, b, catalog.Identity{Cluster: cfg.ClusterName, SystemID: info.SystemID, WALSegmentSize: info.SegmentSize})
			return err
		},
	}
	return backup.TakeStreaming(ctx, repl, stream, backup.Options{
		Backend:           b,
		Cluster:           cfg.ClusterName,
		Compression:       cfg.Compression,
		ManifestChecksums: cfg.ManifestChecksums,
		Label:             label,
		Fast:              fast,
		Host:              addr.Host,
		From:              "local",
		Agent:             "barnacle backup --local",
		Logger:            log,
		OnProgress:        progress,
	})
}

// checkpointWait is what backup --local says before PostgreSQL sends the
// first byte: BASE_BACKUP begins with a checkpoint, which without --fast
// is spread over checkpoint_completion_target of checkpoint_timeout, as
// pg_basebackup says "waiting for checkpoint".
func checkpointWait(fast bool) string {
	if fast {
		return "waiting for checkpoint"
	}
	return "waiting for checkpoint (spread: may take minutes; --fast asks for an immediate one)"
}
