package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/restore"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
)

// restoreFlags are barnacle restore's own flags.
type restoreFlags struct {
	targetDir, backup                string
	time, lsn, xid, name             string
	immediate, exclusive             bool
	timeline, action                 string
	force, dataOnly, viaEtcd, asJSON bool
	keeper                           string
	tablespaceMap                    []string
	parallel                         int
	timeout                          time.Duration
	owner                            string
}

func newRestoreCommand() *cobra.Command {
	var f restoreFlags
	cmd := &cobra.Command{
		Use:   "restore --target-dir DIR [--backup ID|latest] [--target-time T|--target-lsn L|--target-xid X|--target-name N|--target-immediate] [--target-exclusive]",
		Short: "Restore a base backup and prepare point-in-time recovery",
		Long: `Restore a base backup from archive-url into --target-dir and write
recovery.signal with the recovery settings, restore_command running
barnacle wal-fetch; then start PostgreSQL on the directory and it recovers to
the target (no target: to the end of the archived WAL, including the newest
.partial segment).

Without --backup the newest done backup that precedes the target on a timeline
leading to --target-timeline is chosen. For --target-name and --target-xid the
archived WAL is read (after the newest backup first) to find the restore point
or the transaction's commit or abort, and the newest backup that stopped before
it is chosen; a target that is not in the archived WAL is refused before
anything is written (restore points exist only in WAL: check the spelling, or
give --backup with a backup taken before it). A time or LSN target outside the
recoverable window is refused with the window of each timeline. The checksums
of every stored object are verified while it is unpacked; nothing in a backup
can write outside the target directories.

The target directory must be empty or absent; --force moves its contents aside
to <dir>.barnacle-old-<time> (never deletes them). A directory that a running
PostgreSQL uses is always refused.

With Stolon's PITR init:
  stolonctl init '{"initMode":"pitr","pitrConfig":{
    "dataRestoreCommand":"barnacle restore --config /etc/barnacle.yaml --target-dir %d --data-only --target-time 2026-11-25T10:00:00+00",
    "archiveRecoverySettings":{"restoreCommand":"barnacle wal-fetch --config /etc/barnacle.yaml %f %p"},
    "recoveryTargetSettings":{"recoveryTargetTime":"2026-11-25T10:00:00+00"}}}'
--data-only leaves recovery.signal and the settings to Stolon's keeper; the
same --target-time picks the backup that precedes the target.

With --via-etcd --keeper K the restore is asked of the agent beside keeper K
(into a directory under its restore-root) through
<barnacle-prefix>/<cluster-name>/requests/restore/<id>, and followed to the end;
interrupted (Ctrl-C) or past --timeout, a request no agent has claimed yet is
withdrawn, and a claimed one goes on.

Time targets: RFC 3339 (2026-11-25T10:00:00Z) or PostgreSQL's
'2026-11-25 10:00:00+00', always with a zone; the same forms through etcd.
Recovery stops just after a time, LSN or xid target (the transaction that
commits at it is kept); --target-exclusive stops just before it.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.viaEtcd {
				return restoreViaEtcd(cmd, f)
			}
			if f.keeper != "" || f.timeout != 0 {
				return usageError{errors.New("--keeper and --timeout go with --via-etcd")}
			}
			req, err := f.request()
			if err != nil {
				return usageError{err}
			}
			cfg, err := loadConfig(cmd, config.Needs{Keys: []string{"cluster-name", "archive-url"}})
			if err != nil {
				return err
			}
			req.Cluster = cfg.ClusterName
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the barnacle executable for restore_command: %w", err)
			}
			configFile, _ := cmd.Flags().GetString("config")
			if configFile != "" {
				if configFile, err = filepath.Abs(configFile); err != nil {
					return err
				}
			}
			req.RestoreCommand = restore.WALFetchCommand(exe, configFile, cfg.ClusterName, cfg.ArchiveURL)
			req.RecoveryEndCommand = restore.RemoveSpoolCommand(exe)
			if req.TargetDir, err = filepath.Abs(req.TargetDir); err != nil {
				return err
			}
			log := newLogger(cfg, cmd.ErrOrStderr())
			own, err := decideOwner(os.Geteuid(), req.TargetDir, f.owner)
			if err != nil {
				return usageError{err}
			}
			req.Owner = own.Owner
			b, err := backends.OpenReadOnly(cmd.Context(), cfg.ArchiveURL)
			if err != nil {
				return err // names archive-url
			}
			p, err := restore.Prepare(cmd.Context(), b, req)
			if err != nil {
				return err
			}
			bar := newProgressBar(cmd, "restore", !f.asJSON)
			res, err := p.Run(cmd.Context(), b, log, bar.Update)
			bar.Done()
			if err != nil {
				return restoreFailed(err, res, req.TargetDir, cmd.Context().Err() != nil)
			}
			if own.Warning != "" {
				// Once the files are there, before the operator starts
				// PostgreSQL on them.
				log.Warn("restored files will not be startable as they are", "warning", own.Warning)
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "restored backup %s into %s: %s in %d files\n", res.BackupID, res.TargetDir, humanBytes(res.Bytes), res.Files)
			for old, moved := range res.MovedAside {
				fmt.Fprintf(w, "  the old contents of %s are in %s\n", old, moved)
			}
			for oid, dir := range res.Tablespaces {
				fmt.Fprintf(w, "  tablespace %d in %s\n", oid, dir)
			}
			if p.TargetRecord != 0 {
				fmt.Fprintf(w, "  note: the record of %s starts at %s in the archived WAL, after backup %s stopped at %s\n", req.Target, p.TargetRecord, res.BackupID, p.Backup.StopLSN)
			}
			for _, n := range res.Notes {
				fmt.Fprintf(w, "  note: %s\n", n)
			}
			if own.Note != "" {
				fmt.Fprintf(w, "  note: %s\n", own.Note)
			}
			if f.dataOnly {
				fmt.Fprintln(w, "next: the caller writes recovery.signal and restore_command (Stolon's keeper does)")
			} else {
				fmt.Fprintf(w, "next: start PostgreSQL on %s; it recovers to %s and then %s\n", res.TargetDir, req.Target, actionText(req.Action, req.Target))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.targetDir, "target-dir", "", "data directory to restore into (empty or absent; see --force)")
	fl.StringVar(&f.backup, "backup", "", "backup ID or latest (default: the newest that precedes the target)")
	fl.StringVar(&f.time, "target-time", "", "recover to this time (recovery_target_time)")
	fl.StringVar(&f.lsn, "target-lsn", "", "recover to this WAL position, like 0/3000060 (recovery_target_lsn)")
	fl.StringVar(&f.xid, "target-xid", "", "recover to this transaction ID (recovery_target_xid)")
	fl.StringVar(&f.name, "target-name", "", "recover to this restore point (pg_create_restore_point)")
	fl.BoolVar(&f.immediate, "target-immediate", false, "stop as soon as the backup is consistent")
	fl.BoolVar(&f.exclusive, "target-exclusive", false, "stop just before the time, LSN or xid target instead of just after it (recovery_target_inclusive = off)")
	fl.StringVar(&f.timeline, "target-timeline", "latest", "timeline to recover along: latest, current or a number")
	fl.StringVar(&f.action, "target-action", "", "what PostgreSQL does at the target: pause (default), promote or shutdown")
	fl.BoolVar(&f.force, "force", false, "move a non-empty target directory aside first (never deleted)")
	fl.BoolVar(&f.dataOnly, "data-only", false, "restore only the files: no recovery.signal or settings (Stolon's dataRestoreCommand)")
	fl.StringArrayVar(&f.tablespaceMap, "tablespace-map", nil, "restore tablespace OID into DIR instead of its recorded location (OID=DIR, repeatable)")
	fl.IntVar(&f.parallel, "parallel", restore.DefaultParallel, "archives unpacked at once")
	fl.StringVar(&f.owner, "owner", "", "as root: give the restored files to USER[:GROUP], the OS user PostgreSQL runs as (default as root: the owner of --target-dir or of its nearest existing parent)")
	fl.BoolVar(&f.viaEtcd, "via-etcd", false, "ask the agent beside --keeper to restore, through an etcd request")
	fl.StringVar(&f.keeper, "keeper", "", "with --via-etcd: the Stolon keeper UID whose agent restores")
	fl.DurationVar(&f.timeout, "timeout", 0, "with --via-etcd: give up after this long (0 = no limit); an unclaimed request is then withdrawn")
	fl.BoolVar(&f.asJSON, "json", false, "print the result as JSON")
	return cmd
}

// actionText says what PostgreSQL does once recovery reached the target.
func actionText(action string, t restore.Target) string {
	if t.Kind == restore.TargetEnd {
		return "promotes"
	}
	switch action {
	case restore.ActionPromote:
		return "promotes"
	case restore.ActionShutdown:
		return "shuts down"
	}
	return "pauses (SELECT pg_wal_replay_resume() to promote)"
}

// request turns the flags into a restore.Request, checking them.
func (f restoreFlags) request() (restore.Request, error) {
	req := restore.Request{Backup: f.backup, TargetDir: f.targetDir, Action: f.action, Force: f.force, DataOnly: f.dataOnly, Parallel: f.parallel}
	if f.targetDir == "" {
		return req, errors.New("--target-dir is required")
	}
	var err error
	if req.Target, req.Inclusive, err = f.targetSpec().Parse(func(field string) string { return "--target-" + field }); err != nil {
		return req, err
	}
	if req.Timeline, err = restore.ParseTimelineTarget(f.timeline); err != nil {
		return req, fmt.Errorf("--target-timeline: %w", err)
	}
	switch f.action {
	case "", restore.ActionPause, restore.ActionPromote, restore.ActionShutdown:
	default:
		return req, fmt.Errorf("--target-action %q: use pause, promote or shutdown", f.action)
	}
	if req.TablespaceMap, err = parseTablespaceMap(f.tablespaceMap); err != nil {
		return req, err
	}
	return req, nil
}

// targetSpec is the recovery target the flags give, for restore.TargetSpec.Parse.
func (f restoreFlags) targetSpec() restore.TargetSpec {
	return restore.TargetSpec{Time: f.time, LSN: f.lsn, XID: f.xid, Name: f.name, Immediate: f.immediate, Exclusive: f.exclusive}
}

// parseTablespaceMap reads OID=DIR pairs.
func parseTablespaceMap(pairs []string) (map[uint32]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := map[uint32]string{}
	for _, p := range pairs {
		oid, dir, ok := strings.Cut(p, "=")
		n, err := strconv.ParseUint(oid, 10, 32)
		if !ok || err != nil || n == 0 || !filepath.IsAbs(dir) {
			return nil, fmt.Errorf("--tablespace-map %q: use OID=/absolute/dir, OID as in show-backup", p)
		}
		m[uint32(n)] = dir
	}
	return m, nil
}

// restoreViaEtcd writes a restore request for the agent beside --keeper
// and follows its status to the end.
func restoreViaEtcd(cmd *cobra.Command, f restoreFlags) error {
	if f.keeper == "" {
		return usageError{errors.New("--via-etcd needs --keeper, the Stolon keeper UID whose agent restores")}
	}
	if f.owner != "" {
		return usageError{errors.New("--owner is for a local restore; through etcd the agent restores as the OS user it runs as")}
	}
	if _, err := f.request(); err != nil {
		return usageError{err}
	}
	if f.timeout < 0 {
		return usageError{errors.New("--timeout is a positive duration, like 30m")}
	}
	cfg, err := loadConfig(cmd, config.Needs{Keys: []string{"cluster-name", "store-endpoints"}})
	if err != nil {
		return err
	}
	rr := request.Restore{
		Keeper: f.keeper, Backup: f.backup, TargetDir: f.targetDir, TargetTimeline: f.timeline,
		TargetAction: f.action, Force: f.force, DataOnly: f.dataOnly,
		Target:          request.RestoreTarget{Time: f.time, LSN: f.lsn, XID: f.xid, Name: f.name, Immediate: f.immediate},
		TargetExclusive: f.exclusive,
	}
	if len(f.tablespaceMap) > 0 {
		rr.TablespaceMap = map[string]string{}
		for _, p := range f.tablespaceMap {
			oid, dir, _ := strings.Cut(p, "=")
			rr.TablespaceMap[oid] = dir
		}
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
	defer cancel()
	s, err := submit(ctx, cfg, rr)
	if err != nil {
		return err
	}
	defer s.cli.Close()
	cli, keys, rkeys, id, key := s.cli, s.keys, s.rkeys, s.id, s.key
	fmt.Fprintf(cmd.ErrOrStderr(), "restore request %s written to %s; %s\n", id, key, whoRuns(ctx, cli, keys, f.keeper, false, true))
	st, err := followRequest[request.RestoreResult](cmd, cli, requestFollow{kind: request.KindRestore, keys: rkeys, id: id, timeout: f.timeout, quiet: f.asJSON})
	if err != nil {
		return err
	}
	if f.asJSON {
		if err := printJSON(cmd.OutOrStdout(), st); err != nil {
			return err
		}
	}
	if st.State != request.StateDone {
		return fmt.Errorf("restore request %s %s: %s", id, st.State, st.Error)
	}
	if !f.asJSON && st.Result != nil {
		fmt.Fprintf(cmd.OutOrStdout(), "restored backup %s into %s on %s's host (%s)\n", st.Result.BackupID, st.Result.TargetDir, f.keeper, st.Agent)
	}
	return nil
}
