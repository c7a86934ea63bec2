package walstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// TestSegmentAssembly drives the in-memory segment without a server: WAL
// arriving in odd-sized pieces across segment boundaries is archived as
// whole segments, the .partial holds the segment's start, is replaced as
// the segment grows and is deleted once the segment is archived, and the
// reported position never passes what the archive holds.
func TestSegmentAssembly(t *testing.T) {
	const segSize = 1 << 20
	b, err := fs.New(filepath.Join(t.TempDir(), "a"), fs.Options{CreateRoot: true})
	require.NoError(t, err)
	var progress []Progress
	r, err := New(Options{ConnString: "host=127.0.0.1", Backend: b, Prefix: testPrefix, OnProgress: func(p Progress) { progress = append(progress, p) }})
	require.NoError(t, err)
	s := &stream{r: r, log: hclog.NewNullLogger(), segSize: segSize, buf: make([]byte, 0, segSize), tli: 3, seg: 7}
	s.flushed = s.received()
	ctx := t.Context()

	wantWAL := make([]byte, 2*segSize+12345)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range wantWAL {
		wantWAL[i] = byte(rng.Uint32())
	}
	start := wal.SegmentStart(7, segSize)
	pos := 0
	partialSeen := false
	for pos < len(wantWAL) {
		n := min(1+rng.IntN(300000), len(wantWAL)-pos)
		require.NoError(t, s.appendWAL(ctx, start+wal.LSN(pos), wantWAL[pos:pos+n]))
		pos += n
		assert.LessOrEqual(t, s.flushed, s.received())
		if pos < segSize && !partialSeen {
			// Mid first segment: a .partial with exactly what arrived.
			require.NoError(t, s.flushPartial(ctx))
			got, err := storage.ReadAll(ctx, b, testPrefix+"000000030000000000000007.partial")
			require.NoError(t, err)
			assert.Equal(t, wantWAL[:pos], got)
			assert.Equal(t, start+wal.LSN(pos), s.flushed)
			partialSeen = true
		}
	}
	require.True(t, partialSeen)
	require.NoError(t, s.flushPartial(ctx))

	for i, name := range []string{"000000030000000000000007", "000000030000000000000008"} {
		got, err := storage.ReadAll(ctx, b, testPrefix+name)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(wantWAL[i*segSize:(i+1)*segSize], got), name)
	}
	_, err = b.Stat(ctx, testPrefix+"000000030000000000000007.partial")
	assert.ErrorIs(t, err, storage.ErrNotExist, "the .partial goes once the segment is archived")
	got, err := storage.ReadAll(ctx, b, testPrefix+"000000030000000000000009.partial")
	require.NoError(t, err)
	assert.Equal(t, wantWAL[2*segSize:], got)

	end := start + wal.LSN(len(wantWAL))
	assert.Equal(t, end, s.flushed)
	require.NotEmpty(t, progress)
	last := progress[len(progress)-1]
	assert.Equal(t, Progress{Timeline: 3, Received: end, Flushed: end, LastSegment: "000000030000000000000008", SegmentSize: segSize, ServerWALEnd: end, Durable: true}, last)

	// WAL that does not continue where the stream is refused.
	assert.Error(t, s.appendWAL(ctx, end+1, []byte{1}))
	assert.Error(t, s.appendWAL(ctx, end-1, []byte{1}))

	// Archiving a segment again with other bytes is a conflict, not an
	// overwrite.
	s2 := &stream{r: r, log: hclog.NewNullLogger(), segSize: segSize, buf: make([]byte, 0, segSize), tli: 3, seg: 7}
	err = s2.appendWAL(ctx, start, make([]byte, segSize))
	assert.ErrorIs(t, err, storage.ErrConflict)
	assert.False(t, IsRetryable(err))
	assert.True(t, s2.archiveFailed)
}

// TestPartialAppendFallback makes the .partial differ from what the stream
// believes it holds: the failed append falls back to rewriting it whole,
// and appending resumes after that.
func TestPartialAppendFallback(t *testing.T) {
	const segSize = 1 << 20
	b, err := fs.New(filepath.Join(t.TempDir(), "a"), fs.Options{CreateRoot: true})
	require.NoError(t, err)
	r, err := New(Options{ConnString: "host=127.0.0.1", Backend: b, Prefix: testPrefix})
	require.NoError(t, err)
	assert.Equal(t, DefaultFlushInterval, r.opts.FlushInterval, "fs appends, so the short default applies")
	s := &stream{r: r, log: hclog.NewNullLogger(), segSize: segSize, buf: make([]byte, 0, segSize), tli: 1, seg: 3}
	s.flushed = s.received()
	ctx := t.Context()
	name := testPrefix + "000000010000000000000003.partial"
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	start := wal.SegmentStart(3, segSize)

	require.NoError(t, s.appendWAL(ctx, start, data[:1000]))
	require.NoError(t, s.flushPartial(ctx))
	require.NoError(t, s.appendWAL(ctx, start+1000, data[1000:3000]))
	require.NoError(t, s.flushPartial(ctx))
	// Someone else replaced the .partial with a shorter one.
	require.NoError(t, b.Put(ctx, name, bytes.NewReader(data[:10]), storage.PutOptions{}))
	require.NoError(t, s.appendWAL(ctx, start+3000, data[3000:5000]))
	require.NoError(t, s.flushPartial(ctx), "the failed append falls back to a rewrite")
	got, err := storage.ReadAll(ctx, b, name)
	require.NoError(t, err)
	assert.Equal(t, data[:5000], got)
	require.NoError(t, s.appendWAL(ctx, start+5000, data[5000:]))
	require.NoError(t, s.flushPartial(ctx))
	got, err = storage.ReadAll(ctx, b, name)
	require.NoError(t, err)
	assert.Equal(t, data, got)
	assert.Equal(t, start+wal.LSN(len(data)), s.flushed)

	// A backend without Append gets the long default.
	r2, err := New(Options{ConnString: "host=127.0.0.1", Backend: putOnly{b}})
	require.NoError(t, err)
	assert.Equal(t, DefaultRewriteFlushInterval, r2.opts.FlushInterval)
}

// putOnly hides the backend's optional features.
type putOnly struct{ storage.Backend }

// TestFlushDue: a backend that appends flushes every 512 KiB as well as
// every interval; one that rewrites the whole .partial waits for the
// interval, counted from the end of the previous write, whatever is
// waiting.
func TestFlushDue(t *testing.T) {
	const segSize = 16 << 20
	b, err := fs.New(filepath.Join(t.TempDir(), "a"), fs.Options{CreateRoot: true})
	require.NoError(t, err)
	last := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		backend storage.Backend
		sync    bool
		waiting int
		since   time.Duration // since the end of the last write
		idle    bool
		want    bool
	}{
		{"append: little waiting, interval not over", b, false, 1000, 50 * time.Millisecond, false, false},
		{"append: interval over", b, false, 1000, DefaultFlushInterval, false, true},
		{"append: 512 KiB waiting", b, false, flushBytes, time.Millisecond, false, true},
		{"rewrite: 512 KiB waiting, interval not over", putOnly{b}, false, flushBytes, time.Second, false, false},
		{"rewrite: most of a segment waiting", putOnly{b}, false, segSize - 1, DefaultRewriteFlushInterval - time.Millisecond, false, false},
		{"rewrite: interval over", putOnly{b}, false, 1, DefaultRewriteFlushInterval, false, true},
		{"rewrite synchronous: server pauses", putOnly{b}, true, 1000, time.Millisecond, true, true},
		{"rewrite synchronous: server busy", putOnly{b}, true, 1000, time.Millisecond, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New(Options{ConnString: "host=127.0.0.1", Backend: tc.backend, Synchronous: tc.sync})
			require.NoError(t, err)
			s := &stream{r: r, segSize: segSize, buf: make([]byte, tc.waiting, segSize), seg: 1}
			s.flushed = wal.SegmentStart(1, segSize)
			s.lastFlush, s.dirty = last, true
			now := last.Add(tc.since)
			s.dirtySince = now
			assert.Equal(t, tc.want, s.flushDue(now, tc.idle))
		})
	}
}

// TestPartialRewrite: without storage.Appender every write replaces the
// .partial whole, with the digest of what it holds.
func TestPartialRewrite(t *testing.T) {
	const segSize = 1 << 20
	fsb, err := fs.New(filepath.Join(t.TempDir(), "a"), fs.Options{CreateRoot: true})
	require.NoError(t, err)
	b := &digestRecorder{Backend: fsb}
	r, err := New(Options{ConnString: "host=127.0.0.1", Backend: b, Prefix: testPrefix})
	require.NoError(t, err)
	s := &stream{r: r, log: hclog.NewNullLogger(), segSize: segSize, buf: make([]byte, 0, segSize), tli: 1, seg: 3}
	s.flushed = s.received()
	ctx := t.Context()
	name := testPrefix + "000000010000000000000003.partial"
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	start := wal.SegmentStart(3, segSize)
	for _, end := range []int{1000, 3000, len(data)} {
		require.NoError(t, s.appendWAL(ctx, s.received(), data[s.received()-start:end]))
		require.NoError(t, s.flushPartial(ctx))
		got, err := storage.ReadAll(ctx, fsb, name)
		require.NoError(t, err)
		assert.Equal(t, data[:end], got)
		assert.Equal(t, storage.ChecksumOf(storage.DefaultAlgorithm, data[:end]), b.digests[len(b.digests)-1])
		assert.Equal(t, start+wal.LSN(end), s.flushed)
	}
	assert.Len(t, b.digests, 3)
}

// digestRecorder is a backend without storage.Appender that remembers the
// digests Put was given.
type digestRecorder struct {
	storage.Backend
	digests []string
}

func (b *digestRecorder) Put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	b.digests = append(b.digests, opts.Checksum)
	return b.Backend.Put(ctx, name, r, opts)
}

// TestProgressBetweenWrites: WAL that arrived but is not yet durable is
// reported (Durable false, Flushed unchanged), so the lag between server
// and archive is visible while it exists.
func TestProgressBetweenWrites(t *testing.T) {
	const segSize = 1 << 20
	b, err := fs.New(filepath.Join(t.TempDir(), "a"), fs.Options{CreateRoot: true})
	require.NoError(t, err)
	var progress []Progress
	r, err := New(Options{ConnString: "host=127.0.0.1", Backend: b, Prefix: testPrefix, FlushInterval: time.Hour,
		OnProgress: func(p Progress) { progress = append(progress, p) }})
	require.NoError(t, err)
	s := &stream{r: r, log: hclog.NewNullLogger(), segSize: segSize, buf: make([]byte, 0, segSize), tli: 3, seg: 7}
	s.flushed = s.received()
	start := wal.SegmentStart(7, segSize)
	msg := func(at wal.LSN, serverEnd wal.LSN, n int) []byte {
		m := []byte{pglogrepl.XLogDataByteID}
		m = binary.BigEndian.AppendUint64(m, uint64(at))
		m = binary.BigEndian.AppendUint64(m, uint64(serverEnd))
		m = binary.BigEndian.AppendUint64(m, 0)
		return append(m, make([]byte, n)...)
	}
	require.NoError(t, s.handleCopyData(t.Context(), msg(start, start+3000, 1000)))
	require.Len(t, progress, 1)
	p := progress[0]
	assert.False(t, p.Durable)
	assert.Equal(t, start, p.Flushed, "nothing is durable yet")
	assert.Equal(t, start+1000, p.Received)
	assert.Equal(t, start+3000, p.ServerWALEnd)
	// The next message within progressInterval is not reported.
	require.NoError(t, s.handleCopyData(t.Context(), msg(start+1000, start+3000, 1000)))
	assert.Len(t, progress, 1)
}
