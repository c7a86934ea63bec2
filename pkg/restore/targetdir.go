package restore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/durable"
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

// destination is one directory a restore writes into, after inspection.
type destination struct {
	// path is absolute; for an existing directory reached through symbolic
	// links, the resolved path.
	path string
	// what names it in messages ("target directory", "tablespace 16385").
	what     string
	exists   bool
	nonEmpty bool
}

// inspectDir looks at dir without changing anything: it refuses a
// directory a running server uses (always) and a non-empty one without
// force.
func inspectDir(dir, what string, force bool, tablespace bool) (destination, error) {
	if !filepath.IsAbs(dir) {
		return destination{}, fmt.Errorf("restore: %s %q is not an absolute path", what, dir)
	}
	d := destination{path: filepath.Clean(dir), what: what}
	st, err := os.Stat(d.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return d, nil
	case err != nil:
		return d, fmt.Errorf("restore: inspect %s %s: %w", what, dir, err)
	case !st.IsDir():
		return d, fmt.Errorf("restore: %s %s exists and is not a directory", what, dir)
	}
	if real, err := filepath.EvalSymlinks(d.path); err == nil {
		d.path = real
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
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return d, fmt.Errorf("restore: inspect %s %s: %w", what, dir, err)
	}
	if len(entries) > 0 {
		d.nonEmpty = true
		if !force {
			return d, fmt.Errorf("%w: %s %s holds %d entries (first %q); empty it or use --force (\"force\": true in an etcd request), which moves the old contents aside",
				ErrNotEmpty, what, dir, len(entries), entries[0].Name())
		}
	}
	return d, nil
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
// parents. It returns where the old contents went, or "".
func makeReady(d destination, now time.Time, owner *Owner) (string, error) {
	aside := ""
	if d.nonEmpty {
		base := d.path + movedAsideInfix + now.UTC().Format("20060102T150405Z")
		aside = base
		for i := 1; ; i++ {
			if _, err := os.Lstat(aside); errors.Is(err, fs.ErrNotExist) {
				break
			}
			aside = base + "-" + strconv.Itoa(i)
		}
		if err := os.Rename(d.path, aside); err != nil {
			return "", fmt.Errorf("restore: move the old contents of %s %s aside to %s (a mount point cannot be moved; empty it yourself): %w",
				d.what, d.path, aside, err)
		}
		if err := durable.SyncDir(filepath.Dir(d.path)); err != nil {
			return aside, fmt.Errorf("restore: %w", err)
		}
	}
	if !d.exists || d.nonEmpty {
		if err := os.MkdirAll(filepath.Dir(d.path), 0o755); err != nil {
			return aside, fmt.Errorf("restore: create the parent of %s %s: %w", d.what, d.path, err)
		}
		if err := os.Mkdir(d.path, 0o700); err != nil {
			return aside, fmt.Errorf("restore: create %s %s: %w", d.what, d.path, err)
		}
		if owner != nil {
			if err := os.Lchown(d.path, owner.UID, owner.GID); err != nil {
				return aside, fmt.Errorf("restore: chown %s %s: %w", d.what, d.path, err)
			}
		}
	}
	// PostgreSQL refuses a data directory with group or other write or
	// (without group access) any group or other permission.
	if err := os.Chmod(d.path, 0o700); err != nil {
		return aside, fmt.Errorf("restore: chmod %s %s: %w", d.what, d.path, err)
	}
	return aside, nil
}
