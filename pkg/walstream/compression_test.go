package walstream_test

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

// TestCompressedStreaming streams from a real server with each compression
// and checks that every archived segment decompresses to exactly the
// server's pg_wal file, and that changing the compression between runs
// keeps the archive contiguous with one copy of each segment.
func TestCompressedStreaming(t *testing.T) {
	integration(t)
	c := testenv.NewCluster(t, testenv.ClusterOptions{WALSegmentSizeMB: 1})
	p := c.Primary()
	ctx := t.Context()
	require.NoError(t, p.Exec(ctx, "CREATE TABLE walgen (id int, v text)"))
	const segSize = mb

	for _, tc := range []struct{ compression, suffix string }{
		{walstream.CompressionZstd, wal.CompressionZstd},
		{walstream.CompressionLZ4, wal.CompressionLZ4},
	} {
		t.Run(tc.compression, func(t *testing.T) {
			b := newArchive(t)
			rec := startReceiver(t, walstream.Options{ConnString: p.ReplConnString(), Backend: b, Compression: tc.compression})
			waitStreaming(t, rec, p)
			for range 8 {
				require.NoError(t, p.Exec(ctx, insert1MB))
			}
			// End mid-segment, so that a .partial is left too.
			require.NoError(t, p.Exec(ctx, "INSERT INTO walgen SELECT g, md5(g::text) FROM generate_series(1, 300) g"))
			waitArchived(t, rec, p)
			require.NoError(t, rec.stop())

			a := listArchive(t, b, segSize)
			segs := a.segments[1]
			// At least two complete segments to compare: the eight
			// inserts came after the receiver streamed.
			require.GreaterOrEqual(t, len(segs), 2, "archive: %+v", a)
			assert.Equal(t, map[string]int{tc.suffix: len(segs)}, a.suffixes, "every complete segment is compressed")
			requireContiguous(t, append(slices.Clone(segs), a.partials[1]...))
			require.Len(t, a.partials[1], 1)
			requireSameAsServer(t, b, p.DataDir, segSize, 1, segs, a.partials[1])
			for _, seg := range segs {
				info, err := b.Stat(ctx, prefix+wal.SegmentFileName(1, seg, segSize)+"."+tc.suffix)
				require.NoError(t, err)
				assert.Less(t, info.Size, int64(segSize/2), "this WAL compresses well")
			}
		})
	}

	t.Run("compression changes between runs", func(t *testing.T) {
		b := newArchive(t)
		var ends []wal.LSN
		for _, comp := range []string{walstream.CompressionNone, walstream.CompressionZstd, walstream.CompressionLZ4, ""} {
			rec := startReceiver(t, walstream.Options{ConnString: p.ReplConnString(), Backend: b, Compression: comp})
			for range 2 {
				require.NoError(t, p.Exec(ctx, insert1MB))
			}
			require.NoError(t, p.Exec(ctx, "INSERT INTO walgen SELECT g, 'y' FROM generate_series(1, 100) g"))
			end := waitArchived(t, rec, p)
			require.NotZero(t, wal.SegmentOffset(end, segSize), "each run should stop inside a segment")
			require.NoError(t, rec.stop())
			ends = append(ends, end)
		}

		a := listArchive(t, b, segSize)
		segs := a.segments[1]
		t.Logf("segments by suffix: %v, runs ended at %v", a.suffixes, ends)
		for _, suffix := range []string{"", wal.CompressionZstd, wal.CompressionLZ4} {
			assert.Positive(t, a.suffixes[suffix], "some segment archived with suffix %q", suffix)
		}
		// Each run resumed the previous run's .partial: no hole, one
		// .partial left, one copy of each segment (listArchive checks).
		requireContiguous(t, append(slices.Clone(segs), a.partials[1]...))
		require.Len(t, a.partials[1], 1)
		require.Equal(t, wal.SegmentOf(ends[len(ends)-1], segSize), a.partials[1][0])
		for _, end := range ends[:len(ends)-1] {
			assert.Contains(t, segs, wal.SegmentOf(end, segSize), "the segment a run stopped in is complete now")
		}
		requireSameAsServer(t, b, p.DataDir, segSize, 1, segs, a.partials[1])
	})
}
