package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/restore"
)

// dirOwnedBy returns a new directory owned by uid:gid (needs root).
func dirOwnedBy(t *testing.T, uid, gid int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "owned")
	require.NoError(t, os.Mkdir(dir, 0o755))
	require.NoError(t, os.Chown(dir, uid, gid))
	return dir
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create directories owned by other users")
	}
}

// TestDecideOwner: run as root, a restore gives its files to the owner of
// the target (or of its nearest existing parent), as a DBA expects of
// pgBackRest, and warns when that is root; run as another user it warns
// when the directory belongs to someone else; --owner is root's.
func TestDecideOwner(t *testing.T) {
	needRoot(t)
	pgDir := dirOwnedBy(t, 12345, 23456)
	rootDir := dirOwnedBy(t, 0, 0)

	o, err := decideOwner(0, filepath.Join(pgDir, "restore", "deeper"), "")
	require.NoError(t, err)
	assert.Equal(t, &restore.Owner{UID: 12345, GID: 23456}, o.Owner)
	assert.Contains(t, o.Note, "uid 12345, the owner of "+pgDir)
	assert.Empty(t, o.Warning)

	o, err = decideOwner(0, filepath.Join(rootDir, "restore"), "")
	require.NoError(t, err)
	assert.Nil(t, o.Owner)
	assert.Contains(t, o.Warning, "restoring as root: the files will belong to root")
	assert.Contains(t, o.Warning, "--owner postgres")

	o, err = decideOwner(0, filepath.Join(rootDir, "restore"), "12345:777")
	require.NoError(t, err)
	assert.Equal(t, &restore.Owner{UID: 12345, GID: 777}, o.Owner)
	assert.Empty(t, o.Warning)

	o, err = decideOwner(12345, filepath.Join(pgDir, "restore"), "")
	require.NoError(t, err)
	assert.Nil(t, o.Owner)
	assert.Empty(t, o.Warning, "the user restores into its own directory")

	o, err = decideOwner(12345, filepath.Join(rootDir, "restore"), "")
	require.NoError(t, err)
	assert.Contains(t, o.Warning, "will belong to uid 12345, but "+rootDir+" belongs to root (uid 0)")

	_, err = decideOwner(12345, pgDir, "0")
	assert.ErrorContains(t, err, "only root can give files to another user")
	_, err = decideOwner(0, pgDir, "no-such-user-barnacle")
	assert.ErrorContains(t, err, `--owner "no-such-user-barnacle"`)
}

// TestRestoreAsRootGivesFilesToTheDirectoryOwner: barnacle restore run as
// root into a directory under one owned by another user leaves every
// restored file to that user, so PostgreSQL running as that user starts on
// it.
func TestRestoreAsRootGivesFilesToTheDirectoryOwner(t *testing.T) {
	needRoot(t)
	root, _ := tarArchive(t)
	parent := dirOwnedBy(t, 12345, 23456)
	dest := filepath.Join(parent, "restore")
	var out, errOut bytes.Buffer
	require.Equal(t, exitOK, run(t.Context(), restoreArgs(root, "--target-dir", dest), &out, &errOut), errOut.String())
	assert.Contains(t, out.String(), "restored files are owned by uid 12345")
	n := 0
	require.NoError(t, filepath.WalkDir(dest, func(path string, _ fs.DirEntry, err error) error {
		require.NoError(t, err)
		fi, err := os.Lstat(path)
		require.NoError(t, err)
		st := fi.Sys().(*syscall.Stat_t)
		assert.Equal(t, [2]uint32{12345, 23456}, [2]uint32{st.Uid, st.Gid}, path)
		n++
		return nil
	}))
	assert.Greater(t, n, 3)

	// Into a directory of root's: the files stay root's, and it says why
	// that will not start.
	out.Reset()
	errOut.Reset()
	dest2 := filepath.Join(dirOwnedBy(t, 0, 0), "restore")
	require.Equal(t, exitOK, run(t.Context(), restoreArgs(root, "--target-dir", dest2), &out, &errOut), errOut.String())
	assert.Equal(t, 1, strings.Count(errOut.String(), "restoring as root: the files will belong to root"), errOut.String())

	// A restore refused before it writes anything does not warn.
	errOut.Reset()
	require.Equal(t, exitFailure, run(t.Context(), restoreArgs(root, "--target-dir", dest2), &out, &errOut))
	assert.NotContains(t, errOut.String(), "restoring as root")
}
