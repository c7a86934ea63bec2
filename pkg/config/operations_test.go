package config

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseSchedule(t *testing.T) {
	last := time.Date(2026, 11, 25, 1, 30, 0, 0, time.UTC)
	cases := []struct {
		spec string
		next time.Time
	}{
		{"24h", last.Add(24 * time.Hour)},
		{"90m", last.Add(90 * time.Minute)},
		{"0 2 * * *", time.Date(2026, 11, 25, 2, 0, 0, 0, time.UTC)},
		{"@daily", time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)},
		{"30 1 * * 0", time.Date(2026, 11, 29, 1, 30, 0, 0, time.UTC)}, // next Sunday
	}
	for _, c := range cases {
		t.Run(c.spec, func(t *testing.T) {
			s, err := ParseSchedule(c.spec)
			require.NoError(t, err)
			assert.False(t, s.IsZero())
			assert.Equal(t, c.spec, s.String())
			assert.Equal(t, c.next, s.Next(last))
			assert.True(t, s.Next(time.Time{}).IsZero(), "no backup yet: due at once")
		})
	}
	for _, bad := range []string{"500ms", "every day", "61 * * * *", "* * *"} {
		_, err := ParseSchedule(bad)
		assert.Error(t, err, bad)
	}
	z, err := ParseSchedule("")
	require.NoError(t, err)
	assert.True(t, z.IsZero())
}

func TestParseRetentionPolicy(t *testing.T) {
	now := time.Date(2026, 3, 31, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		spec       string
		redundancy int
		start      time.Time
	}{
		{"REDUNDANCY 3", 3, time.Time{}},
		{"redundancy   1", 1, time.Time{}},
		{"RECOVERY WINDOW OF 7 DAYS", 0, now.AddDate(0, 0, -7)},
		{"recovery window of 1 day", 0, now.AddDate(0, 0, -1)},
		{"Recovery Window Of 2 WEEKS", 0, now.AddDate(0, 0, -14)},
		{"RECOVERY WINDOW OF 1 MONTH", 0, now.AddDate(0, -1, 0)},
	}
	for _, c := range cases {
		t.Run(c.spec, func(t *testing.T) {
			p, err := ParseRetentionPolicy(c.spec)
			require.NoError(t, err)
			assert.Equal(t, c.redundancy, p.Redundancy)
			assert.Equal(t, c.start, p.WindowStart(now))
		})
	}
	for _, bad := range []string{"REDUNDANCY 0", "REDUNDANCY", "RECOVERY WINDOW OF 7 YEARS", "RECOVERY WINDOW 7 DAYS", "keep 3"} {
		_, err := ParseRetentionPolicy(bad)
		assert.Error(t, err, bad)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512B": 512, "64MB": 64 << 20, "16 kB": 16 << 10, "2GB": 2 << 30, "1TB": 1 << 40} {
		got, err := ParseSize(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "lots", "-1MB", "1.5GB", "64mb"} {
		_, err := ParseSize(bad)
		assert.Error(t, err, bad)
	}
	assert.Equal(t, "64MB", FormatSize(64<<20))
	assert.Equal(t, "1000B", FormatSize(1000))
}

func TestRestoreDrillKeys(t *testing.T) {
	c, err := Load(Sources{Env: noEnv, Flags: map[string]string{"cluster-name": "c",
		"restore-drill-schedule": "@weekly", "restore-drill-max-age": "192h", "restore-drill-on-master": "true",
		"pg-bin-dir": "/usr/lib/postgresql/15/bin", "restore-drill-superuser": "stolon"}}, Needs{})
	require.NoError(t, err)
	assert.Equal(t, "stolon", c.RestoreDrillSuperuser)
	assert.Equal(t, "@weekly", c.RestoreDrillSchedule.String())
	assert.Equal(t, 192*time.Hour, c.RestoreDrillMaxAge)
	assert.True(t, c.RestoreDrillOnMaster)
	assert.Equal(t, "/usr/lib/postgresql/15/bin", c.PGBinDir)

	// Off by default: no schedule, no age check, not on the master.
	d, err := Load(Sources{Env: noEnv, Flags: map[string]string{"cluster-name": "c"}}, Needs{})
	require.NoError(t, err)
	assert.True(t, d.RestoreDrillSchedule.IsZero())
	assert.Zero(t, d.RestoreDrillMaxAge)
	assert.False(t, d.RestoreDrillOnMaster)
	assert.Empty(t, d.RestoreDrillSuperuser, "empty: the drill tries the server's OS user, then postgres")

	for key, bad := range map[string]string{"restore-drill-schedule": "500ms", "restore-drill-max-age": "-1h", "pg-bin-dir": "bin",
		"restore-drill-superuser": strings.Repeat("s", 64)} {
		_, err := Load(Sources{Env: noEnv, Flags: map[string]string{"cluster-name": "c", key: bad}}, Needs{})
		require.Error(t, err, key)
		assert.Contains(t, err.Error(), key)
		assert.True(t, IsConfigError(err))
	}
}
