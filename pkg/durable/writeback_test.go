package durable

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriterWritesEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(path)
	require.NoError(t, err)
	data := bytes.Repeat([]byte("barnacle"), (2*Step+12345)/8)
	w := NewWriter(f)
	for rest := data; len(rest) > 0; {
		k := min(len(rest), 1<<20+3)
		n, err := w.Write(rest[:k])
		require.NoError(t, err)
		require.Equal(t, k, n)
		rest = rest[k:]
	}
	// Never more than a Step written without its writeback started.
	assert.GreaterOrEqual(t, w.started, int64(2*Step))
	assert.Less(t, w.written-w.started, int64(Step))
	w.Start()
	assert.Equal(t, w.written, w.started)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, data, got)
}

func TestWriterSplitsLargeWrites(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	require.NoError(t, err)
	defer f.Close()
	w := NewWriter(f)
	var sizes []int
	w.write = func(p []byte) (int, error) {
		sizes = append(sizes, len(p))
		return f.Write(p)
	}
	n, err := w.Write(make([]byte, 3*MaxWrite+100))
	require.NoError(t, err)
	assert.Equal(t, 3*MaxWrite+100, n)
	assert.Equal(t, []int{MaxWrite, MaxWrite, MaxWrite, 100}, sizes, "no write(2) above MaxWrite")

	sizes = nil
	_, err = w.Write(make([]byte, 10))
	require.NoError(t, err)
	assert.Equal(t, []int{10}, sizes, "small writes pass as they are")
}

func TestWriterReportsShortWrites(t *testing.T) {
	w := &Writer{fd: -1, write: func(p []byte) (int, error) { return len(p) / 2, io.ErrShortWrite }}
	n, err := w.Write(make([]byte, 2*MaxWrite))
	require.ErrorIs(t, err, io.ErrShortWrite)
	assert.Equal(t, MaxWrite/2, n, "the count stops at the failed write")
}

func TestWriterReportsWriteErrors(t *testing.T) {
	f, err := os.Open(filepath.Join(t.TempDir(), ".."))
	require.NoError(t, err)
	defer f.Close()
	_, err = NewWriter(f).Write([]byte("x"))
	require.Error(t, err, "a directory cannot be written")
}
