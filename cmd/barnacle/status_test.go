package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
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
