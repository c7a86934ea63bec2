package restore

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// TargetKind says where recovery stops.
type TargetKind int

// Recovery target kinds, one per PostgreSQL recovery_target* setting.
const (
	// TargetEnd recovers to the end of the archived WAL (no target set).
	TargetEnd TargetKind = iota
	// TargetTime stops at Target.Time (recovery_target_time).
	TargetTime
	// TargetLSN stops at Target.LSN (recovery_target_lsn).
	TargetLSN
	// TargetXID stops at transaction Target.XID (recovery_target_xid).
	TargetXID
	// TargetName stops at the restore point Target.Name
	// (recovery_target_name, created by pg_create_restore_point).
	TargetName
	// TargetImmediate stops as soon as the backup is consistent
	// (recovery_target = 'immediate').
	TargetImmediate
)

// String returns the kind as the CLI's flag suffix spells it.
func (k TargetKind) String() string {
	switch k {
	case TargetEnd:
		return "end of WAL"
	case TargetTime:
		return "time"
	case TargetLSN:
		return "lsn"
	case TargetXID:
		return "xid"
	case TargetName:
		return "name"
	case TargetImmediate:
		return "immediate"
	}
	return "TargetKind(" + strconv.Itoa(int(k)) + ")"
}

// Target is where recovery should stop. Only the field that belongs to Kind
// is used; the zero value is the end of the archived WAL.
type Target struct {
	Kind TargetKind
	Time time.Time
	LSN  wal.LSN
	// XID is a transaction ID in decimal, as recovery_target_xid takes it
	// (epoch-qualified 64-bit values are accepted too).
	XID  string
	Name string
}

// Validate reports a Target whose value does not suit its Kind: a zero
// time, an invalid LSN, an XID that is not a positive decimal number, an
// empty or newline-containing name.
func (t Target) Validate() error {
	switch t.Kind {
	case TargetEnd, TargetImmediate:
		return nil
	case TargetTime:
		if t.Time.IsZero() {
			return errors.New("restore: target time is not set")
		}
	case TargetLSN:
		if t.LSN == wal.InvalidLSN {
			return errors.New("restore: target LSN 0/0 is not a valid WAL position")
		}
	case TargetXID:
		v, err := strconv.ParseUint(t.XID, 10, 64)
		if err != nil || v == 0 {
			return fmt.Errorf("restore: target xid %q is not a positive decimal transaction ID", t.XID)
		}
	case TargetName:
		if t.Name == "" {
			return errors.New("restore: target name is empty")
		}
		if err := checkConfValue(t.Name); err != nil {
			return fmt.Errorf("restore: target name: %w", err)
		}
	default:
		return fmt.Errorf("restore: unknown target kind %d", int(t.Kind))
	}
	return nil
}

// String describes the target for messages ("time 2026-11-25T10:00:00Z").
func (t Target) String() string {
	switch t.Kind {
	case TargetTime:
		return "time " + t.Time.UTC().Format(time.RFC3339Nano)
	case TargetLSN:
		return "LSN " + t.LSN.String()
	case TargetXID:
		return "xid " + t.XID
	case TargetName:
		return "restore point " + strconv.Quote(t.Name)
	}
	return t.Kind.String()
}

// TimelineMode is how the recovery target timeline is chosen.
type TimelineMode int

// Timeline modes, as recovery_target_timeline spells them.
const (
	// TimelineLatest follows the newest timeline found in the archive
	// (PostgreSQL's default since version 12).
	TimelineLatest TimelineMode = iota
	// TimelineCurrent stays on the backup's own timeline.
	TimelineCurrent
	// TimelineExplicit recovers along TimelineTarget.Timeline.
	TimelineExplicit
)

// TimelineTarget is recovery_target_timeline. The zero value is latest.
type TimelineTarget struct {
	Mode TimelineMode
	// Timeline is the timeline for TimelineExplicit; unused otherwise.
	Timeline wal.Timeline
}

// ParseTimelineTarget parses "latest", "current" or a timeline number
// (decimal, or hexadecimal with 0x as PostgreSQL accepts); "" is latest.
func ParseTimelineTarget(s string) (TimelineTarget, error) {
	switch s {
	case "", "latest":
		return TimelineTarget{Mode: TimelineLatest}, nil
	case "current":
		return TimelineTarget{Mode: TimelineCurrent}, nil
	}
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil || v == 0 {
		return TimelineTarget{}, fmt.Errorf("restore: target timeline %q: want latest, current or a timeline number above 0", s)
	}
	return TimelineTarget{Mode: TimelineExplicit, Timeline: wal.Timeline(v)}, nil
}

// String returns the value recovery_target_timeline takes.
func (tt TimelineTarget) String() string {
	switch tt.Mode {
	case TimelineCurrent:
		return "current"
	case TimelineExplicit:
		return strconv.FormatUint(uint64(tt.Timeline), 10)
	}
	return "latest"
}
