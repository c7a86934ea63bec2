package restore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func TestParseTargetTime(t *testing.T) {
	utc := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"2026-11-25T10:00:00Z", utc},
		{"2026-11-25t10:00:00z", utc},
		{"2026-11-25 10:00:00+00", utc},
		{"2026-11-25 10:00:00+00:00", utc},
		{"2026-11-25 10:00:00 +0000", utc},
		{"2026-11-25 10:00:00 UTC", utc},
		{"2026-11-25 10:00:00gmt", utc},
		{"2026-11-25 10:00+00", utc},
		{"2026-11-25 11:30:00+01:30", utc},
		{"2026-11-25 05:00:00-05", utc},
		{"2026-11-25T10:00:00.123456+00:00", utc.Add(123456 * time.Microsecond)},
		{"2026-11-25 10:00:00.5+00", utc.Add(500 * time.Millisecond)},
		{"  2026-11-25 10:00:00+00 ", utc},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTargetTime(tc.in)
			require.NoError(t, err)
			assert.True(t, tc.want.Equal(got), "got %s", got)
		})
	}
	for _, in := range []string{
		"", "2026-11-25", "2026-11-25 10:00:00", "2026-11-25T10:00:00", "2026-11-25 10:00:00 CET",
		"2026-11-25 10:00:00 Europe/Paris", "25/11/2026 10:00:00+00", "yesterday", "2026-13-25 10:00:00+00",
	} {
		t.Run("refused "+in, func(t *testing.T) {
			_, err := ParseTargetTime(in)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "with a zone")
		})
	}
}

func TestTargetSpecParse(t *testing.T) {
	flag := func(f string) string { return "--target-" + f }
	off := false
	for _, tc := range []struct {
		name      string
		spec      TargetSpec
		want      Target
		inclusive *bool
		err       string
	}{
		{name: "none is the end of WAL", want: Target{Kind: TargetEnd}},
		{name: "postgres time", spec: TargetSpec{Time: "2026-11-25 10:00:00+00"}, want: Target{Kind: TargetTime, Time: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)}},
		{name: "lsn exclusive", spec: TargetSpec{LSN: "0/3000060", Exclusive: true}, want: Target{Kind: TargetLSN, LSN: wal.LSN(0x3000060)}, inclusive: &off},
		{name: "xid", spec: TargetSpec{XID: "742"}, want: Target{Kind: TargetXID, XID: "742"}},
		{name: "name", spec: TargetSpec{Name: "before_upgrade"}, want: Target{Kind: TargetName, Name: "before_upgrade"}},
		{name: "immediate", spec: TargetSpec{Immediate: true}, want: Target{Kind: TargetImmediate}},
		{name: "two targets", spec: TargetSpec{Time: "2026-11-25T10:00:00Z", LSN: "0/1"}, err: "--target-time and --target-lsn are given together"},
		{name: "bad time", spec: TargetSpec{Time: "2026-11-25 10:00:00"}, err: `--target-time "2026-11-25 10:00:00": use RFC 3339`},
		{name: "bad lsn", spec: TargetSpec{LSN: "3000060"}, err: `--target-lsn "3000060"`},
		{name: "zero lsn", spec: TargetSpec{LSN: "0/0"}, err: `--target-lsn "0/0"`},
		{name: "bad xid", spec: TargetSpec{XID: "-1"}, err: `--target-xid "-1"`},
		{name: "name with newline", spec: TargetSpec{Name: "a\nb"}, err: "newline"},
		{name: "exclusive without target", spec: TargetSpec{Exclusive: true}, err: "--target-exclusive applies to a time, LSN or xid target, not to end of WAL"},
		{name: "exclusive restore point", spec: TargetSpec{Name: "p", Exclusive: true}, err: "--target-exclusive applies"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, inclusive, err := tc.spec.Parse(flag)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.inclusive, inclusive)
		})
	}
}
