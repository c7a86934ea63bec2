package main

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/retention"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func TestRecoverableWindows(t *testing.T) {
	const seg = 16 << 20
	stop := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	backup := catalog.Backup{ID: "b1", Status: catalog.StatusDone, StopTimeline: 1, StopLSN: "0/3000100", StopTime: stop}
	files := func(names ...string) []retention.WALFile {
		var out []retention.WALFile
		for _, n := range names {
			out = append(out, retention.WALFile{Name: n, Size: seg})
		}
		return out
	}
	hist2 := []wal.HistoryEntry{{Timeline: 1, SwitchPoint: 0x5000200}}
	cases := []struct {
		name string
		in   retention.Input
		gaps []catalog.Gap
		want []timelineWindow
	}{
		{"no backup", retention.Input{WALSegmentSize: seg, WAL: files("000000010000000000000003")}, nil, []timelineWindow{}},
		{"one timeline to a partial", retention.Input{
			WALSegmentSize: seg, Backups: []catalog.Backup{backup},
			WAL: append(files("000000010000000000000003", "000000010000000000000004"),
				retention.WALFile{Name: "000000010000000000000005.partial", Size: 0x1000}),
		}, nil, []timelineWindow{{Timeline: 1, From: "0/3000100", FromTime: &stop, To: "0/5001000"}}},
		{"hole", retention.Input{
			WALSegmentSize: seg, Backups: []catalog.Backup{backup},
			WAL: files("000000010000000000000003", "000000010000000000000005"),
		}, nil, []timelineWindow{{Timeline: 1, From: "0/3000100", FromTime: &stop, To: "0/4000000", StopsAt: "missing 000000010000000000000004"}}},
		{"backup wal missing", retention.Input{
			WALSegmentSize: seg, Backups: []catalog.Backup{backup}, WAL: files("000000010000000000000004"),
		}, nil, []timelineWindow{{Timeline: 1, From: "0/3000100", FromTime: &stop, To: "0/3000100", StopsAt: "missing 000000010000000000000003"}}},
		{"recorded gap", retention.Input{
			WALSegmentSize: seg, Backups: []catalog.Backup{backup}, WAL: files("000000010000000000000003", "000000010000000000000004"),
		}, []catalog.Gap{{Timeline: 1, StartLSN: "0/4000000", EndLSN: "0/4800000"}},
			[]timelineWindow{{Timeline: 1, From: "0/3000100", FromTime: &stop, To: "0/4000000", StopsAt: "recorded gap 0/4000000..0/4800000"}}},
		{"second timeline", retention.Input{
			WALSegmentSize: seg, Backups: []catalog.Backup{backup},
			Histories: map[wal.Timeline][]wal.HistoryEntry{2: hist2},
			WAL: append(files("000000010000000000000003", "000000010000000000000004", "00000002.history",
				"000000020000000000000005", "000000020000000000000006.zst"),
				retention.WALFile{Name: "000000010000000000000005.partial", Size: 0x200}),
		}, nil, []timelineWindow{
			{Timeline: 1, From: "0/3000100", FromTime: &stop, To: "0/5000200"},
			{Timeline: 2, From: "0/5000200", To: "0/7000000"},
		}},
		{"timeline that branched before the backup", retention.Input{
			WALSegmentSize: seg, Backups: []catalog.Backup{backup},
			Histories: map[wal.Timeline][]wal.HistoryEntry{2: {{Timeline: 1, SwitchPoint: 0x2000000}}},
			WAL:       files("000000010000000000000003", "000000020000000000000002"),
		}, nil, []timelineWindow{{Timeline: 1, From: "0/3000100", FromTime: &stop, To: "0/4000000"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, recoverableWindows(tc.in, tc.gaps))
		})
	}
}

func TestDescribeMasterError(t *testing.T) {
	cfg := config.Default()
	cfg.PGUser = "repl"
	refused := fmt.Errorf("connect: %w", &pgconn.PgError{Code: "28P01", Message: `password authentication failed for user "repl"`})
	got := describeMasterError(refused, cfg, "10.0.0.5:5432")
	assert.Contains(t, got, "refused to authenticate \"repl\"")
	assert.Contains(t, got, "--pg-password-file")
	assert.NotContains(t, got, "unreachable")

	cfg.PGUser = ""
	noHBA := &pgconn.PgError{Code: "28000", Message: `no pg_hba.conf entry for replication connection from host "10.0.0.9", user "root"`}
	assert.Contains(t, describeMasterError(noHBA, cfg, "10.0.0.5:5432"), "pg-user is not set")

	got = describeMasterError(errors.New("dial tcp 10.0.0.5:5432: connect: connection refused"), cfg, "10.0.0.5:5432")
	assert.Contains(t, got, "master at 10.0.0.5:5432 unreachable: dial tcp")
}
