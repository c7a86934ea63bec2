// Package durable makes local files durable: fsync of a directory so that
// the entries created, renamed or removed in it survive a crash
// (SyncDir), replacing a file atomically (WriteFile, WriteNamed), and starting the
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
// one empty. Its one user, wal-fetch (restore_command's file and its
// prefetch spool), writes files that PostgreSQL makes durable itself or
// that are fetched again; a caller that needs the new file to survive a
// crash would fsync it and then SyncDir.
func WriteFile(path, tempPrefix string, perm os.FileMode, fill func(w io.Writer) error) error {
	return replace(filepath.Dir(path), path, tempPrefix, perm, func(w io.Writer) (string, error) {
		return filepath.Base(path), fill(w)
	})
}

// WriteNamed is WriteFile for a file in dir whose name is known only once
// its bytes are (a name carrying their digest): fill writes the bytes and
// returns the name.
func WriteNamed(dir, tempPrefix string, perm os.FileMode, fill func(w io.Writer) (name string, err error)) error {
	return replace(dir, "a file in "+dir, tempPrefix, perm, fill)
}

// replace is WriteFile and WriteNamed; what names the file in errors
// until its name is known.
func replace(dir, what, tempPrefix string, perm os.FileMode, fill func(w io.Writer) (string, error)) (err error) {
	tmp, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("create a temporary file for %s: %w", what, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	name, err := fill(tmp)
	if err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Chmod(tmp.Name(), perm); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	path := filepath.Join(dir, name)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
