package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/barnacle-pg/barnacle/pkg/backup"
	"github.com/barnacle-pg/barnacle/pkg/basebackup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

func newBackupCommand() *cobra.Command {
	var (
		local, fast, asJSON, wait bool
		label, from               string
	)
	cmd := &cobra.Command{
		Use:   "backup [--wait] [--from master|standby|any] | backup --local",
		Short: "Take a base backup into the archive",
		Long: `Ask the cluster for a base backup: write a request under
<barnacle-prefix>/<cluster-name>/requests/backup/<id>; the leading agent claims
it exactly once and reports in status/backup/<id>. With --wait, follow it to
the end (a progress bar on a terminal) and exit 0 only when it is done.
Needs cluster-name and store-endpoints.

With --local the backup runs in this process, with no agent and no etcd,
against pg-host:pg-port into archive-url: it streams the WAL the backup needs
into the archive at the same time (through slot-name, created when missing in
slot-mode own), as pg_basebackup -X stream does, so the backup is restorable
on its own. Either way a backup is "done" only once that WAL is archived.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !local {
				return requestBackup(cmd, from, label, wait, asJSON)
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
			bar := newProgressBar(cmd.OutOrStdout(), "backup", !asJSON)
			doc, err := takeLocalBackup(cmd.Context(), cfg, b, log, label, fast, bar.Update)
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
	cmd.Flags().StringVar(&from, "from", "", "where the backup runs: master, standby or any (default: backup-from)")
	cmd.Flags().BoolVar(&fast, "fast", false, "ask for an immediate checkpoint instead of a spread one")
	cmd.Flags().StringVar(&label, "label", "", "backup label")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the backup document as JSON")
	return cmd
}

// takeLocalBackup streams WAL and takes the base backup side by side,
// like pg_basebackup -X stream, and waits until the archive holds the WAL
// up to the backup's stop position.
func takeLocalBackup(ctx context.Context, cfg config.Config, b storage.Backend, log hclog.Logger, label string, fast bool,
	progress func(done, total int64)) (catalog.Backup, error) {
	port := cfg.PGPort
	if port == 0 {
		port = 5432
	}
	repl, err := cfg.PGConnString(cfg.PGHost, port, true)
	if err != nil {
		return catalog.Backup{}, err
	}

	var (
		mu      sync.Mutex
		flushed wal.LSN
		tli     wal.Timeline
	)
	advanced := make(chan struct{}, 1)
	r, err := walstream.New(walstream.Options{
		ConnString:  repl,
		Slot:        cfg.StreamingSlotName(),
		CreateSlot:  cfg.SlotMode == config.SlotModeOwn,
		Backend:     b,
		Prefix:      catalog.WALPrefix(cfg.ClusterName),
		Compression: cfg.Compression,
		Logger:      log,
		OnConnect: func(ctx context.Context, info walstream.ServerInfo) error {
			_, err := catalog.EnsureIdentity(ctx, b, catalog.Identity{Cluster: cfg.ClusterName, SystemID: info.SystemID, WALSegmentSize: info.SegmentSize})
			return err
		},
		OnProgress: func(p walstream.Progress) {
			mu.Lock()
			flushed, tli = p.Flushed, p.Timeline
			mu.Unlock()
			select {
			case advanced <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		return catalog.Backup{}, err
	}
	rctx, stopReceiver := context.WithCancel(ctx)
	defer stopReceiver()
	recvDone := make(chan error, 1)
	go func() { recvDone <- r.Run(rctx) }()
	var recvErr error
	receiverStopped := func() bool {
		select {
		case recvErr = <-recvDone:
			recvDone <- recvErr
			return true
		default:
			return false
		}
	}

	conn, err := pgconn.Connect(ctx, repl)
	if err != nil {
		return catalog.Backup{}, fmt.Errorf("connect for the base backup: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	doc, err := backup.Take(ctx, conn, backup.Options{
		Backend:           b,
		Cluster:           cfg.ClusterName,
		Compression:       cfg.Compression,
		ManifestChecksums: cfg.ManifestChecksums,
		Label:             label,
		Fast:              fast,
		Host:              cfg.PGHost,
		From:              "local",
		Agent:             "barnacle backup --local",
		Logger:            log,
		OnProgress:        progress,
		WaitWAL: func(ctx context.Context, stop basebackup.Position) error {
			for {
				mu.Lock()
				done := catalog.Position{Timeline: tli, LSN: flushed}.Reached(catalog.Position{Timeline: stop.Timeline, LSN: stop.LSN})
				mu.Unlock()
				if done {
					return nil
				}
				if receiverStopped() {
					return fmt.Errorf("the WAL stream stopped before reaching %s: %w", stop.LSN, recvErr)
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-advanced:
				case <-time.After(500 * time.Millisecond):
				}
			}
		},
	})
	stopReceiver()
	<-recvDone
	return doc, err
}
