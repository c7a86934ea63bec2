package restore

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// fsSyncer makes every file and directory a restore wrote durable with
// one syncfs(2) per filesystem it wrote to, instead of one fsync per file
// and directory: on a data directory of tens of thousands of small
// relation files those fsyncs were most of a restore's system time
// (issue 21).
//
// syncfs reports a writeback error of its filesystem that happened after
// the file it is called on was opened (Linux 5.8 and later), so the
// syncer opens its handles before the first byte is written.
type fsSyncer struct {
	// files holds one open directory per filesystem (by st_dev), in the
	// order first seen.
	files []*os.File
	names []string
}

// newFSSyncer opens "." of every root whose filesystem is not yet held;
// what names each root in messages.
func newFSSyncer(roots []*os.Root, what []string) (*fsSyncer, error) {
	s := &fsSyncer{}
	seen := map[uint64]bool{}
	for i, r := range roots {
		f, err := r.Open(".")
		if err != nil {
			_ = s.close()
			return nil, fmt.Errorf("restore: open %s to sync it: %w", what[i], err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil { //nolint:gosec // a file descriptor fits in int
			_ = f.Close()
			_ = s.close()
			return nil, fmt.Errorf("restore: stat %s: %w", what[i], err)
		}
		if seen[st.Dev] {
			_ = f.Close()
			continue
		}
		seen[st.Dev] = true
		s.files = append(s.files, f)
		s.names = append(s.names, what[i])
	}
	return s, nil
}

// sync flushes every filesystem held to its device and waits.
func (s *fsSyncer) sync() error {
	for i, f := range s.files {
		if err := unix.Syncfs(int(f.Fd())); err != nil { //nolint:gosec // a file descriptor fits in int
			return fmt.Errorf("restore: sync the filesystem of %s: %w", s.names[i], err)
		}
	}
	return nil
}

func (s *fsSyncer) close() error {
	var errs []error
	for _, f := range s.files {
		errs = append(errs, f.Close())
	}
	s.files = nil
	return errors.Join(errs...)
}

// syncfsReportsErrors reports whether this kernel's syncfs(2) returns the
// writeback errors of the filesystem (Linux 5.8 and later). Before that it
// returned 0 even when writing failed, and a restore could report success
// for files that never reached the disk: restore then fsyncs each file as
// it did before.
func syncfsReportsErrors() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	return kernelAtLeast(unix.ByteSliceToString(u.Release[:]), 5, 8)
}

// kernelAtLeast parses the major and minor number of a kernel release
// ("6.18.44-fc-v1300") and compares them; an unreadable release is too
// old.
func kernelAtLeast(release string, major, minor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err := strconv.Atoi(parts[0])
	if err != nil {
		return false
	}
	mi := parts[1]
	if i := strings.IndexFunc(mi, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		mi = mi[:i]
	}
	mn, err := strconv.Atoi(mi)
	if err != nil {
		return false
	}
	return ma > major || (ma == major && mn >= minor)
}
