package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/barnacle-pg/barnacle/pkg/request"
)

// FuzzParseRestoreRequest: any bytes under requests/restore/ either are
// rejected or become a restore.Request whose every directory lies strictly
// below restore-root, with symlinks resolved (the root holds a link that
// points outside), and with at most one recovery target.
func FuzzParseRestoreRequest(f *testing.F) {
	base := f.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{root, outside, filepath.Join(root, "sub")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			f.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(root, "escape")); err != nil {
		f.Fatal(err)
	}
	rroot, err := filepath.EvalSymlinks(root)
	if err != nil {
		f.Fatal(err)
	}
	r := &restores{opts: restoreOptions{Cluster: "stolon-cluster", ArchiveURL: "file:///var/lib/barnacle", RestoreRoot: root}}
	for _, s := range []string{
		`{"keeper":"keeper1","backup":"latest","targetDir":"ROOT/pitr","target":{"time":"2026-11-24T17:00:00Z"},"targetTimeline":"latest","targetAction":"pause","force":false}`,
		`{"keeper":"keeper1","targetDir":"ROOT/sub/x","target":{"lsn":"0/3000060"}}`,
		`{"keeper":"keeper1","targetDir":"ROOT/x","target":{"xid":"1234"},"targetTimeline":"2"}`,
		`{"keeper":"keeper1","targetDir":"ROOT/x","target":{"name":"after_100","immediate":true}}`,
		`{"keeper":"keeper1","targetDir":"ROOT/x","tablespaceMap":{"16385":"ROOT/ts","0":"ROOT/y"}}`,
		`{"keeper":"keeper1","targetDir":"ROOT/escape/x"}`,
		`{"keeper":"keeper1","targetDir":"ROOT/../outside"}`,
		`{"keeper":"keeper1","targetDir":"ROOT"}`,
		`{"keeper":"keeper1","targetDir":"relative/dir"}`,
		`{"keeper":"keeper1","targetDir":"ROOT/x","tablespaceMap":{"16385":"ROOT/escape"}}`,
		`{"keeper":"keeper1","targetDir":"ROOT/x","dataOnly":true,"unknown":1}`,
		`{"keeper":`, `null`, ``,
	} {
		f.Add([]byte(strings.ReplaceAll(s, "ROOT", root)))
	}
	// below checks independently of underRoot: the accepted directory is
	// clean, strictly below the resolved root, and no existing component
	// of it is a symlink (what the restore writes through stays there).
	below := func(t *testing.T, field, dir string) {
		t.Helper()
		if dir != filepath.Clean(dir) || !strings.HasPrefix(dir, rroot+string(filepath.Separator)) {
			t.Fatalf("%s %q accepted outside restore-root %s", field, dir, rroot)
		}
		for p := dir; p != rroot; p = filepath.Dir(p) {
			if st, err := os.Lstat(p); err == nil && st.Mode()&os.ModeSymlink != 0 {
				t.Fatalf("%s %q accepted through the symlink %s", field, dir, p)
			}
		}
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		req, err := request.ParseRestore(value)
		if err != nil {
			return
		}
		out, err := r.toRequest(req)
		if err != nil {
			return
		}
		below(t, "targetDir", out.TargetDir)
		for oid, dir := range out.TablespaceMap {
			if oid == 0 {
				t.Fatalf("tablespace OID 0 accepted")
			}
			below(t, "tablespaceMap", dir)
		}
		set := 0
		for _, v := range []bool{req.Target.Time != "", req.Target.LSN != "", req.Target.XID != "", req.Target.Name != "", req.Target.Immediate} {
			if v {
				set++
			}
		}
		if set > 1 {
			t.Fatalf("request with %d targets accepted", set)
		}
	})
}
