package restore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Request is one restore as `barnacle restore` and a restore request in
// etcd (DESIGN.md §4, §5) ask for it.
type Request struct {
	Cluster string
	// Backup is a backup ID, "latest", or "" to choose the newest backup
	// that precedes the target (ChooseBackup).
	Backup    string
	TargetDir string
	Target    Target
	Timeline  TimelineTarget
	// Action is recovery_target_action ("" = PostgreSQL's pause).
	Action    string
	Inclusive *bool
	Force     bool
	// TablespaceMap maps tablespace OIDs to new directories.
	TablespaceMap map[uint32]string
	// Fence is Options.Fence: the agent's restore-root, or "".
	Fence string
	// DataOnly restores the files without recovery.signal and recovery
	// settings: Stolon's keeper writes those itself after its
	// dataRestoreCommand.
	DataOnly bool
	// RestoreCommand is restore_command (required unless DataOnly).
	RestoreCommand string
	// RecoveryEndCommand is recovery_end_command, "" for none
	// (RemoveSpoolCommand removes wal-fetch's prefetch spool).
	RecoveryEndCommand string
	Owner              *Owner
	Parallel           int
}

// RejectedError says that a request cannot run as asked, and what to
// change; nothing was written.
type RejectedError struct{ Err error }

func (e *RejectedError) Error() string { return e.Err.Error() }
func (e *RejectedError) Unwrap() error { return e.Err }

// IsRejected reports whether err means the request was refused before
// anything was written: a rejection from Prepare, or a destination that is
// in use, not empty, outside the fence or short of space.
func IsRejected(err error) bool {
	var re *RejectedError
	return errors.As(err, &re) || errors.Is(err, ErrInUse) || errors.Is(err, ErrNotEmpty) ||
		errors.Is(err, ErrOutside) || errors.Is(err, ErrNoSpace)
}

// Prepared is a checked request with the backup it restores.
type Prepared struct {
	Request
	Backup  catalog.Backup
	Windows []catalog.Window
	// TargetRecord is where the record of a restore-point or xid target
	// starts in the archived WAL, when the backup was chosen by it;
	// InvalidLSN otherwise.
	TargetRecord wal.LSN
}

// Prepare checks a request against the archive before anything is
// written: the target is valid, the named backup exists and is done (or
// one precedes the target on a timeline that leads to it), and a time or
// LSN target lies in a recoverable window. For a restore-point or xid
// target without a named backup it reads the archived WAL after the
// backups, newest first, to find the target's record (the restore point;
// the transaction's commit or abort) and choose the newest backup that
// stopped before it; a target not found there is refused (*NotInWALError),
// and WAL that cannot be read fails the request (doubt stops recovery). A
// refusal is a *RejectedError whose message lists what the archive can
// recover to; storage failures are plain errors.
func Prepare(ctx context.Context, b storage.Backend, req Request) (Prepared, error) {
	p := Prepared{Request: req}
	reject := func(err error) (Prepared, error) { return p, &RejectedError{Err: err} }
	if err := req.Target.Validate(); err != nil {
		return reject(err)
	}
	if req.TargetDir == "" {
		return reject(errors.New("restore: no target directory given"))
	}
	if !req.DataOnly && req.RestoreCommand == "" {
		return reject(errors.New("restore: no restore_command to write"))
	}
	switch req.Action {
	case "", ActionPause, ActionPromote, ActionShutdown:
	default:
		return reject(fmt.Errorf("restore: target action %q: use pause, promote or shutdown", req.Action))
	}
	a, err := catalog.ReadArchive(ctx, b, req.Cluster)
	if err != nil {
		return p, fmt.Errorf("restore: %w", err)
	}
	p.Windows = catalog.RecoverableWindows(a)
	if req.Backup != "" {
		doc, err := catalog.ResolveBackup(ctx, b, req.Cluster, req.Backup)
		switch {
		case errors.Is(err, catalog.ErrNoBackup):
			return reject(fmt.Errorf("restore: unknown backup %q: barnacle list-backups shows the backups there are", req.Backup))
		case errors.Is(err, catalog.ErrInvalidBackupID):
			return reject(fmt.Errorf("restore: %w", err))
		case err != nil:
			return p, fmt.Errorf("restore: read backup %s: %w", req.Backup, err)
		case doc.Status != catalog.StatusDone:
			return reject(fmt.Errorf("restore: backup %s is %s, not done; pick a done one (barnacle list-backups)", doc.ID, doc.Status))
		}
		p.Backup = doc
	} else {
		// A restore point or xid is compared with the backups by its
		// record's place in the WAL; without it the newest backup would
		// be taken, and PostgreSQL would fail at start-up when the record
		// lies before that backup's stop.
		at, ok, err := locateTarget(ctx, b, a, req.Target, req.Timeline)
		if err != nil {
			return p, err
		}
		if ok {
			p.TargetRecord = at
		}
		doc, err := ChooseBackupAt(a.Backups, a.Histories, req.Target, req.Timeline, at)
		if err != nil {
			// A time or LSN target before the first backup (or past the
			// archive) is answered with the recoverable windows, which
			// say what can be asked for; the backups rejected one by one
			// say less.
			if werr := CheckTarget(req.Target, req.Timeline, p.Windows, a.Gaps); werr != nil {
				return reject(werr)
			}
			return reject(err)
		}
		p.Backup = doc
	}
	if err := checkTablespaceMap(req.TablespaceMap, p.Backup); err != nil {
		return reject(err)
	}
	if err := CheckTarget(req.Target, req.Timeline, p.Windows, a.Gaps); err != nil {
		return reject(err)
	}
	return p, nil
}

// checkTablespaceMap refuses a map that names a tablespace the backup does
// not have, before anything is written (Restore checks it again).
func checkTablespaceMap(m map[uint32]string, doc catalog.Backup) error {
	have := map[uint32]bool{}
	for _, f := range doc.Files {
		if f.TablespaceOID != 0 {
			have[f.TablespaceOID] = true
		}
	}
	for oid := range m {
		if !have[oid] {
			return fmt.Errorf("restore: tablespace map names tablespace %d, which backup %s does not have (barnacle show-backup %s lists its tablespaces)", oid, doc.ID, doc.ID)
		}
	}
	return nil
}

// Run restores the prepared backup into the target directory, with the
// recovery settings unless DataOnly. Errors for which IsRejected holds
// mean nothing was written.
func (p Prepared) Run(ctx context.Context, b storage.Backend, log hclog.Logger, onProgress func(done, total int64)) (Result, error) {
	opts := Options{
		Backend:       b,
		Cluster:       p.Cluster,
		Backup:        p.Backup,
		TargetDir:     p.TargetDir,
		TablespaceMap: p.TablespaceMap,
		Fence:         p.Fence,
		Force:         p.Force,
		Parallel:      p.Parallel,
		Owner:         p.Owner,
		OnProgress:    onProgress,
		Logger:        log,
	}
	if !p.DataOnly {
		opts.Recovery = &Recovery{
			RestoreCommand:     p.RestoreCommand,
			RecoveryEndCommand: p.RecoveryEndCommand,
			Target:             p.Target,
			Timeline:           p.Timeline,
			Action:             p.Action,
			Inclusive:          p.Inclusive,
		}
	}
	return Restore(ctx, opts)
}

// ShellQuote quotes s for /bin/sh, which runs restore_command and Stolon's
// dataRestoreCommand: in single quotes, each single quote inside closed,
// escaped with a backslash and reopened.
func ShellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/-_.,:=@+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// WALFetchCommand is the restore_command that runs barnacle wal-fetch:
// the executable, then the configuration file if one is given, and the
// cluster name and archive URL (so that it works without the file too).
// A % in them is doubled, as PostgreSQL expands %f, %p, %r and %%.
func WALFetchCommand(executable, configFile, cluster, archiveURL string) string {
	arg := func(s string) string { return strings.ReplaceAll(ShellQuote(s), "%", "%%") }
	parts := []string{arg(executable), "wal-fetch"}
	if configFile != "" {
		parts = append(parts, "--config", arg(configFile))
	}
	parts = append(parts, "--cluster-name", arg(cluster), "--archive-url", arg(archiveURL), "%f", "%p")
	return strings.Join(parts, " ")
}

// RemoveSpoolCommand is the recovery_end_command that removes the prefetch
// spool wal-fetch keeps in pg_wal: PostgreSQL runs it in the data
// directory once recovery has ended, when no wal-fetch will follow.
func RemoveSpoolCommand(executable string) string {
	return strings.ReplaceAll(ShellQuote(executable), "%", "%%") + " wal-fetch --remove-spool"
}
