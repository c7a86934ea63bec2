package compress

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// frameInput returns n bytes that alternate, frame by frame, between
// compressible WAL-like pages and random bytes, so that both of
// FrameWriter's encoders are used.
func frameInput(n int) []byte {
	out := walLike(n, 7)
	for off := FrameSize; off < n; off += 2 * FrameSize {
		_, _ = rand.Read(out[off:min(off+FrameSize, n)])
	}
	return out
}

// frameCompress compresses data with a FrameWriter, written in pieces of
// chunk bytes.
func frameCompress(t *testing.T, data []byte, chunk int) []byte {
	t.Helper()
	var out bytes.Buffer
	fw, err := NewFrameWriter(&out, 2)
	require.NoError(t, err)
	for rest := data; len(rest) > 0; {
		k := min(chunk, len(rest))
		n, err := fw.Write(rest[:k])
		require.NoError(t, err)
		require.Equal(t, k, n)
		rest = rest[k:]
	}
	require.NoError(t, fw.Close())
	return out.Bytes()
}

// countFrames walks the frame headers of a FrameWriter's output.
func countFrames(t *testing.T, data []byte) (frames int, sizes []int64) {
	t.Helper()
	fr := &FrameReader{r: bufioReader(data)}
	for {
		j := &frameJob{}
		size, err := fr.readFrame(j)
		if errors.Is(err, io.EOF) && len(j.in) == 0 {
			return frames, sizes
		}
		require.NoError(t, err)
		frames++
		sizes = append(sizes, size)
	}
}

func TestFrameWriterRoundTrip(t *testing.T) {
	cases := map[string]int{
		"empty":                0,
		"one byte":             1,
		"one frame minus one":  FrameSize - 1,
		"exactly one frame":    FrameSize,
		"one frame plus one":   FrameSize + 1,
		"several frames, odd":  2*FrameSize + 12345,
		"several whole frames": 3 * FrameSize,
	}
	all := frameInput(3 * FrameSize)
	for name, n := range cases {
		t.Run(name, func(t *testing.T) {
			data := all[:n]
			chunks := []int{1 << 20}
			if n%FrameSize != 0 && n > 2*FrameSize {
				chunks = append(chunks, 32<<10+7, FrameSize+3)
			}
			for _, chunk := range chunks {
				compressed := frameCompress(t, data, chunk)

				// Frames are independent and of FrameSize bytes but the last.
				frames, sizes := countFrames(t, compressed)
				wantFrames := max(1, (n+FrameSize-1)/FrameSize)
				require.Equal(t, wantFrames, frames)
				for i, s := range sizes {
					want := int64(FrameSize)
					if i == len(sizes)-1 {
						want = int64(n - (frames-1)*FrameSize)
					}
					if want < 256 && s == -1 {
						continue // zstd records no size this small
					}
					assert.Equal(t, want, s)
				}

				// Any zstd decoder reads it as one stream.
				assert.Equal(t, data, decompress(t, Zstd, compressed))
				// And the parallel reader, whatever the read sizes.
				assert.Equal(t, data, frameDecompress(t, compressed, 3))
			}
		})
	}
}

func TestFrameWriterCompressesBothKinds(t *testing.T) {
	wal := walLike(2*FrameSize, 3)
	random := make([]byte, 2*FrameSize)
	_, _ = rand.Read(random)
	assert.Less(t, len(frameCompress(t, wal, 1<<20)), len(wal)/3, "compressible frames are compressed")
	assert.Less(t, len(frameCompress(t, random, 1<<20)), len(random)+len(random)/100, "random frames cost under 1%")
	assert.InDelta(t, 8, sampledEntropy(random), 0.1)
	assert.Less(t, sampledEntropy(wal), rawLiteralsEntropy)
	assert.Zero(t, sampledEntropy(make([]byte, FrameSize)))
	assert.Zero(t, sampledEntropy(nil))
}

// failingWriter fails every write after the first ok ones.
type failingWriter struct {
	ok  int
	err error
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.ok == 0 {
		return 0, w.err
	}
	w.ok--
	return len(p), nil
}

func TestFrameWriterReportsWriteErrors(t *testing.T) {
	boom := errors.New("disk full")
	fw, err := NewFrameWriter(&failingWriter{ok: 1, err: boom}, 2)
	require.NoError(t, err)
	data := frameInput(10 * FrameSize)
	var werr error
	for rest := data; len(rest) > 0 && werr == nil; rest = rest[min(len(rest), 1<<20):] {
		_, werr = fw.Write(rest[:min(len(rest), 1<<20)])
	}
	cerr := fw.Close()
	// The failure shows at a later Write (the writer runs behind) or at
	// the latest at Close, and never leaves a goroutine behind (TestMain).
	require.ErrorIs(t, errors.Join(werr, cerr), boom)
	require.ErrorIs(t, cerr, boom)
	_, err = fw.Write([]byte{1})
	require.Error(t, err, "writes after Close fail")
}

func frameDecompress(t *testing.T, data []byte, workers int) []byte {
	t.Helper()
	r, err := NewFrameReader(iotest.HalfReader(bytes.NewReader(data)), workers)
	require.NoError(t, err)
	var out bytes.Buffer
	buf := make([]byte, 100_003) // reads that straddle frames
	_, err = io.CopyBuffer(&out, struct{ io.Reader }{r}, buf)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	return out.Bytes()
}

func TestFrameReaderParallel(t *testing.T) {
	data := frameInput(5*FrameSize + 99)
	compressed := frameCompress(t, data, 1<<20)
	r, err := NewFrameReader(bytes.NewReader(compressed), 2)
	require.NoError(t, err)
	_, parallel := r.(*FrameReader)
	require.True(t, parallel, "FrameWriter's output is read in parallel")
	require.NoError(t, r.Close())
	for _, workers := range []int{0, 1, 4} {
		assert.Equal(t, data, frameDecompress(t, compressed, workers))
	}

	// NewParallelReader picks it for zstd, NewReader's otherwise.
	r, err = NewParallelReader(Zstd, bytes.NewReader(compressed), 2)
	require.NoError(t, err)
	_, parallel = r.(*FrameReader)
	assert.True(t, parallel)
	require.NoError(t, r.Close())
	enc, err := NewEncoder(LZ4)
	require.NoError(t, err)
	lz, err := enc.Compress(data[:100_000])
	require.NoError(t, err)
	r, err = NewParallelReader(LZ4, bytes.NewReader(lz), 2)
	require.NoError(t, err)
	got, err := io.ReadAll(r)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	assert.Equal(t, data[:100_000], got)
}

func TestFrameReaderSkippableFramesAndChecksums(t *testing.T) {
	// Another writer's frames: a checksum, a skippable frame between.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
	require.NoError(t, err)
	defer enc.Close()
	a, b := walLike(100_000, 1), walLike(300_000, 2)
	stream := enc.EncodeAll(a, nil)
	skip := binary.LittleEndian.AppendUint32(nil, skippableMagic|5)
	skip = binary.LittleEndian.AppendUint32(skip, 11)
	stream = append(stream, append(skip, "hello world"...)...)
	stream = enc.EncodeAll(b, stream)
	assert.Equal(t, append(a, b...), frameDecompress(t, stream, 2))
}

func TestFrameReaderFallsBackToOneStream(t *testing.T) {
	data := frameInput(3 * FrameSize)
	// One frame of unrecorded size, as a streaming encoder writes.
	var stream bytes.Buffer
	zw, err := zstd.NewWriter(&stream)
	require.NoError(t, err)
	_, err = zw.Write(data)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	r, err := NewFrameReader(bytes.NewReader(stream.Bytes()), 2)
	require.NoError(t, err)
	_, parallel := r.(*FrameReader)
	assert.False(t, parallel)
	require.NoError(t, r.Close())
	assert.Equal(t, data, frameDecompress(t, stream.Bytes(), 2))

	// Too short to hold a frame header: the decoder reports it.
	_, err = io.ReadAll(mustFrameReader(t, []byte{0x28, 0xb5}))
	require.Error(t, err)
	// Empty input reads as empty, as NewReader's does.
	got, err := io.ReadAll(mustFrameReader(t, nil))
	require.NoError(t, err)
	assert.Empty(t, got)
}

func mustFrameReader(t *testing.T, data []byte) io.Reader {
	t.Helper()
	r, err := NewFrameReader(bytes.NewReader(data), 2)
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func TestFrameReaderCorruptInput(t *testing.T) {
	data := frameInput(3*FrameSize + 5)
	good := frameCompress(t, data, 1<<20)
	_, sizes := countFrames(t, good)
	require.Len(t, sizes, 4)

	// The second frame starts where the first ends. (A flipped byte of
	// content need not be an error: frames carry no checksum, the stored
	// object's SHA-256 catches that.)
	first := firstFrameLen(t, good)
	h, ok := parseFrameHeader(good[first:])
	require.True(t, ok)
	badMagic := bytes.Clone(good)
	badMagic[first] ^= 0xff
	badBlockType := bytes.Clone(good)
	badBlockType[first+h.size] |= blockTypeReserved << 1
	badBlockSize := bytes.Clone(good)
	badBlockSize[first+h.size+2] = 0xff // a block far larger than the stream

	for name, stream := range map[string][]byte{
		"truncated":          good[:len(good)-10],
		"bad magic":          badMagic,
		"reserved block":     badBlockType,
		"oversized block":    badBlockSize,
		"garbage at the end": append(bytes.Clone(good), 1, 2, 3),
	} {
		t.Run(name, func(t *testing.T) {
			r := mustFrameReader(t, stream)
			_, err := io.ReadAll(r)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "compress: zstd")
		})
	}
}

func firstFrameLen(t *testing.T, data []byte) int {
	t.Helper()
	fr := &FrameReader{r: bufioReader(data)}
	j := &frameJob{}
	_, err := fr.readFrame(j)
	require.NoError(t, err)
	return len(j.in)
}

func TestFrameReaderCloseEarly(t *testing.T) {
	data := frameInput(8 * FrameSize)
	compressed := frameCompress(t, data, 1<<20)
	r, err := NewFrameReader(bytes.NewReader(compressed), 2)
	require.NoError(t, err)
	buf := make([]byte, 1000)
	_, err = io.ReadFull(r, buf)
	require.NoError(t, err)
	assert.Equal(t, data[:1000], buf)
	// Closing with frames decoded ahead and queued ends every goroutine
	// (TestMain checks) and later reads fail.
	require.NoError(t, r.Close())
	_, err = r.Read(buf)
	require.Error(t, err)
	require.NoError(t, r.Close())
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReaderSize(bytes.NewReader(b), 64<<10) }

// TestFrameReaderNext: Next returns the stream's bytes in its own buffer,
// never more than asked nor past a frame, interleaved with Read as one
// stream, and Read's errors.
func TestFrameReaderNext(t *testing.T) {
	data := frameInput(3*FrameSize + 777)
	compressed := frameCompress(t, data, 1<<20)
	r := mustFrameReader(t, compressed).(*FrameReader) //nolint:forcetypeassert // FrameWriter's output
	var got []byte
	sizes := []int{1, 8192, 24576, FrameSize, 3 * FrameSize}
	for i := 0; ; i++ {
		n := sizes[i%len(sizes)]
		if i%3 == 2 {
			buf := make([]byte, n)
			k, err := r.Read(buf)
			got = append(got, buf[:k]...)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err)
			continue
		}
		b, err := r.Next(n)
		if errors.Is(err, io.EOF) {
			require.Empty(t, b)
			break
		}
		require.NoError(t, err)
		require.NotEmpty(t, b)
		require.LessOrEqual(t, len(b), min(n, FrameSize))
		require.Equal(t, len(b), cap(b), "the caller cannot append into the next bytes")
		got = append(got, b...)
	}
	assert.Equal(t, data, got)
	_, err := r.Next(1)
	require.ErrorIs(t, err, io.EOF)

	// A damaged stream fails Next as it fails Read.
	bad := bytes.Clone(compressed)
	bad[firstFrameLen(t, compressed)] ^= 0xff
	r = mustFrameReader(t, bad).(*FrameReader) //nolint:forcetypeassert // FrameWriter's output
	var err2 error
	for err2 == nil {
		_, err2 = r.Next(1 << 20)
	}
	assert.ErrorContains(t, err2, "compress: zstd")
}
