package compress

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// walLike returns n bytes shaped like WAL: 8 KiB pages of records with
// headers, counters and some random payload, then zero padding.
func walLike(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([]byte, n)
	for page := 0; page+8192 <= n; page += 8192 {
		binary.LittleEndian.PutUint16(out[page:], 0xD110)
		binary.LittleEndian.PutUint64(out[page+8:], uint64(page))
		fill := 2000 + rng.IntN(6000)
		for i := page + 24; i < page+fill; i += 64 {
			binary.LittleEndian.PutUint32(out[i:], uint32(i))
			for j := 8; j < 40 && i+j < page+fill; j++ {
				out[i+j] = byte('a' + rng.IntN(16))
			}
		}
	}
	return out
}

func decompress(t *testing.T, algorithm string, data []byte) []byte {
	t.Helper()
	r, err := NewReader(algorithm, bytes.NewReader(data))
	require.NoError(t, err)
	got, err := io.ReadAll(r)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	return got
}

func TestRoundTrip(t *testing.T) {
	inputs := map[string][]byte{
		"empty":          {},
		"one byte":       {42},
		"zeros 1 MiB":    make([]byte, 1<<20),
		"wal-like odd":   walLike(1<<20+12345, 1),
		"wal-like 3 MiB": walLike(3<<20, 2), // several zstd windows and lz4 blocks
	}
	for _, alg := range []string{None, Zstd, LZ4} {
		t.Run(alg, func(t *testing.T) {
			enc, err := NewEncoder(alg)
			require.NoError(t, err)
			assert.Equal(t, alg, enc.Algorithm())
			for name, in := range inputs {
				t.Run(name, func(t *testing.T) {
					out, err := enc.Compress(in)
					require.NoError(t, err)
					if alg != None && len(in) >= 1<<20 {
						assert.Less(t, len(out), len(in)/2, "wal-like data should compress")
					}
					got := decompress(t, alg, out)
					assert.True(t, bytes.Equal(in, got), "round trip of %d bytes gave %d", len(in), len(got))
				})
			}
		})
	}
}

// TestDeterministic: the archive writes compressed segments once, so a
// retry must produce the same bytes, with a reused encoder (after other
// inputs) and with a new one.
func TestDeterministic(t *testing.T) {
	a, b := walLike(2<<20+5000, 3), walLike(2<<20, 4)
	for _, alg := range []string{Zstd, LZ4} {
		t.Run(alg, func(t *testing.T) {
			enc1, err := NewEncoder(alg)
			require.NoError(t, err)
			out, err := enc1.Compress(a)
			require.NoError(t, err)
			first := bytes.Clone(out)
			_, err = enc1.Compress(b)
			require.NoError(t, err)
			again, err := enc1.Compress(a)
			require.NoError(t, err)
			assert.True(t, bytes.Equal(first, again), "same encoder, same input, other bytes")

			enc2, err := NewEncoder(alg)
			require.NoError(t, err)
			fresh, err := enc2.Compress(a)
			require.NoError(t, err)
			assert.True(t, bytes.Equal(first, fresh), "new encoder, same input, other bytes")
		})
	}
}

func TestConcatenatedFrames(t *testing.T) {
	a, b := walLike(100000, 5), walLike(70000, 6)
	for _, alg := range []string{Zstd, LZ4} {
		t.Run(alg, func(t *testing.T) {
			enc, err := NewEncoder(alg)
			require.NoError(t, err)
			fa, err := enc.Compress(a)
			require.NoError(t, err)
			both := bytes.Clone(fa)
			fb, err := enc.Compress(b)
			require.NoError(t, err)
			both = append(both, fb...)
			assert.Equal(t, append(bytes.Clone(a), b...), decompress(t, alg, both))
		})
	}
}

func TestCorruptInput(t *testing.T) {
	in := walLike(1<<20, 7)
	for _, alg := range []string{Zstd, LZ4} {
		t.Run(alg, func(t *testing.T) {
			enc, err := NewEncoder(alg)
			require.NoError(t, err)
			out, err := enc.Compress(in)
			require.NoError(t, err)
			for name, bad := range map[string][]byte{
				"truncated":    bytes.Clone(out[:len(out)/2]),
				"flipped byte": func() []byte { c := bytes.Clone(out); c[len(c)/2] ^= 0x55; return c }(),
				"not a frame":  []byte("000000010000000000000001 is not compressed"),
			} {
				t.Run(name, func(t *testing.T) {
					r, err := NewReader(alg, bytes.NewReader(bad))
					require.NoError(t, err)
					defer r.Close()
					got, err := io.ReadAll(r)
					if err == nil {
						// A flip may land where only the checksum notices,
						// which it must.
						assert.NotEqual(t, in, got)
						t.Fatalf("corrupt input read without error (%d bytes)", len(got))
					}
					assert.Contains(t, err.Error(), "compress: ")
				})
			}
		})
	}
}

// TestReaderLeavesSourceOpen: Close releases the decompressor only; the
// caller owns r.
func TestReaderLeavesSourceOpen(t *testing.T) {
	enc, err := NewEncoder(Zstd)
	require.NoError(t, err)
	out, err := enc.Compress([]byte("abc"))
	require.NoError(t, err)
	src := &closeTracker{Reader: bytes.NewReader(out)}
	r, err := NewReader(Zstd, src)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	assert.False(t, src.closed)
}

type closeTracker struct {
	io.Reader
	closed bool
}

func (c *closeTracker) Close() error { c.closed = true; return nil }

func TestUnknownAlgorithm(t *testing.T) {
	for _, alg := range []string{"", "zst", "gzip", "ZSTD"} {
		_, err := NewEncoder(alg)
		assert.Error(t, err, alg)
		_, err = NewReader(alg, bytes.NewReader(nil))
		assert.Error(t, err, alg)
	}
}
