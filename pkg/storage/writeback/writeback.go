// Package writeback starts the device write of a file's new bytes while
// the file is still being written, so that the fsync that makes it durable
// finds little left to do.
//
// Without it the pages of a large file stay dirty until that fsync: the
// kernel starts background writeback only past dirty_background_ratio
// (gigabytes on a machine with a large page cache), and the disk's whole
// write time then comes after the copy instead of beside it. On the
// project's 2-core machine a 1.6 GB base backup archive spent 2.7 s in its
// final fsync. PostgreSQL does the same for its own writes
// (checkpoint_flush_after, backend_flush_after). The fsync stays what makes
// a file durable; this only moves the work earlier.
package writeback

import (
	"os"

	"golang.org/x/sys/unix"
)

// Step is how many bytes a Writer writes before it starts their writeback.
const Step = 8 << 20

// Writer writes to a file and, every Step bytes, asks the kernel to start
// writing the bytes so far to the device without waiting for it
// (sync_file_range SYNC_FILE_RANGE_WRITE). It is not safe for concurrent
// use.
type Writer struct {
	f       *os.File
	fd      int
	written int64 // bytes written through the Writer
	started int64 // bytes whose writeback has been started
}

// New returns a Writer that writes to f from its current offset, which
// must be 0 (a new file).
func New(f *os.File) *Writer { return &Writer{f: f, fd: int(f.Fd())} }

// Write implements io.Writer.
func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.written += int64(n)
	if w.written-w.started >= Step {
		// Advisory: a failed writeback shows again at the fsync, which
		// reports it.
		_ = unix.SyncFileRange(w.fd, w.started, w.written-w.started, unix.SYNC_FILE_RANGE_WRITE)
		w.started = w.written
	}
	return n, err
}

// Start starts the writeback of what is written and not started yet,
// without waiting for it: call it when the file is complete.
func (w *Writer) Start() {
	if w.written > w.started {
		_ = unix.SyncFileRange(w.fd, w.started, w.written-w.started, unix.SYNC_FILE_RANGE_WRITE)
		w.started = w.written
	}
}
