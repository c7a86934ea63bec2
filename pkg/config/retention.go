package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// RetentionPolicy is retention-policy in Barman's grammar: "REDUNDANCY N"
// keeps the N newest done backups; "RECOVERY WINDOW OF N DAYS|WEEKS|MONTHS"
// keeps what is needed to recover to any moment of that window. The zero
// value keeps everything.
type RetentionPolicy struct {
	spec string
	// Redundancy is N of REDUNDANCY N, or 0 for a recovery window.
	Redundancy int
	// Window is the recovery window as a count of Unit; 0 for redundancy.
	Window int
	// Unit is "DAYS", "WEEKS" or "MONTHS" for a recovery window.
	Unit string
}

var (
	redundancyRE = regexp.MustCompile(`(?i)^REDUNDANCY\s+(\d+)$`)
	windowRE     = regexp.MustCompile(`(?i)^RECOVERY\s+WINDOW\s+OF\s+(\d+)\s+(DAY|DAYS|WEEK|WEEKS|MONTH|MONTHS)$`)
)

// ParseRetentionPolicy parses a retention-policy value, case-insensitively.
func ParseRetentionPolicy(v string) (RetentionPolicy, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return RetentionPolicy{}, nil
	}
	if m := redundancyRE.FindStringSubmatch(v); m != nil {
		n, err := strconv.Atoi(m[1])
		if err != nil || n < 1 {
			return RetentionPolicy{}, fmt.Errorf("invalid policy %q: REDUNDANCY needs a number of backups of 1 or more", v)
		}
		return RetentionPolicy{spec: v, Redundancy: n}, nil
	}
	if m := windowRE.FindStringSubmatch(v); m != nil {
		n, err := strconv.Atoi(m[1])
		if err != nil || n < 1 {
			return RetentionPolicy{}, fmt.Errorf("invalid policy %q: the recovery window needs a length of 1 or more", v)
		}
		unit := strings.ToUpper(m[2])
		if !strings.HasSuffix(unit, "S") {
			unit += "S"
		}
		return RetentionPolicy{spec: v, Window: n, Unit: unit}, nil
	}
	return RetentionPolicy{}, fmt.Errorf(`invalid policy %q: use "REDUNDANCY 3" or "RECOVERY WINDOW OF 7 DAYS" (DAYS, WEEKS or MONTHS)`, v)
}

// IsZero reports whether no retention policy is set (keep everything).
func (p RetentionPolicy) IsZero() bool { return p.Redundancy == 0 && p.Window == 0 }

// String returns the policy as the user wrote it.
func (p RetentionPolicy) String() string { return p.spec }

// WindowStart returns the oldest moment a recovery-window policy must keep
// recoverable at now; the zero time for a redundancy policy.
func (p RetentionPolicy) WindowStart(now time.Time) time.Time {
	switch p.Unit {
	case "DAYS":
		return now.AddDate(0, 0, -p.Window)
	case "WEEKS":
		return now.AddDate(0, 0, -7*p.Window)
	case "MONTHS":
		return now.AddDate(0, -p.Window, 0)
	}
	return time.Time{}
}

// ParseSize parses a byte size with PostgreSQL's units (B, kB, MB, GB, TB,
// powers of 1024), as in "64MB"; a bare number is bytes.
func ParseSize(v string) (int64, error) {
	v = strings.TrimSpace(v)
	units := []struct {
		suffix string
		mult   int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"B", 1}}
	mult := int64(1)
	num := v
	for _, u := range units {
		if strings.HasSuffix(v, u.suffix) {
			mult, num = u.mult, strings.TrimSpace(strings.TrimSuffix(v, u.suffix))
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("invalid size %q: use a number with B, kB, MB, GB or TB, e.g. 64MB", v)
	}
	return n * mult, nil
}

// FormatSize prints a byte size the way ParseSize reads it, in the largest
// unit that divides it.
func FormatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}
