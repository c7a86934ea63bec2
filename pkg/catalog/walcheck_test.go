package catalog

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

const segSize = 16 << 20

// seg names segment n of timeline tli for 16 MiB segments.
func seg(tli wal.Timeline, n wal.SegmentNo) string { return wal.SegmentFileName(tli, n, segSize) }

func TestCheckBackupWAL(t *testing.T) {
	history2 := wal.FormatHistory([]wal.HistoryEntry{{Timeline: 1, SwitchPoint: 0x4000100, Reason: "no recovery target specified"}})
	tests := []struct {
		name    string
		doc     Backup
		objects map[string]int // wals/ object name -> size
		want    WALCheck
		wantErr bool
	}{
		{
			name:    "all present",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x4000100, StartTimeline: 1, StopTimeline: 1},
			objects: map[string]int{seg(1, 2): 1, seg(1, 3): 1, seg(1, 4): 1, seg(1, 5): 1},
			want:    WALCheck{First: seg(1, 2), Last: seg(1, 4), Present: 3},
		},
		{
			name:    "middle missing",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x4000100, StartTimeline: 1, StopTimeline: 1},
			objects: map[string]int{seg(1, 2): 1, seg(1, 4): 1, seg(2, 3): 1, seg(1, 3) + ".partial": segSize},
			want:    WALCheck{First: seg(1, 2), Last: seg(1, 4), Present: 2, Missing: []string{seg(1, 3)}},
		},
		{
			name:    "compressed",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x4000100, StartTimeline: 1, StopTimeline: 1},
			objects: map[string]int{seg(1, 2) + ".zst": 1, seg(1, 3) + ".lz4": 1, seg(1, 4) + ".zst": 1},
			want:    WALCheck{First: seg(1, 2), Last: seg(1, 4), Present: 3},
		},
		{
			name:    "unknown compression does not count",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x2000100, StartTimeline: 1, StopTimeline: 1},
			objects: map[string]int{seg(1, 2) + ".gz": 1, seg(1, 2) + ".conflict-20261124T170005.000000000Z": 1},
			want:    WALCheck{First: seg(1, 2), Last: seg(1, 2), Missing: []string{seg(1, 2)}},
		},
		{
			name:    "last as partial past stop",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x3000100, StartTimeline: 1, StopTimeline: 1},
			objects: map[string]int{seg(1, 2): 1, seg(1, 3) + ".partial": 0x100},
			want:    WALCheck{First: seg(1, 2), Last: seg(1, 3), Present: 2},
		},
		{
			name:    "last as partial short of stop",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x3000100, StartTimeline: 1, StopTimeline: 1},
			objects: map[string]int{seg(1, 2): 1, seg(1, 3) + ".partial": 0xFF},
			want:    WALCheck{First: seg(1, 2), Last: seg(1, 3), Present: 1, Missing: []string{seg(1, 3)}},
		},
		{
			// A .partial followed by WAL of its timeline means missing
			// bytes: wal-fetch never serves it (WALIndex).
			name:    "last as partial before later WAL of its timeline does not count",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x3000100, StartTimeline: 1, StopTimeline: 1},
			objects: map[string]int{seg(1, 2): 1, seg(1, 3) + ".partial": 0x1000, seg(1, 4): 1},
			want:    WALCheck{First: seg(1, 2), Last: seg(1, 3), Present: 1, Missing: []string{seg(1, 3)}},
		},
		{
			// The old timeline's .partial holds the bytes; recovery to the
			// newer timeline reads them from its copy of the segment.
			name:    "last as an old timeline's final partial counts",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x3000100, StartTimeline: 1, StopTimeline: 1},
			objects: map[string]int{seg(1, 2): 1, seg(1, 3) + ".partial": 0x1000, "00000002.history": 1, seg(2, 3): 1},
			want:    WALCheck{First: seg(1, 2), Last: seg(1, 3), Present: 2},
		},
		{
			name:    "compressed partial does not count",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x3000100, StartTimeline: 1, StopTimeline: 1},
			objects: map[string]int{seg(1, 2): 1, seg(1, 3) + ".partial.zst": 0x1000},
			want:    WALCheck{First: seg(1, 2), Last: seg(1, 3), Present: 1, Missing: []string{seg(1, 3)}},
		},
		{
			name:    "stop on a segment boundary needs the previous segment only",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x4000000, StartTimeline: 1, StopTimeline: 1},
			objects: map[string]int{seg(1, 2): 1, seg(1, 3) + ".partial": segSize},
			want:    WALCheck{First: seg(1, 2), Last: seg(1, 3), Present: 2},
		},
		{
			name:    "one segment",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x2000100, StartTimeline: 3, StopTimeline: 3},
			objects: map[string]int{seg(3, 2) + ".lz4": 1, seg(1, 2): 1},
			want:    WALCheck{First: seg(3, 2), Last: seg(3, 2), Present: 1},
		},
		{
			name:    "across the high part",
			doc:     Backup{StartLSN: 0xFF000028, StopLSN: 0x101000010, StartTimeline: 1, StopTimeline: 1},
			objects: map[string]int{seg(1, 0xFF): 1, seg(1, 0x100) + ".zst": 1},
			want:    WALCheck{First: "0000000100000000000000FF", Last: "000000010000000100000001", Present: 2, Missing: []string{"000000010000000100000001"}},
		},
		{
			name: "timeline switch walks the history",
			doc:  Backup{StartLSN: 0x2000028, StopLSN: 0x5000100, StartTimeline: 1, StopTimeline: 2},
			objects: map[string]int{"00000002.history": -1, seg(1, 2): 1, seg(1, 3): 1, seg(1, 4) + ".partial": segSize,
				seg(2, 4): 1, seg(2, 5) + ".partial": 0x200},
			want: WALCheck{First: seg(1, 2), Last: seg(2, 5), Present: 4},
		},
		{
			name:    "timeline switch, switch segment only on the old timeline",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x5000100, StartTimeline: 1, StopTimeline: 2},
			objects: map[string]int{"00000002.history": -1, seg(1, 2): 1, seg(1, 3): 1, seg(1, 4): 1, seg(2, 5): 1},
			want:    WALCheck{First: seg(1, 2), Last: seg(2, 5), Present: 3, Missing: []string{seg(2, 4)}},
		},
		{
			name:    "timeline switch without the history file",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x5000100, StartTimeline: 1, StopTimeline: 2},
			objects: map[string]int{seg(1, 2): 1},
			want:    WALCheck{Missing: []string{"00000002.history"}},
		},
		{
			name:    "start timeline not in the history",
			doc:     Backup{StartLSN: 0x2000028, StopLSN: 0x5000100, StartTimeline: 1, StopTimeline: 3},
			objects: map[string]int{"00000003.history": -1},
			wantErr: true,
		},
		{name: "stop before start", doc: Backup{StartLSN: 0x3000000, StopLSN: 0x2000000, StartTimeline: 1, StopTimeline: 1}, wantErr: true},
		{name: "no start lsn", doc: Backup{StopLSN: 0x2000000, StartTimeline: 1, StopTimeline: 1}, wantErr: true},
		{name: "no timeline", doc: Backup{StartLSN: 0x1000000, StopLSN: 0x2000000}, wantErr: true},
		{name: "timelines backwards", doc: Backup{StartLSN: 0x1000000, StopLSN: 0x2000000, StartTimeline: 2, StopTimeline: 1}, wantErr: true},
		{name: "bad segment size", doc: Backup{StartLSN: 0x1000000, StopLSN: 0x2000000, StartTimeline: 1, StopTimeline: 1, WALSegmentSize: 1000}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t)
			for name, size := range tt.objects {
				var data []byte
				if size >= 0 {
					data = bytes.Repeat([]byte{'w'}, size)
				} else {
					data = history2
					if name == "00000003.history" {
						data = wal.FormatHistory([]wal.HistoryEntry{{Timeline: 2, SwitchPoint: 0x3000000}})
					}
				}
				putObject(t, b, WALPrefix("c")+name, data)
			}
			putObject(t, b, WALPrefix("other")+seg(1, 3), []byte("another cluster"))
			doc := tt.doc
			doc.ID = "20261124T170005"
			if doc.WALSegmentSize == 0 {
				doc.WALSegmentSize = segSize
			}
			got, err := CheckBackupWAL(t.Context(), b, "c", doc)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Len(t, got.Stored, got.Present, "one stored object per present segment")
			got.Stored = nil
			assert.Equal(t, tt.want, got)
			assert.Equal(t, len(tt.want.Missing) == 0, got.OK())
		})
	}
}

func TestCheckBackupWALSmallSegments(t *testing.T) {
	// 1 MiB segments: 4096 per high part, so names differ from 16 MiB ones.
	const small = 1 << 20
	b := newBackend(t)
	first, last := wal.SegmentNo(0xFFE), wal.SegmentNo(0x1001)
	for s := first; s <= last; s++ {
		if s != 0x1000 {
			putObject(t, b, WALPrefix("c")+wal.SegmentFileName(1, s, small), []byte{1})
		}
	}
	got, err := CheckBackupWAL(t.Context(), b, "c", Backup{
		ID: "x", StartLSN: wal.SegmentStart(first, small), StopLSN: (wal.SegmentStart(last, small) + 1),
		StartTimeline: 1, StopTimeline: 1, WALSegmentSize: small,
	})
	require.NoError(t, err)
	var stored []string
	for _, o := range got.Stored {
		stored = append(stored, o.Name)
	}
	assert.Equal(t, []string{"000000010000000000000FFE", "000000010000000000000FFF", "000000010000000100000001"}, stored)
	got.Stored = nil
	assert.Equal(t, WALCheck{
		First: "000000010000000000000FFE", Last: "000000010000000100000001",
		Present: 3, Missing: []string{"000000010000000100000000"},
	}, got)
}

var _ storage.Backend = (*recordingBackend)(nil)
