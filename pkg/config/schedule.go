package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Schedule is backup-schedule: either an interval (a Go duration: a backup
// is due once the newest one started that long ago) or a cron expression
// (standard five fields or a descriptor such as @daily, in UTC: a backup is
// due at each time the expression names). The zero Schedule never fires.
type Schedule struct {
	spec  string
	every time.Duration
	cron  cron.Schedule
}

// ParseSchedule parses a backup-schedule value. A value that parses as a Go
// duration is an interval; anything else must be a cron expression.
func ParseSchedule(v string) (Schedule, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return Schedule{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		if d < time.Second {
			return Schedule{}, fmt.Errorf("%s is not a useful interval: use 1s or more, e.g. 24h", d)
		}
		return Schedule{spec: v, every: d}, nil
	}
	c, err := cron.ParseStandard(v)
	if err != nil {
		return Schedule{}, fmt.Errorf("invalid schedule %q: use an interval such as 24h, or a cron expression such as \"0 2 * * *\" (minute hour day month weekday, UTC) or @daily (%v)", v, err)
	}
	return Schedule{spec: v, cron: c}, nil
}

// IsZero reports whether no schedule is set (backups only on request).
func (s Schedule) IsZero() bool { return s.every == 0 && s.cron == nil }

// String returns the schedule as the user wrote it.
func (s Schedule) String() string { return s.spec }

// Interval returns the interval of an interval schedule, or 0 for a cron
// one. Callers use it to pick how often to look at the schedule.
func (s Schedule) Interval() time.Duration { return s.every }

// Next returns when the backup after one that started at last is due: last
// plus the interval, or the cron expression's first time after last (UTC).
// A zero last (no backup yet) is due at once.
func (s Schedule) Next(last time.Time) time.Time {
	switch {
	case s.IsZero():
		return time.Time{}
	case last.IsZero():
		return last
	case s.every > 0:
		return last.Add(s.every)
	default:
		return s.cron.Next(last.UTC())
	}
}
