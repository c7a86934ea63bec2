package drill

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// makeScratch creates the drill's directory, owned by the server's user,
// and locks it so that a drill starting meanwhile does not take it for a
// leftover.
func (r *runner) makeScratch() error {
	r.scratch = filepath.Join(r.opts.ScratchRoot, dirPrefix+r.d.ID)
	if err := os.Mkdir(r.scratch, 0o700); err != nil {
		r.scratch = "" // not ours: never removed
		return fmt.Errorf("drill: create the scratch directory: %w", err)
	}
	f, err := os.Open(r.scratch)
	if err == nil {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) //nolint:gosec // a file descriptor fits in int
		if err != nil {
			_ = f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("drill: lock the scratch directory %s: %w", r.scratch, err)
	}
	r.lock = f
	if err := r.chown(r.scratch); err != nil {
		return err
	}
	r.socketDir = r.scratch
	if len(filepath.Join(r.socketDir, fmt.Sprintf(".s.PGSQL.%d", port))) > maxSocketPath {
		// A deep restore-root: the socket goes to a private directory
		// of its own, removed with the scratch directory, and locked
		// like it so that another drill's sweep leaves it alone.
		d, err := os.MkdirTemp(socketTempDir(), socketPrefix)
		if err != nil {
			return fmt.Errorf("drill: create a socket directory: %w", err)
		}
		r.socketDir = d
		sf, err := os.Open(d)
		if err == nil {
			err = unix.Flock(int(sf.Fd()), unix.LOCK_EX|unix.LOCK_NB) //nolint:gosec // a file descriptor fits in int
			if err != nil {
				_ = sf.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("drill: lock the socket directory %s: %w", d, err)
		}
		r.socketLock = sf
		if err := r.chown(d); err != nil {
			return err
		}
	}
	r.logPath = filepath.Join(r.scratch, "postgres.log")
	return nil
}

func (r *runner) chown(path string) error {
	if r.opts.Owner == nil || os.Geteuid() != 0 {
		return nil
	}
	if err := os.Lchown(path, r.opts.Owner.UID, r.opts.Owner.GID); err != nil {
		return fmt.Errorf("drill: give %s to the server's user: %w", path, err)
	}
	return nil
}

// removeLeftovers removes what killed drills left under ScratchRoot: a
// "barnacle-drill-*" directory that no drill holds locked and that has no
// running server. A directory with a live postmaster.pid is left alone and
// logged (the PID may be reused; removing a live server's files is worse).
func (r *runner) removeLeftovers() {
	entries, err := os.ReadDir(r.opts.ScratchRoot)
	if err != nil {
		r.log.Warn("could not list restore-root for leftovers of earlier drills", "error", err)
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), dirPrefix) || strings.HasPrefix(e.Name(), socketPrefix) {
			continue // socket directories: removeSocketLeftovers, with its own rules
		}
		dir := filepath.Join(r.opts.ScratchRoot, e.Name())
		r.removeAbandoned(dir, "drill directory", func() (int, bool) { return serverPID(filepath.Join(dir, "data")) })
	}
	r.removeSocketLeftovers()
}

// removeAbandoned removes dir (what: how logs name it) unless a drill
// holds it locked or the PID serverPID reads is a live process: the PID
// may be reused, but removing a live server's files is worse.
func (r *runner) removeAbandoned(dir, what string, serverPID func() (int, bool)) {
	f, err := os.Open(dir)
	if err != nil {
		return
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil { //nolint:gosec // a file descriptor fits in int
		return // a drill runs with it
	}
	if pid, ok := serverPID(); ok && processAlive(pid) {
		r.log.Warn("leftover "+what+" has a running server; left alone", "directory", dir, "pid", pid)
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		r.log.Warn("could not remove a leftover "+what, "directory", dir, "error", err)
		return
	}
	r.log.Info("removed leftover "+what, "directory", dir)
}

// removeSocketLeftovers removes the socket directories (barnacle-drill-
// socket-* in the system's temporary directory) that killed drills left:
// like removeLeftovers, only one no drill holds locked and whose server
// lock file (.s.PGSQL.<port>.lock, the postmaster's PID first) names no
// live process; and, as that directory is shared, only one this drill's
// users own, older than socketSweepAge.
func (r *runner) removeSocketLeftovers() {
	tmp := socketTempDir()
	entries, err := os.ReadDir(tmp)
	if err != nil {
		r.log.Warn("could not list the temporary directory for leftover drill sockets", "directory", tmp, "error", err)
		return
	}
	owners := []int{os.Geteuid()}
	if r.opts.Owner != nil {
		owners = append(owners, r.opts.Owner.UID)
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), socketPrefix) {
			continue
		}
		dir := filepath.Join(tmp, e.Name())
		fi, err := os.Lstat(dir)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < socketSweepAge {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || !slices.Contains(owners, int(st.Uid)) {
			continue // someone else's
		}
		r.removeAbandoned(dir, "drill socket directory", func() (int, bool) {
			return lockFilePID(filepath.Join(dir, fmt.Sprintf(".s.PGSQL.%d.lock", port)))
		})
	}
}

// serverPID reads the postmaster PID of a data directory.
func serverPID(dataDir string) (int, bool) {
	return lockFilePID(filepath.Join(dataDir, "postmaster.pid"))
}

// lockFilePID reads the PID on the first line of a postmaster lock file
// (postmaster.pid, or a socket's .s.PGSQL.<port>.lock).
func lockFilePID(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	return pid, err == nil && pid > 0
}

// serverReady reports whether postmaster.pid says the server accepts
// connections: its status line (the 8th, PostgreSQL 10 and later) is
// "ready".
func serverReady(dataDir string) bool {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return false
	}
	lines := strings.Split(string(b), "\n")
	return len(lines) >= 8 && strings.TrimSpace(lines[7]) == "ready"
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
