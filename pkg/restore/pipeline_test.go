package restore

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func patterned(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i>>11)
	}
	return b
}

func TestCopyPipelined(t *testing.T) {
	for _, n := range []int{0, 1, copyBufferSize - 1, copyBufferSize, 3*copyBufferSize + 17, 10 * copyBufferSize} {
		data := patterned(n)
		for name, r := range map[string]io.Reader{
			"whole":     bytes.NewReader(data),
			"half":      iotest.HalfReader(bytes.NewReader(data)),
			"data+EOF":  iotest.DataErrReader(bytes.NewReader(data)),
			"one bytes": iotest.OneByteReader(bytes.NewReader(data[:min(n, 5000)])),
		} {
			want := data
			if name == "one bytes" {
				want = data[:min(n, 5000)]
			}
			var out bytes.Buffer
			written, err := copyPipelined(&out, r)
			require.NoError(t, err, "%d bytes, %s", n, name)
			assert.Equal(t, int64(len(want)), written, "%d bytes, %s", n, name)
			assert.True(t, bytes.Equal(want, out.Bytes()), "%d bytes, %s: content", n, name)
		}
	}
}

type failingWriter struct {
	n, limit int
}

var errDiskFull = errors.New("disk full")

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.n+len(p) > w.limit {
		k := w.limit - w.n
		w.n = w.limit
		return k, errDiskFull
	}
	w.n += len(p)
	return len(p), nil
}

// countingSource counts what was read from it.
type countingSource struct {
	r io.Reader
	n int
}

func (c *countingSource) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n += k
	return k, err
}

func TestCopyPipelinedErrors(t *testing.T) {
	data := patterned(40 * copyBufferSize)

	t.Run("read error", func(t *testing.T) {
		// tar reports a stream that ends inside a file as
		// io.ErrUnexpectedEOF: it must stay an error.
		for _, rerr := range []error{io.ErrUnexpectedEOF, errors.New("checksum mismatch")} {
			r := io.MultiReader(bytes.NewReader(data[:copyBufferSize+5]), iotest.ErrReader(rerr))
			var out bytes.Buffer
			written, err := copyPipelined(&out, r)
			require.ErrorIs(t, err, rerr)
			assert.Equal(t, int64(out.Len()), written)
			assert.True(t, bytes.Equal(data[:out.Len()], out.Bytes()), "what was written is the start of the data")
		}
	})
	t.Run("write error stops reading", func(t *testing.T) {
		src := &countingSource{r: bytes.NewReader(data)}
		w := &failingWriter{limit: copyBufferSize + 10}
		written, err := copyPipelined(w, src)
		require.ErrorIs(t, err, errDiskFull)
		assert.Equal(t, int64(copyBufferSize+10), written)
		assert.LessOrEqual(t, src.n, (2+pipelineBuffers)*copyBufferSize, "reading stops soon after the failed write")
	})
	t.Run("short write", func(t *testing.T) {
		written, err := copyPipelined(shortWriter{}, bytes.NewReader(data))
		require.ErrorIs(t, err, io.ErrShortWrite)
		assert.Equal(t, int64(1), written)
	})
}

type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return min(len(p), 1), nil }

// TestUnpackLargeFiles runs files above pipelineMinSize through the
// unpacker: whole ones come out intact, and a stream cut inside one is an
// error, not a shorter file.
func TestUnpackLargeFiles(t *testing.T) {
	big := string(patterned(pipelineMinSize + 3*copyBufferSize + 123))
	archive := tarOf(t, file("base/1/16384", big), file("base/1/16385", "small"), file("base/1/16386", big[:pipelineMinSize]))

	s := newSandbox(t)
	require.NoError(t, s.unpack(t, archive))
	for name, want := range map[string]string{"base/1/16384": big, "base/1/16385": "small", "base/1/16386": big[:pipelineMinSize]} {
		got, err := os.ReadFile(filepath.Join(s.target, name))
		require.NoError(t, err)
		assert.True(t, want == string(got), "%s: %d bytes, want %d", name, len(got), len(want))
	}

	// Cut inside the first file's data.
	s = newSandbox(t)
	err := s.unpack(t, archive[:512+pipelineMinSize+copyBufferSize])
	require.Error(t, err)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

// TestReadAheadKeepsErrors checks that the read-ahead of decompressed
// archives passes on the end of its input as io.EOF and every error as
// itself, io.ErrUnexpectedEOF included (a decompressor's "cut short").
func TestReadAheadKeepsErrors(t *testing.T) {
	data := patterned(3*readAheadChunk + 5)
	ra := newReadAhead(bytes.NewReader(data))
	got, err := io.ReadAll(ra)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	ra.stop()

	for _, rerr := range []error{io.ErrUnexpectedEOF, errors.New("lz4: invalid block")} {
		ra := newReadAhead(io.MultiReader(bytes.NewReader(data[:readAheadChunk+7]), iotest.ErrReader(rerr)))
		got, err := io.ReadAll(ra)
		require.ErrorIs(t, err, rerr)
		assert.Len(t, got, readAheadChunk+7)
		ra.stop()
	}
}
