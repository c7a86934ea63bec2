package walstream

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/compress"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// unitSegSize keeps the unit tests quick under -race.
const unitSegSize = 1 << 20

// fakeWAL returns a segment's worth of WAL-like bytes: 8 KiB pages with
// headers and record-like runs, compressible but not trivially.
func fakeWAL(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	out := make([]byte, n)
	for page := 0; page+8192 <= n; page += 8192 {
		binary.LittleEndian.PutUint16(out[page:], 0xD110)
		binary.LittleEndian.PutUint64(out[page+8:], uint64(page))
		for i := page + 24; i < page+4000; i += 48 {
			binary.LittleEndian.PutUint32(out[i:], rng.Uint32()%1000)
			for j := 8; j < 24; j++ {
				out[i+j] = byte('a' + rng.IntN(16))
			}
		}
	}
	return out
}

func newFSArchive(t *testing.T) *fs.Backend {
	t.Helper()
	b, err := fs.New(filepath.Join(t.TempDir(), "a"), fs.Options{CreateRoot: true})
	require.NoError(t, err)
	return b
}

func listNames(t *testing.T, b storage.Backend) []string {
	t.Helper()
	objs, err := b.List(t.Context(), testPrefix)
	require.NoError(t, err)
	var names []string
	for _, o := range objs {
		names = append(names, strings.TrimPrefix(o.Name, testPrefix))
	}
	return names
}

func readSegment(t *testing.T, b storage.Backend, name string) ([]byte, error) {
	t.Helper()
	rc, err := catalog.OpenSegment(t.Context(), b, name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// newUnitStream is a stream on timeline 1 at segment 5 without a server,
// for driving the segment code directly.
func newUnitStream(t *testing.T, b storage.Backend, compression string) *stream {
	t.Helper()
	r, err := New(Options{ConnString: "host=127.0.0.1", Backend: b, Prefix: testPrefix, Compression: compression})
	require.NoError(t, err)
	s := &stream{r: r, log: hclog.NewNullLogger(), segSize: unitSegSize, buf: make([]byte, 0, unitSegSize), tli: 1, seg: 5}
	s.flushed = s.received()
	return s
}

const unitSegment = "000000010000000000000005"

func TestDecompressAndOpenSegment(t *testing.T) {
	b := newFSArchive(t)
	ctx := t.Context()
	want := fakeWAL(300000, 1)
	for _, tc := range []struct {
		option, suffix string
		names          []string // accepted by algorithmOf
	}{
		{option: CompressionNone, names: []string{"", "none"}},
		{option: CompressionZstd, suffix: ".zst", names: []string{"zstd", wal.CompressionZstd}},
		{option: CompressionLZ4, suffix: ".lz4", names: []string{"lz4", wal.CompressionLZ4}},
	} {
		t.Run(tc.option, func(t *testing.T) {
			enc, err := compress.NewEncoder(tc.option)
			require.NoError(t, err)
			data, err := enc.Compress(want)
			require.NoError(t, err)
			for _, name := range tc.names {
				alg, err := algorithmOf(name)
				require.NoError(t, err, name)
				r, err := compress.NewReader(alg, bytes.NewReader(data))
				require.NoError(t, err, name)
				got, err := io.ReadAll(r)
				require.NoError(t, err)
				require.NoError(t, r.Close())
				assert.True(t, bytes.Equal(want, got), name)
			}

			name := testPrefix + unitSegment + tc.suffix
			_, err = storage.PutOnce(ctx, b, name, data)
			require.NoError(t, err)
			got, err := readSegment(t, b, name)
			require.NoError(t, err)
			assert.True(t, bytes.Equal(want, got))

			info, err := FindSegment(ctx, b, testPrefix, unitSegment)
			require.NoError(t, err)
			assert.Equal(t, name, info.Name)
			require.NoError(t, b.Delete(ctx, name))
		})
	}

	_, err := algorithmOf("gzip")
	assert.Error(t, err)
	_, err = FindSegment(ctx, b, testPrefix, unitSegment)
	assert.ErrorIs(t, err, storage.ErrNotExist)
	_, err = catalog.OpenSegment(ctx, b, testPrefix+unitSegment+".zst")
	assert.ErrorIs(t, err, storage.ErrNotExist)

	t.Run("partial is read as is", func(t *testing.T) {
		name := testPrefix + unitSegment + ".partial"
		_, err := storage.PutOnce(ctx, b, name, want[:1000])
		require.NoError(t, err)
		got, err := readSegment(t, b, name)
		require.NoError(t, err)
		assert.Equal(t, want[:1000], got)
	})
}

// TestOpenSegmentVerifies: damaged stored bytes and bytes after the
// compressed data are errors, not a short or silent read.
func TestOpenSegmentVerifies(t *testing.T) {
	want := fakeWAL(200000, 2)
	for _, comp := range []string{CompressionNone, CompressionZstd, CompressionLZ4} {
		t.Run(comp, func(t *testing.T) {
			b := newFSArchive(t)
			enc, err := compress.NewEncoder(comp)
			require.NoError(t, err)
			data, err := enc.Compress(want)
			require.NoError(t, err)
			name := testPrefix + unitSegment + suffixOf(comp)

			t.Run("damaged on disk", func(t *testing.T) {
				_, err := storage.PutOnce(t.Context(), b, name, data)
				require.NoError(t, err)
				f, err := os.OpenFile(filepath.Join(b.Root(), name), os.O_WRONLY, 0)
				require.NoError(t, err)
				_, err = f.WriteAt([]byte{data[len(data)-3] ^ 0xff}, int64(len(data)-3))
				require.NoError(t, err)
				require.NoError(t, f.Close())
				_, err = readSegment(t, b, name)
				assert.Error(t, err)
				require.NoError(t, b.Delete(t.Context(), name))
			})
			if comp == CompressionNone {
				return
			}
			t.Run("trailing bytes", func(t *testing.T) {
				_, err := storage.PutOnce(t.Context(), b, name, append(bytes.Clone(data), "junk"...))
				require.NoError(t, err)
				_, err = readSegment(t, b, name)
				assert.Error(t, err)
			})
		})
	}
}

// TestStoreSegment covers storeSegment's decisions: compressed name, a
// retry after a crash, a compression change between runs, a copy made by
// another compressor version, and real conflicts.
func TestStoreSegment(t *testing.T) {
	segment := fakeWAL(unitSegSize, 3)
	other := fakeWAL(unitSegSize, 4)
	complete := func(t *testing.T, s *stream, data []byte) error {
		t.Helper()
		return s.appendWAL(t.Context(), wal.SegmentStart(5, unitSegSize), data)
	}

	for _, comp := range []string{CompressionNone, CompressionZstd, CompressionLZ4} {
		t.Run(comp, func(t *testing.T) {
			b := newFSArchive(t)
			s := newUnitStream(t, b, comp)
			require.NoError(t, complete(t, s, segment))
			name := unitSegment + suffixOf(comp)
			assert.Equal(t, []string{name}, listNames(t, b))
			got, err := readSegment(t, b, testPrefix+name)
			require.NoError(t, err)
			assert.True(t, bytes.Equal(segment, got))
			info, err := b.Stat(t.Context(), testPrefix+name)
			require.NoError(t, err)
			if comp != CompressionNone {
				assert.Less(t, info.Size, int64(unitSegSize/2))
			}

			// A crash after the segment was stored and before its .partial
			// was deleted: the next run finds a full .partial and completes
			// the segment again. Same bytes, so no conflict.
			_, err = storage.PutOnce(t.Context(), b, testPrefix+unitSegment+".partial", segment)
			require.NoError(t, err)
			s2 := newUnitStream(t, b, comp)
			require.NoError(t, s2.load(t.Context(), resumePoint{Timeline: 1, Start: wal.SegmentStart(6, unitSegSize), Partial: testPrefix + unitSegment + ".partial"}))
			assert.Equal(t, []string{name}, listNames(t, b), "one copy, no conflict copy, .partial gone")
			assert.Equal(t, wal.SegmentNo(6), s2.seg)
			after, err := b.Stat(t.Context(), testPrefix+name)
			require.NoError(t, err)
			assert.Equal(t, info.Checksum, after.Checksum)

			others := slices.DeleteFunc([]string{CompressionNone, CompressionZstd, CompressionLZ4}, func(c string) bool { return c == comp })

			// Any other compression finds the segment and writes nothing.
			for _, next := range others {
				s3 := newUnitStream(t, b, next)
				require.NoError(t, complete(t, s3, segment), next)
				assert.Equal(t, []string{name}, listNames(t, b), "compression %s must not add a copy", next)
			}

			// Other WAL under the same segment name is a conflict, whatever
			// the compression: the original stays, the new bytes go aside.
			for _, next := range []string{comp, others[0]} {
				s4 := newUnitStream(t, b, next)
				err := complete(t, s4, other)
				require.ErrorIs(t, err, storage.ErrConflict, next)
				assert.False(t, IsRetryable(err))
				assert.True(t, s4.archiveFailed)
			}
			names := listNames(t, b)
			assert.Equal(t, name, names[0])
			for _, n := range names[1:] {
				assert.True(t, strings.HasPrefix(n, name+".conflict-"), n)
			}
			got, err = readSegment(t, b, testPrefix+name)
			require.NoError(t, err)
			assert.True(t, bytes.Equal(segment, got), "the original is untouched")
		})
	}

	t.Run("copy by another compressor version", func(t *testing.T) {
		// Same WAL, compressed to other bytes (as a library upgrade might):
		// the same segment, not a conflict.
		b := newFSArchive(t)
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
		require.NoError(t, err)
		name := testPrefix + unitSegment + ".zst"
		theirs := enc.EncodeAll(segment, nil)
		ours, err := newUnitStream(t, b, CompressionZstd).r.encoder.Compress(segment)
		require.NoError(t, err)
		require.False(t, bytes.Equal(theirs, ours), "the test needs another compressed form")
		_, err = storage.PutOnce(t.Context(), b, name, theirs)
		require.NoError(t, err)
		before, err := b.Stat(t.Context(), name)
		require.NoError(t, err)
		s := newUnitStream(t, b, CompressionZstd)
		require.NoError(t, complete(t, s, segment))
		assert.Equal(t, []string{unitSegment + ".zst"}, listNames(t, b))
		after, err := b.Stat(t.Context(), name)
		require.NoError(t, err)
		assert.Equal(t, before.Checksum, after.Checksum)
	})

	t.Run("damaged copy is a conflict", func(t *testing.T) {
		// The stored bytes no longer match their checksum: not the same
		// segment, and nothing is written next to it.
		b := newFSArchive(t)
		s := newUnitStream(t, b, CompressionLZ4)
		require.NoError(t, complete(t, s, segment))
		name := testPrefix + unitSegment + ".lz4"
		f, err := os.OpenFile(filepath.Join(b.Root(), name), os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = f.WriteAt([]byte("XXXX"), 100)
		require.NoError(t, err)
		require.NoError(t, f.Close())
		s2 := newUnitStream(t, b, CompressionZstd)
		err = complete(t, s2, segment)
		require.ErrorIs(t, err, storage.ErrConflict)
		assert.False(t, IsRetryable(err))
		assert.Equal(t, []string{unitSegment + ".lz4"}, listNames(t, b))
	})
}
