package agent

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

func TestHint(t *testing.T) {
	cfg := config.Default()
	cfg.PGUser = "barnacle"
	cases := []struct {
		code, want string
	}{
		{"42501", "ALTER ROLE barnacle REPLICATION"},
		{"28000", "host replication barnacle"},
		{"28P01", "pg-password-file"},
		{"53400", "max_wal_senders"},
		{"55006", "slot barnacle is in use"},
		{"58P01", ""},
	}
	for _, tc := range cases {
		t.Run(tc.code, func(t *testing.T) {
			err := fmt.Errorf("connect: %w", &pgconn.PgError{Code: tc.code})
			got := hint(err, cfg)
			if tc.want == "" {
				assert.Empty(t, got)
				return
			}
			assert.Contains(t, got, tc.want)
		})
	}
	assert.Empty(t, hint(errors.New("connection refused"), cfg))
}

func TestBackfillDone(t *testing.T) {
	const seg = 16 << 20
	sameTimeline := walstream.Gap{Timeline: 1, From: 3 * seg, ResumeTimeline: 1, ResumeAt: 9 * seg}
	failover := walstream.Gap{Timeline: 1, From: 3 * seg, ResumeTimeline: 2, ResumeAt: 5 * seg}
	cases := []struct {
		name string
		gap  walstream.Gap
		p    walstream.Progress
		want bool
	}{
		{"same timeline, before the master's oldest wal", sameTimeline, walstream.Progress{Timeline: 1, Flushed: 8*seg + 100}, false},
		{"same timeline, at the master's oldest wal", sameTimeline, walstream.Progress{Timeline: 1, Flushed: 9 * seg}, true},
		{"same timeline, past it", sameTimeline, walstream.Progress{Timeline: 1, Flushed: 9*seg + 5}, true},
		{"old timeline still", failover, walstream.Progress{Timeline: 1, Flushed: 4*seg + 7}, false},
		{"master's timeline, before its oldest wal", failover, walstream.Progress{Timeline: 2, Flushed: 4 * seg}, false},
		{"master's timeline, at its oldest wal", failover, walstream.Progress{Timeline: 2, Flushed: 5 * seg}, true},
		{"source beyond the master's timeline", failover, walstream.Progress{Timeline: 3, Flushed: 4 * seg}, true},
		{"source left the gap's timeline for one before the master's",
			walstream.Gap{Timeline: 1, From: 3 * seg, ResumeTimeline: 3, ResumeAt: 9 * seg}, walstream.Progress{Timeline: 2, Flushed: 4 * seg}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, backfillDone(tc.gap, tc.p))
		})
	}
}

func TestUnresolvedGap(t *testing.T) {
	gap := catalog.Gap{Timeline: 1, StartLSN: 0x3000000, EndLSN: 0x9000000}
	backup := func(status catalog.BackupStatus, tli wal.Timeline, start wal.LSN) catalog.Backup {
		return catalog.Backup{Status: status, StartTimeline: tli, StartLSN: start}
	}
	cases := []struct {
		name    string
		gaps    []catalog.Gap
		backups []catalog.Backup
		want    bool
	}{
		{"no gap", nil, nil, false},
		{"gap, no backup", []catalog.Gap{gap}, nil, true},
		{"only a backup before the gap", []catalog.Gap{gap}, []catalog.Backup{backup(catalog.StatusDone, 1, 0x2000028)}, true},
		{"a backup after the gap still running", []catalog.Gap{gap}, []catalog.Backup{backup(catalog.StatusRunning, 1, 0xA000028)}, true},
		{"a backup after the gap failed", []catalog.Gap{gap}, []catalog.Backup{backup(catalog.StatusFailed, 1, 0xA000028)}, true},
		{"a backup starting inside the gap", []catalog.Gap{gap}, []catalog.Backup{backup(catalog.StatusDone, 1, 0x8000028)}, true},
		{"a done backup after the gap", []catalog.Gap{gap}, []catalog.Backup{backup(catalog.StatusDone, 1, 0xA000028)}, false},
		{"a done backup after the gap on the next timeline", []catalog.Gap{gap}, []catalog.Backup{backup(catalog.StatusDone, 2, 0x9000028)}, false},
		{"an older gap resolved, a newer one not",
			[]catalog.Gap{gap, {Timeline: 2, StartLSN: 0xB000000, EndLSN: 0xF000000}},
			[]catalog.Backup{backup(catalog.StatusDone, 1, 0xA000028)}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, got := unresolvedGap(tc.gaps, tc.backups)
			assert.Equal(t, tc.want, got)
		})
	}
	g, _ := unresolvedGap([]catalog.Gap{gap}, nil)
	assert.Contains(t, gapAlarm(g), "wal gap 0/3000000..0/9000000 on timeline 1")
}
