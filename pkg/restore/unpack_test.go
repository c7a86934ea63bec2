package restore

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// entry is one tar member for tarOf.
type entry struct {
	name, link string
	typ        byte
	mode       int64
	body       string
}

func file(name, body string) entry {
	return entry{name: name, typ: tar.TypeReg, mode: 0o644, body: body}
}
func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, to string) entry {
	return entry{name: name, typ: tar.TypeSymlink, link: to, mode: 0o777}
}
func hardlink(name, to string) entry { return entry{name: name, typ: tar.TypeLink, link: to} }

var tarTime = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

func tarOf(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, ModTime: tarTime, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		require.NoError(t, tw.WriteHeader(h))
		if e.typ == tar.TypeReg {
			_, err := tw.Write([]byte(e.body))
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	return buf.Bytes()
}

// sandbox is a temporary parent holding the target directory, a
// tablespace directory, and files outside both that must never change.
type sandbox struct {
	parent, target, ts string
}

const fuzzOID = 16385

func newSandbox(t testing.TB) sandbox {
	t.Helper()
	p := t.TempDir()
	s := sandbox{parent: p, target: filepath.Join(p, "target"), ts: filepath.Join(p, "ts")}
	for _, d := range []string{s.target, s.ts, filepath.Join(p, "outside")} {
		require.NoError(t, os.Mkdir(d, 0o700))
	}
	require.NoError(t, os.WriteFile(filepath.Join(p, "outside", "file"), []byte("keep me"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(p, "passwd"), []byte("root:x:0:0"), 0o600))
	return s
}

func (s sandbox) unpack(t testing.TB, data []byte) error {
	t.Helper()
	root, err := os.OpenRoot(s.target)
	require.NoError(t, err)
	defer root.Close()
	u := newUnpacker(root, true, map[uint32]string{fuzzOID: s.ts}, nil)
	u.noSync = true
	if err := u.unpack(t.Context(), bytes.NewReader(data)); err != nil {
		return err
	}
	return u.finish()
}

// snapshot describes everything under the parent except the target
// directory: path -> type, mode, content digest or link target.
func (s sandbox) snapshot(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(s.parent, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == s.target {
			return filepath.SkipDir
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := st.Mode().String()
		switch {
		case st.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			desc += " -> " + l
		case st.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			desc += " " + hex.EncodeToString(sum[:])
		case st.IsDir():
			desc += " " + st.ModTime().String()
		}
		out[p] = desc
		return nil
	})
	require.NoError(t, err)
	return out
}

// hostile are archives that try to write outside the target directory.
func hostile(t testing.TB) map[string][]byte {
	return map[string][]byte{
		"dotdot":                 tarOf(t, file("../outside/file", "pwned")),
		"dotdot inside":          tarOf(t, file("a/../../passwd", "pwned")),
		"absolute":               tarOf(t, file("/etc/barnacle-fuzz-x", "pwned")),
		"symlink escape":         tarOf(t, symlink("l", "../outside"), file("l/file", "pwned")),
		"absolute symlink":       tarOf(t, symlink("l", "/tmp"), file("l/barnacle-fuzz-x", "pwned")),
		"symlink then overwrite": tarOf(t, symlink("conf", "../passwd"), file("conf", "pwned")),
		"relative link chain":    tarOf(t, dir("a"), symlink("a/b", ".."), symlink("c", "a/b/.."), file("c/outside/file", "pwned")),
		"hard link outside":      tarOf(t, hardlink("pw", "/etc/passwd")),
		"hard link dotdot":       tarOf(t, hardlink("pw", "../passwd"), file("pw", "pwned")),
		"hard link via symlink":  tarOf(t, symlink("l", "../outside"), hardlink("pw", "l/file")),
		"tablespace write through": tarOf(t, dir("pg_tblspc"), symlink("pg_tblspc/16385", "/anywhere"),
			file("pg_tblspc/16385/PG_15/x", "pwned")),
		"device": tarOf(t, entry{name: "null", typ: tar.TypeChar}),
		"fifo":   tarOf(t, entry{name: "fifo", typ: tar.TypeFifo}),
	}
}

func TestUnpackHostile(t *testing.T) {
	for name, data := range hostile(t) {
		t.Run(name, func(t *testing.T) {
			s := newSandbox(t)
			before := s.snapshot(t)
			err := s.unpack(t, data)
			require.Error(t, err)
			t.Logf("%v", err)
			assert.Equal(t, before, s.snapshot(t))
			_, err = os.Lstat("/etc/barnacle-fuzz-x")
			assert.ErrorIs(t, err, fs.ErrNotExist)
		})
	}
}

func TestUnpackBase(t *testing.T) {
	s := newSandbox(t)
	data := tarOf(t,
		file("backup_label", "START WAL LOCATION: 0/2000028"),
		file("tablespace_map", "16385 /old/ts\n"),
		dir("global"),
		file("global/pg_control", "control"),
		file("global/pg_internal.init", "stale"),
		dir("base/1"),
		entry{name: "base/1/1259", typ: tar.TypeReg, mode: 0o666, body: "rel"},
		dir("pg_wal"),
		dir("pg_wal/archive_status"),
		file("pg_wal/000000010000000000000002", "wal"),
		file("pg_wal/archive_status/000000010000000000000002.done", ""),
		dir("pg_tblspc"),
		symlink("pg_tblspc/16385", "/old/ts"),
		symlink("postgresql.auto.conf", "/dev/null"),
		symlink("base/current", "1"),
		hardlink("base/1/1259.copy", "base/1/1259"),
		file("postmaster.pid", "1\n/old\n"),
		file("postmaster.opts", "postgres"),
		file("standby.signal", ""),
		file("recovery.signal", ""),
		entry{name: "./", typ: tar.TypeDir, mode: 0o777},
	)
	require.NoError(t, s.unpack(t, data))

	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(s.target, name))
		require.NoError(t, err, name)
		return string(b)
	}
	assert.Equal(t, "16385 "+s.ts+"\n", read("tablespace_map"))
	assert.Equal(t, "control", read(pgControlTempName), "pg_control waits under a temporary name")
	link, err := os.Readlink(filepath.Join(s.target, "pg_tblspc", "16385"))
	require.NoError(t, err)
	assert.Equal(t, s.ts, link)
	link, err = os.Readlink(filepath.Join(s.target, "postgresql.auto.conf"))
	require.NoError(t, err)
	assert.Equal(t, "/dev/null", link)
	assert.Equal(t, "rel", read("base/current/1259"))
	assert.Equal(t, "rel", read("base/1/1259.copy"))
	for _, gone := range []string{"global/pg_control", "global/pg_internal.init", "pg_wal/000000010000000000000002",
		"pg_wal/archive_status/000000010000000000000002.done", "postmaster.pid", "postmaster.opts", "standby.signal", "recovery.signal"} {
		_, err := os.Lstat(filepath.Join(s.target, gone))
		assert.ErrorIs(t, err, fs.ErrNotExist, gone)
	}
	st, err := os.Stat(filepath.Join(s.target, "pg_wal", "archive_status"))
	require.NoError(t, err)
	assert.True(t, st.IsDir())
	// Modes as PostgreSQL wants them, times as archived.
	st, err = os.Stat(filepath.Join(s.target, "base", "1", "1259"))
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o640), st.Mode().Perm())
	assert.True(t, st.ModTime().Equal(tarTime))
	st, err = os.Stat(filepath.Join(s.target, "base", "1"))
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o750), st.Mode().Perm())
	assert.True(t, st.ModTime().Equal(tarTime), "directory time set after its contents")
	st, err = os.Stat(s.target)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o700), st.Mode().Perm()&0o700)
}

func TestRewriteTablespaceMap(t *testing.T) {
	got, err := rewriteTablespaceMap([]byte("16385 /a b\n16386 /x\\\\y\n"), map[uint32]string{16385: "/new dir", 16386: `/n\m`})
	require.NoError(t, err)
	assert.Equal(t, "16385 /new dir\n16386 /n\\\\m\n", string(got))
	_, err = rewriteTablespaceMap([]byte("16387 /a\n"), map[uint32]string{16385: "/n"})
	assert.ErrorContains(t, err, "tablespace 16387")
	_, err = rewriteTablespaceMap([]byte("junk\n"), nil)
	assert.Error(t, err)
}

// FuzzUnpack feeds arbitrary tar bytes to the base archive unpacker and
// checks that nothing outside the target directory changes.
func FuzzUnpack(f *testing.F) {
	f.Add(tarOf(f, dir("global"), file("global/pg_control", "c"), symlink("pg_tblspc/16385", "/x"),
		symlink("postgresql.auto.conf", "/dev/null"), file("tablespace_map", "16385 /x\n"), hardlink("h", "global/pg_control")))
	for _, data := range hostile(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := newSandbox(t)
		before := s.snapshot(t)
		_ = s.unpack(t, data)
		after := s.snapshot(t)
		if tsAfter, tsBefore := after[s.ts], before[s.ts]; tsAfter != tsBefore {
			t.Errorf("the tablespace directory changed: %s -> %s", tsBefore, tsAfter)
		}
		assert.Equal(t, before, after, "something outside the target directory changed")
		if _, err := os.Lstat("/etc/barnacle-fuzz-x"); err == nil {
			t.Fatal("wrote /etc/barnacle-fuzz-x")
		}
	})
}

func TestCleanName(t *testing.T) {
	for name, want := range map[string]string{
		"base/1/16384": "base/1/16384", "./base/": "base", "./": "", "a/..b/c..": "a/..b/c..", "a//b": "a/b",
	} {
		got, err := cleanName(name)
		require.NoError(t, err, name)
		assert.Equal(t, want, got, name)
	}
	for _, name := range []string{"", "..", "../x", "a/../b", "a/..", "/etc/passwd", "a\x00b", "a/b/../../.."} {
		_, err := cleanName(name)
		assert.Error(t, err, "%q", name)
	}
}
