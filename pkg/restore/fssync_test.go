package restore

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestKernelAtLeast(t *testing.T) {
	for release, want := range map[string]bool{
		"6.18.44-fc-v1300":   true,
		"5.8.0":              true,
		"5.10.0-21-amd64":    true,
		"5.7.19":             false,
		"4.19.0-25-cloud":    false,
		"5.8-rc1":            true,
		"5.15.0-91-generic+": true,
		"":                   false,
		"six.one":            false,
	} {
		assert.Equal(t, want, kernelAtLeast(release, 5, 8), release)
	}
}

// TestFSSyncerOnePerFilesystem checks that a restore syncs each
// filesystem it writes to once: two destinations on one filesystem share
// a syncfs, one on another filesystem (a tablespace on its own disk) gets
// its own.
func TestFSSyncerOnePerFilesystem(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	var other string
	var st1, st2 unix.Stat_t
	require.NoError(t, unix.Stat(dirs[0], &st1))
	if err := unix.Stat("/dev/shm", &st2); err == nil && st2.Dev != st1.Dev {
		d, err := os.MkdirTemp("/dev/shm", "barnacle-fssync-")
		require.NoError(t, err)
		t.Cleanup(func() { _ = os.RemoveAll(d) })
		other = d
		dirs = append(dirs, d)
	}
	var roots []*os.Root
	for _, d := range dirs {
		r, err := os.OpenRoot(d)
		require.NoError(t, err)
		defer r.Close()
		roots = append(roots, r)
	}
	s, err := newFSSyncer(roots, dirs)
	require.NoError(t, err)
	defer s.close()
	want := 1
	if other != "" {
		want = 2
	}
	assert.Len(t, s.files, want)
	assert.Equal(t, dirs[0], s.names[0])
	require.NoError(t, s.sync())
}

// TestUnpackRefusesLinkMadeDuringRestore: a directory replaced by a
// symbolic link after restore created it is not written through, even
// when the link stays inside the target directory (os.Root alone followed
// such a link; the openat2 path refuses every link).
func TestUnpackRefusesLinkMadeDuringRestore(t *testing.T) {
	if !openat2Works(t) {
		t.Skip("openat2 is not available")
	}
	s := newSandbox(t)
	root, err := os.OpenRoot(s.target)
	require.NoError(t, err)
	defer root.Close()
	u := newUnpacker(root, false, nil, nil)
	defer u.close()
	u.noSync = true
	require.NoError(t, u.unpack(t.Context(), bytes.NewReader(tarOf(t, dir("a"), file("a/one", "1")))))
	require.NoError(t, os.Rename(filepath.Join(s.target, "a"), filepath.Join(s.target, "a2")))
	require.NoError(t, os.Symlink("a2", filepath.Join(s.target, "a")))

	err = u.unpack(t.Context(), bytes.NewReader(tarOf(t, file("a/two", "2"))))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "a/two")
	_, err = os.Lstat(filepath.Join(s.target, "a2", "two"))
	assert.ErrorIs(t, err, os.ErrNotExist, "nothing written through the link")
}

// TestUnpackReplaces checks the create-then-clear path with and without
// openat2: a member replaces a file or a link that stands at its name,
// and a directory there is an error.
func TestUnpackReplaces(t *testing.T) {
	for _, noOpenat2 := range []bool{false, true} {
		s := newSandbox(t)
		root, err := os.OpenRoot(s.target)
		require.NoError(t, err)
		u := newUnpacker(root, false, nil, nil)
		u.noSync = true
		u.noOpenat2.Store(noOpenat2)
		err = u.unpack(t.Context(), bytes.NewReader(tarOf(t,
			file("f", "one"), file("f", "two"),
			symlink("g", "f"), file("g", "own"))))
		require.NoError(t, err, "openat2 off: %v", noOpenat2)
		for name, want := range map[string]string{"f": "two", "g": "own"} {
			b, err := os.ReadFile(filepath.Join(s.target, name))
			require.NoError(t, err)
			assert.Equal(t, want, string(b), "%s, openat2 off: %v", name, noOpenat2)
		}
		st, err := os.Lstat(filepath.Join(s.target, "g"))
		require.NoError(t, err)
		assert.True(t, st.Mode().IsRegular(), "the link is replaced, not followed")
		err = u.unpack(t.Context(), bytes.NewReader(tarOf(t, dir("d"), file("d", "x"))))
		require.ErrorContains(t, err, "a directory already exists there")
		require.NoError(t, u.finish())
		_ = root.Close()
	}
}

func openat2Works(t *testing.T) bool {
	t.Helper()
	fd, err := unix.Openat2(unix.AT_FDCWD, ".", &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH})
	if err != nil {
		return false
	}
	_ = unix.Close(fd)
	return true
}
