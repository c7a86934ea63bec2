package durable

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSyncDir(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, SyncDir(dir))
	err := SyncDir(filepath.Join(dir, "gone"))
	require.ErrorIs(t, err, fs.ErrNotExist)
	assert.ErrorContains(t, err, filepath.Join(dir, "gone"))
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	write := func(s string) func(io.Writer) error {
		return func(w io.Writer) error { _, err := io.WriteString(w, s); return err }
	}
	entries := func() []string {
		es, err := os.ReadDir(dir)
		require.NoError(t, err)
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		return names
	}

	require.NoError(t, WriteFile(path, ".tmp-f-", 0o640, write("one")))
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "one", string(got))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), fi.Mode().Perm())

	require.NoError(t, WriteFile(path, ".tmp-f-", 0o600, write("two")))
	got, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "two", string(got), "replaced")

	boom := errors.New("boom")
	err = WriteFile(path, ".tmp-f-", 0o600, func(w io.Writer) error {
		_, _ = io.WriteString(w, "torn")
		// Mid-write, the bytes are in a temporary file beside path,
		// named after the prefix.
		matches, _ := filepath.Glob(filepath.Join(dir, ".tmp-f-*"))
		assert.Len(t, matches, 1)
		return boom
	})
	require.ErrorIs(t, err, boom)
	got, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "two", string(got), "untouched by a failed write")
	assert.Equal(t, []string{"f"}, entries(), "no temporary file left")

	err = WriteFile(filepath.Join(dir, "missing", "f"), ".tmp-", 0o600, write("x"))
	assert.ErrorContains(t, err, "create a temporary file for")
}

func TestWriteNamed(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, WriteNamed(dir, "seg.tmp-", 0o600, func(w io.Writer) (string, error) {
		_, err := io.WriteString(w, "bytes")
		return "seg.named-after-its-bytes", err
	}))
	got, err := os.ReadFile(filepath.Join(dir, "seg.named-after-its-bytes"))
	require.NoError(t, err)
	assert.Equal(t, "bytes", string(got))

	boom := errors.New("boom")
	err = WriteNamed(dir, "seg.tmp-", 0o600, func(w io.Writer) (string, error) {
		_, _ = io.WriteString(w, "torn")
		return "", boom
	})
	require.ErrorIs(t, err, boom)
	es, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, es, 1, "no temporary file left")
	assert.Equal(t, "seg.named-after-its-bytes", es[0].Name())

	err = WriteNamed(filepath.Join(dir, "missing"), "seg.tmp-", 0o600, func(io.Writer) (string, error) { return "x", nil })
	assert.ErrorContains(t, err, "create a temporary file for a file in "+filepath.Join(dir, "missing"))
}
