package restore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
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
// in use or not empty.
func IsRejected(err error) bool {
	var re *RejectedError
	return errors.As(err, &re) || errors.Is(err, ErrInUse) || errors.Is(err, ErrNotEmpty)
}

// Prepared is a checked request with the backup it restores.
type Prepared struct {
	Request
	Backup  catalog.Backup
	Windows []catalog.Window
}

// Prepare checks a request against the archive before anything is
// written: the target is valid, the named backup exists and is done (or
// one precedes the target on a timeline that leads to it), and a time or
// LSN target lies in a recoverable window. A refusal is a *RejectedError
// whose message lists what the archive can recover to; storage failures are
// plain errors.
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
	if req.Backup != "" {
		doc, err := catalog.ResolveBackup(ctx, b, req.Cluster, req.Backup)
		switch {
		case errors.Is(err, catalog.ErrNoBackup):
			return reject(fmt.Errorf("restore: unknown backup %q: barnacle list-backups shows the backups there are", req.Backup))
		case err != nil:
			return p, fmt.Errorf("restore: read backup %s: %w", req.Backup, err)
		case doc.Status != catalog.StatusDone:
			return reject(fmt.Errorf("restore: backup %s is %s, not done; pick a done one (barnacle list-backups)", doc.ID, doc.Status))
		}
		p.Backup = doc
	} else {
		doc, err := ChooseBackup(a.Backups, a.Histories, req.Target, req.Timeline)
		if err != nil {
			return reject(err)
		}
		p.Backup = doc
	}
	p.Windows = catalog.RecoverableWindows(a)
	if err := CheckTarget(req.Target, req.Timeline, p.Windows, a.Gaps); err != nil {
		return reject(err)
	}
	return p, nil
}

// Run restores the prepared backup into the target directory, with the
// recovery settings unless DataOnly. Errors wrapping ErrInUse or
// ErrNotEmpty mean nothing was written (IsRejected).
func (p Prepared) Run(ctx context.Context, b storage.Backend, log hclog.Logger, onProgress func(done, total int64)) (Result, error) {
	opts := Options{
		Backend:       b,
		Cluster:       p.Cluster,
		Backup:        p.Backup,
		TargetDir:     p.TargetDir,
		TablespaceMap: p.TablespaceMap,
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
