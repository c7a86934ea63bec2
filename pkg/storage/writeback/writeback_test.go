package writeback

import (
	"bytes"
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
	w := New(f)
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

func TestWriterReportsWriteErrors(t *testing.T) {
	f, err := os.Open(filepath.Join(t.TempDir(), ".."))
	require.NoError(t, err)
	defer f.Close()
	_, err = New(f).Write([]byte("x"))
	require.Error(t, err, "a directory cannot be written")
}
