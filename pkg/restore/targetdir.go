package restore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var (
	// ErrInUse means a destination directory belongs to a running
	// PostgreSQL server; Force does not override it.
	ErrInUse = errors.New("restore: directory in use by a running PostgreSQL server")
	// ErrNotEmpty means a destination directory is not empty and Force was
	// not given.
	ErrNotEmpty = errors.New("restore: directory is not empty")
)

// movedAsideInfix names the sibling that a forced restore moves old
// contents into: "<dir>.barnacle-old-<UTC time>".
const movedAsideInfix = ".barnacle-old-"

// ErrOutside means a destination does not lie below the fence
// (Options.Fence, the agent's restore-root), symbolic links resolved;
// nothing was written.
var ErrOutside = errors.New("restore: directory outside the fence")

// ErrRedirected means a destination was redirected outside the fence (a
// symbolic link or rename made under it) after it was inspected; the
// fence refused to follow, so nothing was written outside, but the
// restore stopped.
var ErrRedirected = errors.New("restore: directory redirected outside the fence")

// fence is the directory every write of a restore stays below, opened
// once: destinations are created, inspected, moved aside and unpacked
// through root by names relative to it, so a symbolic link or rename made
// after a check cannot redirect a write outside (os.Root refuses to leave
// it). Without Options.Fence it is "/", and only the by-name checks apply.
type fence struct {
	root *os.Root
	// path is the absolute path root was opened on, as the kernel names
	// the opened directory.
	path string
	// shown names the fence in messages ("restore-root /srv/restore").
	shown string
}

// openFence opens dir once; shown names it in messages.
func openFence(dir, shown string) (*fence, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("restore: %s is not an absolute path", shown)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("restore: open %s: %w", shown, err)
	}
	p, err := handlePath(root, ".")
	if err != nil {
		_ = root.Close()
		return nil, fmt.Errorf("restore: open %s: %w", shown, err)
	}
	return &fence{root: root, path: p, shown: shown}, nil
}

// handlePath opens name through root and returns the absolute path of
// what was opened, as the kernel knows it (/proc/self/fd): the real
// location, whatever links led there.
func handlePath(root *os.Root, name string) (string, error) {
	f, err := root.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return rootPath(f)
}

func rootPath(f *os.File) (string, error) {
	p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return "", fmt.Errorf("find the path of %s: %w", f.Name(), err)
	}
	return p, nil
}

// rel returns abs relative to the fence, refusing the fence itself and
// anything outside it.
func (fc *fence) rel(abs, what, given string) (string, error) {
	r, err := filepath.Rel(fc.path, abs)
	if err != nil || r == "." || r == ".." || strings.HasPrefix(r, "../") {
		return "", fmt.Errorf("%w: %s %s lies outside %s (symbolic links resolved: %s); restore below it", ErrOutside, what, given, fc.shown, abs)
	}
	return r, nil
}

// outside explains an error of an operation through the fence on given:
// when given now leads outside the fence (a symbolic link or rename made
// since it was inspected, which os.Root refused to follow), it wraps
// ErrRedirected.
func (fc *fence) outside(err error, what, given string) error {
	if err == nil {
		return nil
	}
	if p, rerr := ResolveExisting(given); rerr == nil {
		if _, oerr := fc.rel(p, what, given); oerr != nil {
			return fmt.Errorf("%w: %s %s now leads to %s, outside %s: %v", ErrRedirected, what, given, p, fc.shown, err)
		}
	}
	return err
}

// destination is one directory a restore writes into, after inspection.
type destination struct {
	// path is absolute; for an existing directory reached through symbolic
	// links, the resolved path.
	path string
	// rel is path relative to the fence; every operation uses it, through
	// the fence's root.
	rel string
	// what names it in messages ("target directory", "tablespace 16385").
	what     string
	exists   bool
	nonEmpty bool
}

// inspectDir looks at dir without changing anything: it refuses a
// directory outside the fence, one a running server uses (always) and a
// non-empty one without force.
func inspectDir(fc *fence, dir, what string, force bool, tablespace bool) (destination, error) {
	if !filepath.IsAbs(dir) {
		return destination{}, fmt.Errorf("restore: %s %q is not an absolute path", what, dir)
	}
	d := destination{what: what}
	var err error
	if d.path, err = ResolveExisting(filepath.Clean(dir)); err != nil {
		return d, fmt.Errorf("restore: inspect %s %s: %w", what, dir, err)
	}
	if d.rel, err = fc.rel(d.path, what, dir); err != nil {
		return d, err
	}
	st, err := fc.root.Stat(d.rel)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return d, nil
	case err != nil:
		return d, fmt.Errorf("restore: inspect %s %s: %w", what, dir, fc.outside(err, what, dir))
	case !st.IsDir():
		return d, fmt.Errorf("restore: %s %s exists and is not a directory", what, dir)
	}
	d.exists = true
	if pid, live := livePostmaster(d.path); live {
		return d, fmt.Errorf("%w: %s %s holds postmaster.pid of the running process %d; stop that server or choose another directory",
			ErrInUse, what, dir, pid)
	}
	if tablespace {
		if pid, dataDir, ok := tablespaceInUse(d.path); ok {
			return d, fmt.Errorf("%w: %s %s is a tablespace of the server running in %s (pid %d); map the tablespace elsewhere",
				ErrInUse, what, dir, dataDir, pid)
		}
	}
	f, err := fc.root.Open(d.rel)
	if err != nil {
		return d, fmt.Errorf("restore: inspect %s %s: %w", what, dir, fc.outside(err, what, dir))
	}
	names, err := f.Readdirnames(-1)
	_ = f.Close()
	if err != nil {
		return d, fmt.Errorf("restore: inspect %s %s: %w", what, dir, err)
	}
	if len(names) > 0 {
		slices.Sort(names)
		d.nonEmpty = true
		if !force {
			return d, fmt.Errorf("%w: %s %s holds %d entries (first %q); empty it or use --force (\"force\": true in an etcd request), which moves the old contents aside",
				ErrNotEmpty, what, dir, len(names), names[0])
		}
	}
	return d, nil
}

// ResolveExisting resolves symlinks in the longest existing prefix of path
// and appends the rest. The agent checks a request's directories against
// restore-root with it too.
func ResolveExisting(path string) (string, error) {
	rest := ""
	for p := path; ; p = filepath.Dir(p) {
		r, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(r, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		if p == filepath.Dir(p) {
			return path, nil
		}
		rest = filepath.Join(filepath.Base(p), rest)
	}
}

// livePostmaster reports whether dir holds the postmaster.pid of a process
// that is alive and is that directory's postmaster: the PID answers
// kill(pid, 0) and either the lock file's data directory line names dir or
// the process works in dir. A stale lock file whose PID was reused by an
// unrelated process does not count.
func livePostmaster(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	lines := strings.SplitN(string(b), "\n", 3)
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || pid <= 0 {
		return 0, false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return pid, false
	}
	if len(lines) > 1 && sameDir(strings.TrimSpace(lines[1]), dir) {
		return pid, true
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && sameDir(cwd, dir) {
		return pid, true
	}
	return pid, false
}

// tablespaceInUse reports whether a running postmaster (found in /proc: a
// process whose working directory holds a postmaster.pid naming it) has a
// pg_tblspc link to dir. Processes this user cannot inspect are skipped.
func tablespaceInUse(dir string) (pid int, dataDir string, ok bool) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, "", false
	}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", p))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(cwd, "postmaster.pid"))
		if err != nil || strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]) != strconv.Itoa(p) {
			continue
		}
		links, err := os.ReadDir(filepath.Join(cwd, "pg_tblspc"))
		if err != nil {
			continue
		}
		for _, l := range links {
			t, err := os.Readlink(filepath.Join(cwd, "pg_tblspc", l.Name()))
			if err == nil && sameDir(t, dir) {
				return p, cwd, true
			}
		}
	}
	return 0, "", false
}

// sameDir compares two directory paths after resolving symbolic links.
func sameDir(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	if ra, err := filepath.EvalSymlinks(a); err == nil {
		a = ra
	}
	if rb, err := filepath.EvalSymlinks(b); err == nil {
		b = rb
	}
	return filepath.Clean(a) == filepath.Clean(b)
}

// checkOverlap refuses destinations that contain one another: moving one
// aside would move the other, and PostgreSQL warns against tablespaces
// inside the data directory.
func checkOverlap(dests []destination) error {
	for i, a := range dests {
		for _, b := range dests[i+1:] {
			if within(a.path, b.path) || within(b.path, a.path) {
				return fmt.Errorf("restore: %s %s and %s %s overlap; restore them into separate directories", a.what, a.path, b.what, b.path)
			}
		}
	}
	return nil
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// makeReady moves a non-empty destination's contents aside (the directory
// itself is renamed) and creates the directory, mode 0700, with missing
// parents, all through the fence. It returns where the old contents went,
// or "".
func makeReady(fc *fence, d destination, now time.Time, owner *Owner) (string, error) {
	aside := ""
	if d.nonEmpty {
		base := d.rel + movedAsideInfix + now.UTC().Format("20060102T150405Z")
		asideRel := base
		for i := 1; ; i++ {
			_, err := fc.root.Lstat(asideRel)
			if errors.Is(err, fs.ErrNotExist) {
				break
			}
			if err != nil {
				return "", fmt.Errorf("restore: move the old contents of %s %s aside: %w", d.what, d.path, fc.outside(err, d.what, d.path))
			}
			asideRel = base + "-" + strconv.Itoa(i)
		}
		aside = filepath.Join(fc.path, asideRel)
		if err := fc.root.Rename(d.rel, asideRel); err != nil {
			return "", fmt.Errorf("restore: move the old contents of %s %s aside to %s (a mount point cannot be moved; empty it yourself): %w",
				d.what, d.path, aside, fc.outside(err, d.what, d.path))
		}
		if err := syncDir(fc.root, filepath.Dir(d.rel)); err != nil {
			return aside, err
		}
	}
	if !d.exists || d.nonEmpty {
		if err := fc.root.MkdirAll(filepath.Dir(d.rel), 0o755); err != nil {
			return aside, fmt.Errorf("restore: create the parent of %s %s: %w", d.what, d.path, fc.outside(err, d.what, d.path))
		}
		if err := fc.root.Mkdir(d.rel, 0o700); err != nil {
			return aside, fmt.Errorf("restore: create %s %s: %w", d.what, d.path, fc.outside(err, d.what, d.path))
		}
		if owner != nil {
			if err := fc.root.Lchown(d.rel, owner.UID, owner.GID); err != nil {
				return aside, fmt.Errorf("restore: chown %s %s: %w", d.what, d.path, err)
			}
		}
	}
	// PostgreSQL refuses a data directory with group or other write or
	// (without group access) any group or other permission.
	if err := fc.root.Chmod(d.rel, 0o700); err != nil {
		return aside, fmt.Errorf("restore: chmod %s %s: %w", d.what, d.path, fc.outside(err, d.what, d.path))
	}
	return aside, nil
}

// syncDir fsyncs directory name under root so that entries created or
// renamed in it are durable.
func syncDir(root *os.Root, name string) error {
	if err := syncAt(root, name); err != nil {
		return fmt.Errorf("restore: sync directory %s: %w", name, err)
	}
	return nil
}

// syncAt fsyncs the file or directory name under root, through the root
// so that the fence holds (durable.SyncDir goes by path).
func syncAt(root *os.Root, name string) error {
	f, err := root.Open(name)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// ErrNoSpace means a destination's filesystem has less free space than the
// backup document says the restore writes there.
var ErrNoSpace = errors.New("restore: not enough free space")

// checkSpace refuses, before anything is written, a restore whose
// archives (needs[i]: the uncompressed sizes, as backup.json records them,
// of what goes to dests[i]) do not fit in the free space of the
// filesystems they go to. Each destination
// is measured at its nearest existing directory, through the fence.
// Together with the bound on what each archive may write (fetchObject),
// that keeps a restore from filling a disk.
func checkSpace(fc *fence, dests []destination, needs []int64) error {
	type fsNeed struct {
		need, avail int64
		where       string
	}
	byFS := map[unix.Fsid]*fsNeed{}
	var order []unix.Fsid
	for i, d := range dests {
		dir := d.rel
		var st unix.Statfs_t
		for {
			f, err := fc.root.Open(dir)
			if err == nil {
				err = unix.Fstatfs(int(f.Fd()), &st) //nolint:gosec // a file descriptor fits in int
				_ = f.Close()
				if err != nil {
					return fmt.Errorf("restore: free space of %s %s: %w", d.what, d.path, err)
				}
				break
			}
			if !errors.Is(err, fs.ErrNotExist) || dir == "." {
				return fmt.Errorf("restore: free space of %s %s: %w", d.what, d.path, fc.outside(err, d.what, d.path))
			}
			dir = filepath.Dir(dir)
		}
		n, ok := byFS[st.Fsid]
		if !ok {
			n = &fsNeed{avail: int64(st.Bavail) * st.Bsize, where: d.path} //nolint:gosec // block counts fit
			byFS[st.Fsid] = n
			order = append(order, st.Fsid)
		}
		n.need += needs[i]
	}
	for _, id := range order {
		n := byFS[id]
		if n.need > n.avail {
			return fmt.Errorf("%w: the backup needs %d bytes on the filesystem of %s, which has %d free; free space or restore elsewhere",
				ErrNoSpace, n.need, n.where, n.avail)
		}
	}
	return nil
}

// tablespaceWhat names a tablespace destination in messages.
func tablespaceWhat(oid uint32) string {
	return "directory of tablespace " + strconv.FormatUint(uint64(oid), 10)
}
