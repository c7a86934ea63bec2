package drill

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
)

// TestRemoveLeftovers: a killed drill's directory is removed; one a
// running drill holds locked, one with a live server, and anything not
// named like a drill are left alone.
func TestRemoveLeftovers(t *testing.T) {
	root := t.TempDir()
	mk := func(name, pid string) string {
		dir := filepath.Join(root, name)
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "data"), 0o700))
		if pid != "" {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "data", "postmaster.pid"), []byte(pid+"\n/x\n"), 0o600))
		}
		return dir
	}
	// A process that has exited: its PID is free.
	cmd := exec.Command("true")
	require.NoError(t, cmd.Run())
	dead := mk(dirPrefix+"dead", strconv.Itoa(cmd.Process.Pid))
	noPID := mk(dirPrefix+"restoring-killed", "")
	live := mk(dirPrefix+"live", strconv.Itoa(os.Getpid()))
	locked := mk(dirPrefix+"locked", "")
	other := mk("someone-elses", "")
	f, err := os.Open(locked)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, unix.Flock(int(f.Fd()), unix.LOCK_EX))

	r := &runner{opts: Options{ScratchRoot: root}, log: hclog.NewNullLogger()}
	r.removeLeftovers()
	assert.NoDirExists(t, dead)
	assert.NoDirExists(t, noPID)
	assert.DirExists(t, live, "a directory with a running server is left alone")
	assert.DirExists(t, locked, "a directory a drill holds is left alone")
	assert.DirExists(t, other)
}

// TestRemoveSocketLeftovers: a socket directory a killed drill left in the
// temporary directory (a deep restore-root) is removed at the next drill's
// start; one a running drill holds locked, one whose server lock file
// names a live process, a new one (another process may be about to lock
// it), and anything not named like one are left alone.
func TestRemoveSocketLeftovers(t *testing.T) {
	tmp := t.TempDir()
	old := socketTempDir
	socketTempDir = func() string { return tmp }
	t.Cleanup(func() { socketTempDir = old })
	past := time.Now().Add(-2 * socketSweepAge)
	mk := func(name, pid string, mtime time.Time) string {
		dir := filepath.Join(tmp, name)
		require.NoError(t, os.Mkdir(dir, 0o700))
		if pid != "" {
			require.NoError(t, os.WriteFile(filepath.Join(dir, ".s.PGSQL.5432.lock"), []byte(pid+"\n/x\n"), 0o600))
		}
		require.NoError(t, os.Chtimes(dir, mtime, mtime))
		return dir
	}
	cmd := exec.Command("true")
	require.NoError(t, cmd.Run())
	dead := mk(socketPrefix+"dead", strconv.Itoa(cmd.Process.Pid), past)
	noLock := mk(socketPrefix+"nolock", "", past)
	live := mk(socketPrefix+"live", strconv.Itoa(os.Getpid()), past)
	young := mk(socketPrefix+"young", "", time.Now())
	locked := mk(socketPrefix+"locked", "", past)
	other := mk("barnacle-something-else", "", past)
	f, err := os.Open(locked)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, unix.Flock(int(f.Fd()), unix.LOCK_EX))

	// The sweep runs with the scratch leftovers', at a drill's start.
	r := &runner{opts: Options{ScratchRoot: t.TempDir()}, log: hclog.NewNullLogger()}
	r.removeLeftovers()
	assert.NoDirExists(t, dead)
	assert.NoDirExists(t, noLock)
	assert.DirExists(t, live, "a socket directory with a running server is left alone")
	assert.DirExists(t, young, "a new socket directory may be about to be locked")
	assert.DirExists(t, locked, "a socket directory a drill holds is left alone")
	assert.DirExists(t, other)

	// A drill's own socket directory is locked from its creation to its
	// removal, so that a sweep elsewhere leaves it alone.
	deep := filepath.Join(t.TempDir(), strings.Repeat("d", maxSocketPath))
	require.NoError(t, os.Mkdir(deep, 0o700))
	own := &runner{opts: Options{ScratchRoot: deep}, log: hclog.NewNullLogger(), d: &catalog.Drill{ID: "own"}}
	require.NoError(t, own.makeScratch())
	require.NotEqual(t, own.scratch, own.socketDir, "a deep restore-root puts the socket elsewhere")
	require.Equal(t, tmp, filepath.Dir(own.socketDir))
	require.NoError(t, os.Chtimes(own.socketDir, past, past))
	r.removeLeftovers()
	assert.DirExists(t, own.socketDir, "a running drill's socket directory is left alone")
	require.NoError(t, own.cleanup(t.Context()))
	assert.NoDirExists(t, own.socketDir)
	assert.NoDirExists(t, own.scratch)
}

// TestRunRefusesBadOptions: options a drill cannot run with give a failed
// record naming what to set, and nothing under restore-root.
func TestRunRefusesBadOptions(t *testing.T) {
	b, err := fs.New(t.TempDir(), fs.Options{})
	require.NoError(t, err)
	root := t.TempDir()
	base := Options{Backend: b, Cluster: "c", ArchiveURL: "file:///x", Executable: "/bin/true", ScratchRoot: root, PGBinDir: "/usr/lib/postgresql/15/bin"}
	cases := []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"relative root", func(o *Options) { o.ScratchRoot = "restores" }, `restore-root "restores": set an absolute directory`},
		{"missing root", func(o *Options) { o.ScratchRoot = filepath.Join(root, "nope") }, "is not a directory"},
		{"no bin dir", func(o *Options) { o.PGBinDir = root }, "pg-bin-dir " + strconv.Quote(root) + " has no postgres"},
		{"no executable", func(o *Options) { o.Executable = "" }, "barnacle executable"},
	}
	if os.Geteuid() == 0 {
		cases = append(cases, struct {
			name string
			edit func(*Options)
			want string
		}{"root without owner", func(o *Options) { o.Owner = nil }, "running as root but no owner"})
	}
	for i, tc := range cases {
		o := base
		o.ID = "bad-" + strconv.Itoa(i)
		tc.edit(&o)
		d, err := Run(context.Background(), o)
		require.Error(t, err, tc.name)
		assert.Contains(t, err.Error(), tc.want, tc.name)
		assert.Equal(t, catalog.DrillFailed, d.Status, tc.name)
	}
	drills, err := catalog.ListDrills(context.Background(), b, "c")
	require.NoError(t, err)
	assert.Len(t, drills, len(cases), "each refusal is recorded")
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	assert.Empty(t, entries)

	_, err = Run(context.Background(), Options{ID: "../x", Backend: b, Cluster: "c"})
	assert.ErrorIs(t, err, catalog.ErrInvalidDrillID)

	// An ID already recorded: refused at once, the record kept.
	o := base
	o.ID = "bad-0"
	_, err = Run(context.Background(), o)
	assert.ErrorContains(t, err, "c/drills/bad-0.json already records a drill with ID bad-0")
	drills, err = catalog.ListDrills(context.Background(), b, "c")
	require.NoError(t, err)
	assert.Len(t, drills, len(cases))
	for _, d := range drills {
		if d.ID == "bad-0" {
			assert.Contains(t, d.Error, `restore-root "restores"`, "the first record stays")
		}
	}
}
