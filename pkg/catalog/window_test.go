package catalog

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func TestRecoverableWindows(t *testing.T) {
	stop := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	written := time.Date(2026, 11, 24, 18, 0, 0, 0, time.UTC)
	backup := Backup{ID: "b1", Status: StatusDone, StopTimeline: 1, StopLSN: 0x3000100, StopTime: stop}
	// archive lists names (size: a segment, or n for "name=n").
	archive := func(backups []Backup, hist map[wal.Timeline][]wal.HistoryEntry, gaps []Gap, names ...string) Archive {
		ix := index(names...)
		var objs []storage.ObjectInfo
		for _, o := range ix.Segments() {
			objs = append(objs, storage.ObjectInfo{Name: o.Key, Size: o.Size, ModTime: written})
		}
		for _, h := range ix.Histories() {
			objs = append(objs, storage.ObjectInfo{Name: h.Key, Size: h.Size})
		}
		return Archive{SegmentSize: segSize, Backups: backups, Histories: hist, Gaps: gaps, WAL: IndexWAL(objs, "c/wals/", segSize)}
	}
	one := []Backup{backup}
	hist2 := map[wal.Timeline][]wal.HistoryEntry{2: {{Timeline: 1, SwitchPoint: 0x5000200}}}
	for _, tc := range []struct {
		name string
		in   Archive
		want []Window
	}{
		{"no backup", archive(nil, nil, nil, seg(1, 3)), []Window{}},
		{"one timeline to a partial", archive(one, nil, nil, seg(1, 3), seg(1, 4), seg(1, 5)+".partial=4096"),
			[]Window{{Timeline: 1, FromLSN: 0x3000100, FromTime: stop, ToLSN: 0x5001000, ToTime: written}}},
		{"hole", archive(one, nil, nil, seg(1, 3), seg(1, 5)),
			[]Window{{Timeline: 1, FromLSN: 0x3000100, FromTime: stop, ToLSN: 0x4000000, StopsAt: "missing " + seg(1, 4)}}},
		{"a partial in the middle is a hole", archive(one, nil, nil, seg(1, 3), seg(1, 4)+".partial=4096", seg(1, 5)),
			[]Window{{Timeline: 1, FromLSN: 0x3000100, FromTime: stop, ToLSN: 0x4000000, StopsAt: "missing " + seg(1, 4)}}},
		{"backup wal missing", archive(one, nil, nil, seg(1, 4)),
			[]Window{{Timeline: 1, FromLSN: 0x3000100, FromTime: stop, ToLSN: 0x3000100, StopsAt: "missing " + seg(1, 3)}}},
		{"recorded gap", archive(one, nil, []Gap{{Timeline: 1, StartLSN: 0x4000000, EndLSN: 0x4800000}}, seg(1, 3), seg(1, 4)),
			[]Window{{Timeline: 1, FromLSN: 0x3000100, FromTime: stop, ToLSN: 0x4000000, StopsAt: "recorded gap 0/4000000..0/4800000"}}},
		{"second timeline", archive(one, hist2, nil, seg(1, 3), seg(1, 4), "00000002.history",
			seg(2, 5), seg(2, 6)+".zst", seg(1, 5)+".partial=512"),
			[]Window{
				{Timeline: 1, FromLSN: 0x3000100, FromTime: stop, ToLSN: 0x5000200, ToTime: written},
				{Timeline: 2, FromLSN: 0x5000200, ToLSN: 0x7000000, ToTime: written},
			}},
		// The old timeline's .partial holds WAL past the switch point (a
		// dead branch) that wal-fetch never serves: the window on timeline
		// 1 ends at the switch point, reached through timeline 2's copy of
		// segment 5, not at the .partial's end (it did before the index).
		{"an old timeline's partial past the switch point is not recoverable", archive(one, hist2, nil,
			seg(1, 3), seg(1, 4), "00000002.history", seg(2, 5), seg(1, 5)+".partial=8192"),
			[]Window{
				{Timeline: 1, FromLSN: 0x3000100, FromTime: stop, ToLSN: 0x5000200, ToTime: written},
				{Timeline: 2, FromLSN: 0x5000200, ToLSN: 0x6000000, ToTime: written},
			}},
		{"without the new timeline's copy the old timeline ends before the switch segment", archive(one, hist2, nil,
			seg(1, 3), seg(1, 4), "00000002.history", seg(1, 5)+".partial=8192"),
			[]Window{
				{Timeline: 1, FromLSN: 0x3000100, FromTime: stop, ToLSN: 0x5000000, ToTime: written},
				{Timeline: 2, FromLSN: 0x5000200, ToLSN: 0x5000200, StopsAt: "missing " + seg(2, 5)},
			}},
		{"timeline that branched before the backup", archive(one, map[wal.Timeline][]wal.HistoryEntry{2: {{Timeline: 1, SwitchPoint: 0x2000000}}}, nil,
			seg(1, 3), seg(2, 2)),
			[]Window{{Timeline: 1, FromLSN: 0x3000100, FromTime: stop, ToLSN: 0x4000000, ToTime: written}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, RecoverableWindows(tc.in))
		})
	}
}
