package restore

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Recovery target actions (recovery_target_action).
const (
	ActionPause    = "pause"
	ActionPromote  = "promote"
	ActionShutdown = "shutdown"
)

// Recovery is what Restore writes for PostgreSQL's archive recovery:
// recovery.signal and these settings, appended to postgresql.auto.conf.
type Recovery struct {
	// RestoreCommand is restore_command, e.g.
	// "barnacle wal-fetch --config /etc/barnacle.yaml %f %p". Required.
	RestoreCommand string
	// RecoveryEndCommand is recovery_end_command; "" writes none.
	RecoveryEndCommand string
	// Target is where recovery stops; the zero value is the end of WAL.
	Target Target
	// Timeline is recovery_target_timeline; the zero value is latest.
	Timeline TimelineTarget
	// Action is recovery_target_action: ActionPause, ActionPromote or
	// ActionShutdown; "" leaves PostgreSQL's default (pause). It is only
	// written with a target, as PostgreSQL ignores it otherwise.
	Action string
	// Inclusive is recovery_target_inclusive when not nil (time, LSN and
	// xid targets only).
	Inclusive *bool
}

// targetParams are the recovery_target* settings that select a target;
// PostgreSQL refuses to start when more than one is set.
var targetParams = []string{
	"recovery_target", "recovery_target_lsn", "recovery_target_name",
	"recovery_target_time", "recovery_target_xid",
}

// RenderRecoverySettings returns the postgresql.conf lines for r, each
// "name = 'value'" with the value quoted for postgresql.conf (single quotes
// and backslashes doubled). Every recovery_target* setting that does not
// carry the target is reset to the empty string first: an earlier value in the same file
// (a backup of a server that was itself restored) would otherwise make
// PostgreSQL refuse to start with two targets. It is pure; it returns an
// error for a missing restore command, an invalid target or action, and a
// value with a newline or NUL, which postgresql.conf cannot hold.
func RenderRecoverySettings(r Recovery) (string, error) {
	if strings.TrimSpace(r.RestoreCommand) == "" {
		return "", errors.New("restore: recovery settings: restore command is empty")
	}
	if err := checkConfValue(r.RestoreCommand); err != nil {
		return "", fmt.Errorf("restore: recovery settings: restore command: %w", err)
	}
	if err := r.Target.Validate(); err != nil {
		return "", err
	}
	switch r.Action {
	case "", ActionPause, ActionPromote, ActionShutdown:
	default:
		return "", fmt.Errorf("restore: recovery settings: target action %q: want pause, promote or shutdown", r.Action)
	}
	if r.Timeline.Mode == TimelineExplicit && r.Timeline.Timeline == 0 {
		return "", errors.New("restore: recovery settings: target timeline 0 is not a timeline")
	}
	if r.Inclusive != nil {
		switch r.Target.Kind {
		case TargetTime, TargetLSN, TargetXID:
		default:
			return "", fmt.Errorf("restore: recovery settings: inclusive applies to time, LSN and xid targets, not to %s", r.Target.Kind)
		}
	}

	var b strings.Builder
	line := func(name, value string) { fmt.Fprintf(&b, "%s = %s\n", name, quoteConf(value)) }
	line("restore_command", r.RestoreCommand)
	name, value := "", ""
	switch r.Target.Kind {
	case TargetTime:
		// ISO 8601 with an explicit offset: timestamptz input reads it the
		// same whatever the server's TimeZone is.
		name, value = "recovery_target_time", r.Target.Time.UTC().Format("2006-01-02 15:04:05.999999-07:00")
	case TargetLSN:
		name, value = "recovery_target_lsn", r.Target.LSN.String()
	case TargetXID:
		name, value = "recovery_target_xid", r.Target.XID
	case TargetName:
		name, value = "recovery_target_name", r.Target.Name
	case TargetImmediate:
		name, value = "recovery_target", "immediate"
	}
	for _, p := range targetParams {
		if p != name {
			line(p, "")
		}
	}
	if name != "" {
		line(name, value)
	}
	line("recovery_target_timeline", r.Timeline.String())
	if r.RecoveryEndCommand != "" {
		if err := checkConfValue(r.RecoveryEndCommand); err != nil {
			return "", fmt.Errorf("restore: recovery settings: recovery end command: %w", err)
		}
		line("recovery_end_command", r.RecoveryEndCommand)
	}
	if r.Target.Kind != TargetEnd && r.Action != "" {
		line("recovery_target_action", r.Action)
	}
	if r.Inclusive != nil {
		line("recovery_target_inclusive", fmt.Sprintf("%t", *r.Inclusive))
	}
	// The source's archive_cleanup_command (a standby's pg_archivecleanup)
	// would run at every restartpoint of the restored server and delete
	// WAL from an archive it names; barnacle's archive keeps its own
	// retention, so a restored server never cleans any.
	line("archive_cleanup_command", "")
	return b.String(), nil
}

// quoteConf quotes s as a postgresql.conf string value: the parser
// (GUC_scanstr) turns two single quotes into one and processes backslash escapes, so both
// are doubled.
func quoteConf(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// checkConfValue rejects what a postgresql.conf line cannot hold literally.
func checkConfValue(s string) error {
	if strings.ContainsAny(s, "\n\r\x00") {
		return errors.New("contains a newline or NUL, which postgresql.conf cannot hold")
	}
	return nil
}

// settingsHeader starts the block Restore appends to postgresql.auto.conf.
func settingsHeader(backupID string, now time.Time) string {
	return fmt.Sprintf("\n# recovery settings written by barnacle restore of backup %s at %s\n",
		backupID, now.UTC().Format(time.RFC3339))
}
