// Package durable makes local files durable: fsync of a directory so that
// the entries created, renamed or removed in it survive a crash
// (SyncDir), replacing a file atomically (WriteFile), and starting the
// device write of a large file while it is still being written (Writer).
// The fs archive backend, restore and wal-fetch use it; it imports nothing
// of barnacle's.
//
// Other modules may import this package, but its API is not stable.
package durable

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// SyncDir fsyncs the directory dir, so that the entries created, renamed
// or removed in it are durable. The error names dir; it wraps
// fs.ErrNotExist when dir is gone.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// WriteFile creates or replaces path with the bytes fill writes: into a
// temporary file in path's directory named tempPrefix followed by random
// characters (a caller that removes the debris of killed writers matches
// on it), given mode perm, then renamed over path, so that a reader sees
// the old file or the whole new one. On any error path is untouched and
// the temporary file removed.
//
// It does not fsync: after a crash path may be the old file, or the new
// one empty. Its one user, wal-fetch, writes files that PostgreSQL makes
// durable itself or fetches again; a caller that needs the new file to
// survive a crash would fsync it and then SyncDir.
func WriteFile(path, tempPrefix string, perm os.FileMode, fill func(w io.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("create a temporary file for %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Chmod(tmp.Name(), perm); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
