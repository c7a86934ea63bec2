package fs_test

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
)

// asOtherUser runs fn with the effective user and group of the OS user
// postgres when the test runs as root (root ignores permissions), as
// itself otherwise. The saved user ID stays root, so root comes back
// afterwards. It changes every thread of the process: tests using it must
// not run in parallel.
func asOtherUser(t *testing.T, fn func()) (uid, gid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		fn()
		return os.Getuid(), os.Getgid()
	}
	u, err := user.Lookup("postgres")
	require.NoError(t, err, "tests run as root need the OS user postgres: useradd --system --user-group postgres")
	uid, err = strconv.Atoi(u.Uid)
	require.NoError(t, err)
	gid, err = strconv.Atoi(u.Gid)
	require.NoError(t, err)
	require.NoError(t, syscall.Setresgid(-1, gid, -1))
	require.NoError(t, syscall.Setresuid(-1, uid, -1))
	defer func() {
		// Root again before any assertion can stop the test.
		if err := syscall.Setresuid(-1, 0, -1); err != nil {
			panic(err)
		}
		if err := syscall.Setresgid(-1, 0, -1); err != nil {
			panic(err)
		}
	}()
	fn()
	return uid, gid
}

// TestReadOnlyOpen: a user who may read the archive but not write it (the
// postgres OS user running restore_command; a read-only mount) opens it
// read-only and reads it; only writers probe.
func TestReadOnlyOpen(t *testing.T) {
	base := t.TempDir()
	require.NoError(t, os.Chmod(base, 0o755))
	require.NoError(t, os.Chmod(filepath.Dir(base), 0o755))
	root := filepath.Join(base, "archive")
	require.NoError(t, os.Mkdir(root, 0o750))
	w, err := fs.New(root, fs.Options{})
	require.NoError(t, err)
	_, err = storage.PutOnce(t.Context(), w, "c1/wals/000000010000000000000001", []byte("segment"))
	require.NoError(t, err)

	// Readable, not writable, for the reader: root's files with the
	// reader's group and no group write (as shareable archives are set
	// up: chgrp, chmod g+rs); when not root, the directories 0555.
	_, gid := asOtherUser(t, func() {})
	require.NoError(t, filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if os.Geteuid() == 0 {
			return os.Lchown(p, 0, gid)
		}
		if d.IsDir() {
			return os.Chmod(p, 0o555)
		}
		return nil
	}))
	t.Cleanup(func() {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				_ = os.Chmod(p, 0o750)
			}
			return nil
		})
	})

	var (
		rwErr, roErr, getErr, listErr error
		got                           []byte
		listed                        []storage.ObjectInfo
	)
	asOtherUser(t, func() {
		_, rwErr = fs.New(root, fs.Options{})
		var r *fs.Backend
		r, roErr = fs.New(root, fs.Options{ReadOnly: true})
		if roErr != nil {
			return
		}
		got, getErr = storage.ReadAll(t.Context(), r, "c1/wals/000000010000000000000001")
		listed, listErr = r.List(t.Context(), "c1/wals/")
	})
	require.ErrorContains(t, rwErr, "is not writable", "a writer still probes")
	require.NoError(t, roErr)
	require.NoError(t, getErr)
	assert.Equal(t, "segment", string(got))
	require.NoError(t, listErr)
	require.Len(t, listed, 1)

	// A directory the reader cannot list is refused at open, naming it.
	require.NoError(t, os.Chmod(root, 0o700))
	asOtherUser(t, func() { _, roErr = fs.New(root, fs.Options{ReadOnly: true}) })
	require.ErrorContains(t, roErr, root+" is not readable")
}

// TestModesLetTheGroupRead: archive files are 0640 and directories 0750
// whatever the writer's umask, and directories keep the setgid bit they
// inherit, so the group of a setgid root can read everything below it.
func TestModesLetTheGroupRead(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	root := t.TempDir()
	wantGID := os.Getgid()
	if os.Geteuid() == 0 {
		wantGID = 4242
		require.NoError(t, os.Chown(root, 0, wantGID))
	}
	require.NoError(t, os.Chmod(root, 0o750|os.ModeSetgid))
	b, err := fs.New(root, fs.Options{})
	require.NoError(t, err)
	_, err = storage.PutOnce(t.Context(), b, "c1/wals/000000010000000000000001", []byte("segment"))
	require.NoError(t, err)
	sum := sha256.Sum256([]byte("part"))
	require.NoError(t, b.Append(t.Context(), "c1/wals/000000010000000000000002.partial", 0, []byte("part"), hex.EncodeToString(sum[:])))

	for _, p := range []string{"c1", "c1/wals", "c1/wals/000000010000000000000001", "c1/wals/000000010000000000000002.partial"} {
		fi, err := os.Stat(filepath.Join(root, p))
		require.NoError(t, err)
		want := os.FileMode(0o640)
		if fi.IsDir() {
			want = 0o750 | os.ModeDir | os.ModeSetgid
		}
		assert.Equal(t, want.String(), fi.Mode().String(), p)
		assert.Equal(t, uint32(wantGID), fi.Sys().(*syscall.Stat_t).Gid, p)
	}
	assert.False(t, strings.Contains(strings.Join(dirEntries(t, root), ","), ".tmp-"))
}
