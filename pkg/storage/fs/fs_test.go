package fs_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/storage/storagetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newBackend(t *testing.T) *fs.Backend {
	t.Helper()
	b, err := fs.New(t.TempDir(), fs.Options{})
	require.NoError(t, err)
	return b
}

// sum is the checksum Put stores when it is given none.
func sum(data []byte) string { return storage.ChecksumOf(storage.DefaultAlgorithm, data) }

// sha256Sum is a checksum of the older form, which archives written before
// BLAKE3 hold and which callers may still give.
func sha256Sum(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// dirEntries lists every file and directory under root, relative to it.
func dirEntries(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(root, func(p string, _ os.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, err := filepath.Rel(root, p)
		out = append(out, filepath.ToSlash(rel))
		return err
	}))
	return out
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend { return newBackend(t) })
}

func TestLeftoverTempFiles(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	require.NoError(t, b.Put(ctx, "c/wals/seg1", bytes.NewReader([]byte("one")), storage.PutOptions{}))

	// What a writer that crashed before rename or link leaves behind.
	oldTop := filepath.Join(b.Root(), fs.TempPrefix+"crashed")
	oldWals := filepath.Join(b.Root(), "c", "wals", fs.TempPrefix+"crashed")
	fresh := filepath.Join(b.Root(), "c", "wals", fs.TempPrefix+"inprogress")
	for _, p := range []string{oldTop, oldWals, fresh} {
		require.NoError(t, os.WriteFile(p, []byte("partial"), 0o600))
	}
	old := time.Now().Add(-2 * time.Hour)
	require.NoError(t, os.Chtimes(oldTop, old, old))
	require.NoError(t, os.Chtimes(oldWals, old, old))

	infos, err := b.List(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, []string{"c/wals/seg1"}, names(infos), "temp files must never be listed")

	_, err = b.Stat(ctx, "c/wals/"+fs.TempPrefix+"crashed")
	require.ErrorIs(t, err, storage.ErrInvalidName, "temp files are not addressable as objects")

	// A later put of the same object is not blocked.
	existed, err := storage.PutOnce(ctx, b, "c/wals/seg2", []byte("two"))
	require.NoError(t, err)
	assert.False(t, existed)
	got, err := storage.ReadAll(ctx, b, "c/wals/seg2")
	require.NoError(t, err)
	assert.Equal(t, []byte("two"), got)

	require.NoError(t, b.Cleanup(ctx))
	assert.NoFileExists(t, oldTop)
	assert.NoFileExists(t, oldWals)
	assert.FileExists(t, fresh, "a temp file younger than TempMaxAge may belong to a running put")
	assert.ElementsMatch(t, []string{"c", "c/wals", "c/wals/seg1", "c/wals/seg2", "c/wals/" + fs.TempPrefix + "inprogress"},
		dirEntries(t, b.Root()))

	var cleaner storage.Cleaner
	require.Implements(t, &cleaner, storage.Backend(b))
}

func TestNoTempFilesLeftBehind(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	require.NoError(t, b.Put(ctx, "a/x", bytes.NewReader([]byte("1")), storage.PutOptions{}))
	require.NoError(t, b.Put(ctx, "a/x", bytes.NewReader([]byte("2")), storage.PutOptions{}))
	require.NoError(t, b.Put(ctx, "a/y", bytes.NewReader([]byte("3")), storage.PutOptions{IfAbsent: true}))
	require.ErrorIs(t, b.Put(ctx, "a/y", bytes.NewReader([]byte("4")), storage.PutOptions{IfAbsent: true}), storage.ErrExist)
	require.ErrorIs(t, b.Put(ctx, "a/z", bytes.NewReader([]byte("5")), storage.PutOptions{Checksum: sum([]byte("6"))}), storage.ErrChecksum)
	assert.ElementsMatch(t, []string{"a", "a/x", "a/y"}, dirEntries(t, b.Root()))
}

func TestCorruptionDetected(t *testing.T) {
	ctx := t.Context()
	data := bytes.Repeat([]byte("barnacle "), 100_000)
	cases := []struct {
		name    string
		sameLen bool // PutOnce sees only the stored checksum, so it cannot tell
		corrupt func(t *testing.T, path string)
	}{
		{"flipped byte", true, func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			defer f.Close() //nolint:errcheck // test
			_, err = f.WriteAt([]byte{data[123_456] ^ 0x01}, 123_456)
			require.NoError(t, err)
		}},
		{"truncated", false, func(t *testing.T, path string) {
			require.NoError(t, os.Truncate(path, int64(len(data)-1)))
		}},
		{"extended", false, func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			defer f.Close() //nolint:errcheck // test
			_, err = f.Write([]byte{0})
			require.NoError(t, err)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t)
			require.NoError(t, b.Put(ctx, "c/obj", bytes.NewReader(data), storage.PutOptions{}))
			tc.corrupt(t, filepath.Join(b.Root(), "c", "obj"))

			_, err := storage.ReadAll(ctx, b, "c/obj")
			require.ErrorIs(t, err, storage.ErrChecksum)
			var cerr *storage.ChecksumError
			require.ErrorAs(t, err, &cerr)
			assert.Equal(t, "c/obj", cerr.Name)
			assert.Equal(t, sum(data), cerr.Want)
			assert.NotEqual(t, cerr.Want, cerr.Got)

			// Reading on after the mismatch repeats it, never a clean EOF.
			rc, err := b.Get(ctx, "c/obj")
			require.NoError(t, err)
			defer rc.Close() //nolint:errcheck // test
			_, err = bytes.NewBuffer(nil).ReadFrom(rc)
			require.ErrorIs(t, err, storage.ErrChecksum)
			_, err = rc.Read(make([]byte, 10))
			require.ErrorIs(t, err, storage.ErrChecksum)

			// Stat reports the checksum as stored, not as recomputed.
			info, err := b.Stat(ctx, "c/obj")
			require.NoError(t, err)
			assert.Equal(t, sum(data), info.Checksum)

			// PutOnce of the original bytes goes by the stored checksum and
			// size: a changed size is reported as damage, a changed byte is
			// left for verify-backup to find.
			existed, err := storage.PutOnce(ctx, b, "c/obj", data)
			assert.True(t, existed)
			if tc.sameLen {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, storage.ErrConflict)
			assert.ErrorContains(t, err, "damaged")
			var conflict *storage.ConflictError
			require.ErrorAs(t, err, &conflict)
			got, err := storage.ReadAll(ctx, b, conflict.AsideName)
			require.NoError(t, err)
			assert.Equal(t, data, got)
		})
	}
}

func TestObjectWithoutChecksum(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	require.NoError(t, os.WriteFile(filepath.Join(b.Root(), "foreign"), []byte("copied by hand"), 0o600))

	_, err := b.Get(ctx, "foreign")
	require.ErrorIs(t, err, storage.ErrNoChecksum)
	assert.Contains(t, err.Error(), fs.XattrName)
	_, err = storage.ReadAll(ctx, b, "foreign")
	require.ErrorIs(t, err, storage.ErrNoChecksum)

	info, err := b.Stat(ctx, "foreign")
	require.NoError(t, err)
	assert.Empty(t, info.Checksum)
	assert.Equal(t, int64(len("copied by hand")), info.Size)

	infos, err := b.List(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, []string{"foreign"}, names(infos))

	// An unverifiable object is never taken as a match.
	existed, err := storage.PutOnce(ctx, b, "foreign", []byte("copied by hand"))
	assert.True(t, existed)
	var cerr *storage.ConflictError
	require.ErrorAs(t, err, &cerr)
	assert.Empty(t, cerr.ExistingChecksum)
	assert.Contains(t, err.Error(), "no stored checksum")
}

func TestInvalidStoredChecksum(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	require.NoError(t, b.Put(ctx, "obj", bytes.NewReader([]byte("x")), storage.PutOptions{}))
	require.NoError(t, unix.Setxattr(filepath.Join(b.Root(), "obj"), fs.XattrName, []byte("not a digest"), 0))
	_, err := b.Get(ctx, "obj")
	require.ErrorIs(t, err, storage.ErrInvalidChecksum)
	info, err := b.Stat(ctx, "obj")
	require.NoError(t, err)
	assert.Empty(t, info.Checksum)
}

func TestChecksumStoredInXattr(t *testing.T) {
	b := newBackend(t)
	data := []byte("hello")
	require.NoError(t, b.Put(t.Context(), "obj", bytes.NewReader(data), storage.PutOptions{}))
	buf := make([]byte, 128)
	n, err := unix.Getxattr(filepath.Join(b.Root(), "obj"), fs.XattrName, buf)
	require.NoError(t, err)
	assert.Equal(t, sum(data), string(buf[:n]))
}

// TestLargePutsHashEveryByte covers Put's paths for large objects: a
// reader copied in chunks (hashed beside the write), a reader that writes
// itself in one piece, and tiny reads (hashed in line), each past several
// writeback steps.
func TestLargePutsHashEveryByte(t *testing.T) {
	data := make([]byte, 17<<20+12345)
	for i := range data {
		data[i] = byte(i*7 + i>>13)
	}
	for name, r := range map[string]func() io.Reader{
		"chunks":          func() io.Reader { return struct{ io.Reader }{bytes.NewReader(data)} },
		"one WriteTo":     func() io.Reader { return bytes.NewReader(data) },
		"odd small reads": func() io.Reader { return iotest.HalfReader(struct{ io.Reader }{bytes.NewReader(data[:1<<20+3])}) },
	} {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t)
			src := r()
			want := data
			if name == "odd small reads" {
				want = data[:1<<20+3]
			}
			require.NoError(t, b.Put(t.Context(), "obj", src, storage.PutOptions{Checksum: sum(want)}))
			info, err := b.Stat(t.Context(), "obj")
			require.NoError(t, err)
			assert.Equal(t, sum(want), info.Checksum)
			rc, err := b.Get(t.Context(), "obj")
			require.NoError(t, err)
			got, err := io.ReadAll(rc)
			require.NoError(t, err)
			require.NoError(t, rc.Close())
			assert.True(t, bytes.Equal(want, got))
		})
	}
}

func TestDeleteRemovesEmptyDirectories(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	require.NoError(t, b.Put(ctx, "c/backups/1/base.tar", bytes.NewReader([]byte("x")), storage.PutOptions{}))
	require.NoError(t, b.Put(ctx, "c/archive.json", bytes.NewReader([]byte("{}")), storage.PutOptions{}))
	require.NoError(t, b.Delete(ctx, "c/backups/1/base.tar"))
	assert.Equal(t, []string{"c", "c/archive.json"}, dirEntries(t, b.Root()))
	require.NoError(t, b.Delete(ctx, "c/archive.json"))
	assert.Empty(t, dirEntries(t, b.Root()))
	assert.DirExists(t, b.Root(), "the root is never removed")
}

func TestPutOverDirectory(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	require.NoError(t, b.Put(ctx, "d/x", bytes.NewReader([]byte("x")), storage.PutOptions{}))
	for _, ifAbsent := range []bool{false, true} {
		err := b.Put(ctx, "d", bytes.NewReader([]byte("y")), storage.PutOptions{IfAbsent: ifAbsent})
		require.Error(t, err, "if-absent %v", ifAbsent)
		assert.NotErrorIs(t, err, storage.ErrExist, "if-absent %v: a directory is not an object", ifAbsent)
	}
	// And a file in the way of a directory.
	err := b.Put(ctx, "d/x/y", bytes.NewReader([]byte("z")), storage.PutOptions{})
	require.Error(t, err)
	assert.ElementsMatch(t, []string{"d", "d/x"}, dirEntries(t, b.Root()))
}

func TestFreeSpace(t *testing.T) {
	var b storage.Backend = newBackend(t)
	sr, ok := b.(storage.SpaceReporter)
	require.True(t, ok, "fs backend must report free space")
	free, err := sr.FreeSpace(t.Context())
	require.NoError(t, err)
	assert.Positive(t, free)
}

func TestNew(t *testing.T) {
	t.Run("relative path", func(t *testing.T) {
		_, err := fs.New("relative/dir", fs.Options{})
		require.ErrorContains(t, err, `"relative/dir" is not an absolute path`)
	})
	t.Run("missing directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "missing")
		_, err := fs.New(dir, fs.Options{})
		require.ErrorContains(t, err, dir+" does not exist")
		assert.NoDirExists(t, dir)
	})
	t.Run("missing directory created", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "missing", "deeper")
		b, err := fs.New(dir, fs.Options{CreateRoot: true})
		require.NoError(t, err)
		assert.Equal(t, dir, b.Root())
		assert.Equal(t, "file://"+dir, b.URL())
	})
	t.Run("not a directory", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		require.NoError(t, os.WriteFile(file, nil, 0o600))
		_, err := fs.New(file, fs.Options{})
		require.ErrorContains(t, err, file+" is not a directory")
	})
	t.Run("no user xattrs", func(t *testing.T) {
		fs.SetFsetxattrForTest(t, func(int, string, []byte, int) error { return unix.ENOTSUP })
		dir := t.TempDir()
		_, err := fs.New(dir, fs.Options{})
		require.ErrorIs(t, err, unix.ENOTSUP)
		assert.ErrorContains(t, err, dir)
		assert.ErrorContains(t, err, "user extended attribute")
		assert.ErrorContains(t, err, "ext4, xfs, btrfs")
		assert.Empty(t, dirEntries(t, dir), "the probe file must be removed")
	})
	t.Run("probe leaves nothing", func(t *testing.T) {
		dir := t.TempDir()
		_, err := fs.New(dir, fs.Options{})
		require.NoError(t, err)
		assert.Empty(t, dirEntries(t, dir))
	})
	t.Run("cleaned root", func(t *testing.T) {
		dir := t.TempDir()
		b, err := fs.New(dir+"/./", fs.Options{})
		require.NoError(t, err)
		assert.Equal(t, dir, b.Root())
	})
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	t.Run("absolute path", func(t *testing.T) {
		u, err := url.Parse("file://" + dir)
		require.NoError(t, err)
		b, err := fs.Open(u)
		require.NoError(t, err)
		assert.Equal(t, dir, b.Root())
		assert.Equal(t, "file://"+dir, b.URL())
	})
	cases := []struct {
		url  string
		want string
	}{
		{"file://var/lib/barnacle", `fs: archive URL "file://var/lib/barnacle" names host "var", but file URLs take no host: use three slashes and an absolute path, as in file:///var/lib/barnacle`},
		{"file:relative/dir", `fs: archive URL "file:relative/dir" has a relative path: use file:///absolute/path`},
		{"file:", `fs: archive URL "file:" has no absolute path`},
		{"file://" + dir + "?create=1", "has query parameters"},
		{"file://" + dir + "#x", "has a fragment"},
		{"file://user:secret@/" + dir, "has user information"},
		{"s3://bucket/prefix", `scheme is "s3", not file`},
		{"file://" + dir + "/missing", dir + "/missing does not exist"},
	}
	for _, tc := range cases {
		t.Run(tc.url, func(t *testing.T) {
			u, err := url.Parse(tc.url)
			require.NoError(t, err)
			_, err = fs.Open(u)
			require.ErrorContains(t, err, tc.want)
			assert.NotContains(t, err.Error(), "secret")
		})
	}
}

func names(infos []storage.ObjectInfo) []string {
	out := make([]string, len(infos))
	for i, info := range infos {
		out[i] = info.Name
	}
	return out
}
