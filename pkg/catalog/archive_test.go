package catalog

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func TestReadArchive(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	const c = "c1"
	storeBackup(t, b, c, Backup{ID: "20260101T000000", Status: StatusDone, WALSegmentSize: 1 << 20, StartTimeline: 1, StartLSN: 0x100028, StopTimeline: 1, StopLSN: 0x200000})
	hist2 := wal.FormatHistory([]wal.HistoryEntry{{Timeline: 1, SwitchPoint: 0x300100}})
	for name, data := range map[string][]byte{
		wal.SegmentFileName(1, 1, 1<<20):              []byte("x"),
		wal.SegmentFileName(1, 3, 1<<20) + ".partial": []byte("xx"),
		"00000002.history":                            hist2,
		wal.SegmentFileName(2, 3, 1<<20) + ".zst":     []byte("y"),
		"00000003.history":                            []byte("garbage\n"),
	} {
		putObject(t, b, WALPrefix(c)+name, data)
	}
	require.NoError(t, RecordGap(ctx, b, c, Gap{Timeline: 1, StartLSN: 0x1000000, EndLSN: 0x2000000}))

	// Without archive.json the segment size is the newest done backup's.
	a, err := ReadArchive(ctx, b, c)
	require.NoError(t, err)
	assert.Equal(t, uint64(1<<20), a.SegmentSize)
	assert.Len(t, a.Backups, 1)
	assert.Equal(t, []wal.Timeline{1, 2, 3}, a.WAL.Timelines())
	assert.Equal(t, map[wal.Timeline][]wal.HistoryEntry{2: {{Timeline: 1, SwitchPoint: 0x300100}}}, a.Histories)
	assert.Len(t, a.HistoryErrors, 1)
	assert.Error(t, a.HistoryErrors[3])
	assert.Len(t, a.Gaps, 1)
	_, ok, why := a.WAL.Serve(1, 3)
	assert.False(t, ok, "timeline 1's .partial is not the newest timeline's")
	assert.Contains(t, why, "timeline 1 is not the newest")

	// archive.json decides once it exists.
	_, err = EnsureIdentity(ctx, b, Identity{Cluster: c, SystemID: "1", WALSegmentSize: 16 << 20})
	require.NoError(t, err)
	a, err = ReadArchive(ctx, b, c)
	require.NoError(t, err)
	assert.Equal(t, uint64(16<<20), a.SegmentSize)
	assert.Equal(t, a.SegmentSize, a.WAL.SegmentSize())
}
