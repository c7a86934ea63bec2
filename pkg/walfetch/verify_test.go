package walfetch_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walfetch"
)

func problemFiles(r walfetch.Report) []string {
	var out []string
	for _, p := range r.Problems {
		out = append(out, p.File)
	}
	return out
}

func TestVerifyWAL(t *testing.T) {
	a := newArchive(t)
	a.put(t, seg(1, 1), segmentData(1))
	a.put(t, seg(1, 2)+".zst", segmentData(2))
	a.put(t, seg(1, 3)+".lz4", segmentData(3))
	a.put(t, seg(1, 4)+".zst", segmentData(4))
	a.put(t, seg(1, 5)+".partial", segmentData(5)[:10000])
	a.put(t, "00000002.history", []byte("1\t0/5000000\tno recovery target specified\n"))
	a.put(t, seg(2, 5), segmentData(25))

	r, err := walfetch.VerifyWAL(t.Context(), a.b, cluster, 0, nil)
	require.NoError(t, err)
	assert.Empty(t, r.Problems)
	assert.Equal(t, 7, r.Files)

	// A flipped byte in a compressed segment and in a plain one; a segment
	// one byte short once decompressed (checksum right: stored that way);
	// a history file that is not one.
	a.damage(t, seg(1, 2)+".zst", 100)
	a.damage(t, seg(2, 5), 5000)
	_, err = storage.PutOnce(t.Context(), a.fs, prefix+seg(1, 6), segmentData(6)[:segSize-1])
	require.NoError(t, err)
	_, err = storage.PutOnce(t.Context(), a.fs, prefix+"00000003.history", []byte("garbage\n"))
	require.NoError(t, err)

	var calls int
	var lastDone, lastTotal int64
	r, err = walfetch.VerifyWAL(t.Context(), a.b, cluster, 0, func(done, total int64) { calls, lastDone, lastTotal = calls+1, done, total })
	require.NoError(t, err)
	assert.Equal(t, []string{seg(1, 2) + ".zst", seg(1, 6), seg(2, 5), "00000003.history"}, problemFiles(r), "in name order")
	assert.Equal(t, 9, r.Files)
	assert.Equal(t, 9, calls)
	assert.Equal(t, lastTotal, lastDone)
	for _, p := range r.Problems {
		switch p.File {
		case seg(2, 5):
			assert.Contains(t, p.Problem, "checksum")
		case seg(1, 6):
			assert.Contains(t, p.Problem, "want the segment size")
		}
	}

	// --from: segments before 5 are left out, history files never.
	r, err = walfetch.VerifyWAL(t.Context(), a.b, cluster, 5, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{seg(1, 6), seg(2, 5), "00000003.history"}, problemFiles(r))
	assert.Equal(t, 5, r.Files)
}

func TestVerifyWALWithoutIdentityFails(t *testing.T) {
	a := newArchive(t)
	_, err := walfetch.VerifyWAL(t.Context(), a.b, "other", 0, nil)
	require.ErrorIs(t, err, storage.ErrNotExist)
}

func TestVerifyBackupWAL(t *testing.T) {
	a := newArchive(t)
	for i := wal.SegmentNo(2); i <= 5; i++ {
		a.put(t, seg(1, i)+".zst", segmentData(uint64(i)))
	}
	a.put(t, seg(1, 6)+".partial", segmentData(6)[:4096])
	doc := catalog.Backup{
		ID: "b1", Status: catalog.StatusDone, WALSegmentSize: segSize, StartTimeline: 1, StopTimeline: 1,
		StartLSN: (wal.SegmentStart(3, segSize) + 40), StopLSN: (wal.SegmentStart(6, segSize) + 100),
	}
	r, err := walfetch.VerifyBackupWAL(t.Context(), a.b, cluster, doc, nil)
	require.NoError(t, err)
	assert.Empty(t, r.Problems)
	assert.Equal(t, 4, r.Files, "segments 3 to 5 and the partial 6; not 2")

	a.damage(t, seg(1, 4)+".zst", 60)
	a.damage(t, seg(1, 2)+".zst", 60) // not needed: not read
	r, err = walfetch.VerifyBackupWAL(t.Context(), a.b, cluster, doc, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{seg(1, 4) + ".zst"}, problemFiles(r))

	// The partial holds less than the backup needs: missing.
	doc.StopLSN = wal.SegmentStart(6, segSize) + 5000
	r, err = walfetch.VerifyBackupWAL(t.Context(), a.b, cluster, doc, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{seg(1, 4) + ".zst", seg(1, 6)}, problemFiles(r))
}
