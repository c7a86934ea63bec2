package restore

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
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

// TargetSpec is a recovery target as text, the way the CLI's --target-*
// flags, a restore request in etcd and Stolon's recoveryTargetSettings give
// it. Parse is the one reader of these values, so every entry point accepts
// the same forms.
type TargetSpec struct {
	Time, LSN, XID, Name string
	Immediate            bool
	// Exclusive stops just before the target instead of just after it
	// (recovery_target_inclusive = off); time, LSN and xid targets only.
	Exclusive bool
}

// Parse checks the spec and returns its Target and, for Exclusive, the
// recovery_target_inclusive value to write (nil leaves PostgreSQL's
// default, on). name turns a field ("time", "lsn", "xid", "name",
// "immediate", "exclusive") into what the caller calls it in messages, such
// as "--target-time" or "target.time"; nil uses "target <field>".
func (s TargetSpec) Parse(name func(field string) string) (Target, *bool, error) {
	if name == nil {
		name = func(f string) string { return "target " + f }
	}
	var set []string
	for _, f := range []struct {
		field string
		set   bool
	}{{"time", s.Time != ""}, {"lsn", s.LSN != ""}, {"xid", s.XID != ""}, {"name", s.Name != ""}, {"immediate", s.Immediate}} {
		if f.set {
			set = append(set, name(f.field))
		}
	}
	if len(set) > 1 {
		return Target{}, nil, fmt.Errorf("%s are given together: keep one target", strings.Join(set, " and "))
	}
	var t Target
	switch {
	case s.Time != "":
		tm, err := ParseTargetTime(s.Time)
		if err != nil {
			return t, nil, fmt.Errorf("%s %q: %w", name("time"), s.Time, err)
		}
		t = Target{Kind: TargetTime, Time: tm}
	case s.LSN != "":
		lsn, err := wal.ParseLSN(s.LSN)
		if err != nil || lsn == wal.InvalidLSN {
			return t, nil, fmt.Errorf("%s %q: use PostgreSQL's form, like 0/3000060", name("lsn"), s.LSN)
		}
		t = Target{Kind: TargetLSN, LSN: lsn}
	case s.XID != "":
		t = Target{Kind: TargetXID, XID: s.XID}
		if v, err := strconv.ParseUint(s.XID, 10, 64); err != nil || v == 0 {
			return t, nil, fmt.Errorf("%s %q: use a positive decimal transaction ID, as txid_current() shows it", name("xid"), s.XID)
		}
	case s.Name != "":
		t = Target{Kind: TargetName, Name: s.Name}
	case s.Immediate:
		t.Kind = TargetImmediate
	}
	if err := t.Validate(); err != nil {
		return t, nil, err
	}
	if !s.Exclusive {
		return t, nil, nil
	}
	switch t.Kind {
	case TargetTime, TargetLSN, TargetXID:
	default:
		return t, nil, fmt.Errorf("%s applies to a time, LSN or xid target, not to %s: drop it or give one of those", name("exclusive"), t.Kind)
	}
	off := false
	return t, &off, nil
}

// targetTimeLayouts are the timestamptz forms ParseTargetTime reads, after
// the date/time separator is made a space: PostgreSQL's own output
// ('2026-11-25 10:00:00+00', what Stolon's recoveryTargetTime is usually
// given), RFC 3339, offsets as +hh, +hhmm or +hh:mm with or without a space
// before them, and minutes without seconds. Fractional seconds need no
// layout of their own (time.Parse accepts them after the seconds).
var targetTimeLayouts = func() []string {
	var l []string
	for _, clock := range []string{"15:04:05", "15:04"} {
		for _, sp := range []string{"", " "} {
			for _, zone := range []string{"Z07:00", "Z0700", "Z07"} {
				l = append(l, "2006-01-02 "+clock+sp+zone)
			}
		}
	}
	return l
}()

// ParseTargetTime reads a recovery target time in RFC 3339 or in
// PostgreSQL's timestamptz form, with a zone: an offset, Z, UTC or GMT. A
// time without a zone is refused, as PostgreSQL would read it in the
// server's TimeZone, which the caller may not know; so are zone names other
// than UTC and GMT, whose offsets depend on a time zone database.
func ParseTargetTime(s string) (time.Time, error) {
	v := strings.TrimSpace(s)
	if u := strings.ToUpper(v); strings.HasSuffix(u, "UTC") || strings.HasSuffix(u, "GMT") {
		v = strings.TrimSpace(v[:len(v)-3]) + "Z"
	}
	if strings.HasSuffix(v, "z") {
		v = v[:len(v)-1] + "Z"
	}
	if len(v) > 10 && (v[10] == 'T' || v[10] == 't') {
		v = v[:10] + " " + v[11:]
	}
	for _, layout := range targetTimeLayouts {
		if t, err := time.Parse(layout, v); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, errors.New("use RFC 3339 or PostgreSQL's form, with a zone: 2026-11-25T10:00:00Z or '2026-11-25 10:00:00+00'")
}
