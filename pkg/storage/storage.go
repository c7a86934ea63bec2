package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Backend is the storage contract shared by every archive backend. All
// methods are safe for concurrent use, block until the operation is done,
// and stop early with an error wrapping ctx.Err() when ctx ends.
//
// Names are slash-separated object names relative to the backend's root
// ("mycluster/wals/000000010000000000000005.zst") and must pass CheckName;
// methods given an invalid name return an error wrapping ErrInvalidName.
type Backend interface {
	// Put stores the bytes of r under name, atomically: a reader sees the
	// whole object or nothing, never a prefix. The object is durable when
	// Put returns nil. Without opts.IfAbsent an existing object is replaced
	// atomically; with it, Put fails with an error wrapping ErrExist if the
	// object exists, decided atomically by the backend (no check-then-write
	// race between concurrent writers). If opts.Checksum is set and the
	// bytes do not match it, Put stores nothing and returns a *ChecksumError. On
	// an error an existing object is untouched and the new bytes are not
	// stored, with one exception: when only the final step that makes the
	// write durable fails, the object may be visible but must be treated as
	// not durable (write it again).
	Put(ctx context.Context, name string, r io.Reader, opts PutOptions) error

	// Get opens the object for reading; the caller closes the reader. It
	// returns an error wrapping ErrNotExist when the object is missing and
	// ErrNoChecksum when the backend holds no checksum for it. The reader
	// hashes the bytes as they pass and, when it reaches the end, returns a
	// *ChecksumError instead of io.EOF if they do not match the stored
	// checksum; a caller that stops reading early gets no verification. The
	// reader stops with ctx's error once ctx ends.
	Get(ctx context.Context, name string) (io.ReadCloser, error)

	// Stat describes the object. It returns an error wrapping ErrNotExist
	// when the object is missing.
	Stat(ctx context.Context, name string) (ObjectInfo, error)

	// List returns every object whose name starts with prefix (a plain
	// string prefix, not necessarily ending in "/"), sorted by name in byte
	// order. It never returns the backend's internal files (temporary files,
	// checksum metadata). A prefix that matches nothing gives an empty list
	// and no error; a prefix whose part before the last "/" is not a valid
	// name (see CheckName) is an error wrapping ErrInvalidName.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)

	// Delete removes the object. It is idempotent: a missing object is
	// success.
	Delete(ctx context.Context, name string) error

	// URL returns the URL the backend was opened with, with any secret
	// redacted, for logs and error messages.
	URL() string
}

// PutOptions modifies Put.
type PutOptions struct {
	// IfAbsent makes Put fail with ErrExist instead of replacing an
	// existing object.
	IfAbsent bool
	// Checksum, if not empty, is the expected checksum of the bytes, of
	// either algorithm (see Algorithm; hex digits in either case), and the
	// one stored with them. Put stores nothing and returns a *ChecksumError
	// when the bytes differ, and an error wrapping ErrInvalidChecksum when
	// it is not well formed. Empty means Put computes a checksum of
	// DefaultAlgorithm.
	Checksum string
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	// Name is the object's full name, as passed to Put.
	Name string
	// Size is the object's length in bytes.
	Size int64
	// ModTime is when the object was last written.
	ModTime time.Time
	// Checksum is the checksum stored with the object (see Algorithm), or
	// empty when the backend holds none (an object written by something
	// other than barnacle; Get refuses to read it).
	Checksum string
}

// SpaceReporter is implemented by backends that know how much space is
// left for new objects (fs does; object stores do not).
type SpaceReporter interface {
	// FreeSpace returns the number of bytes available to barnacle.
	FreeSpace(ctx context.Context) (uint64, error)
}

// Cleaner is implemented by backends that can be left with debris by a
// crash during Put (fs leaves temporary files). The debris is never visible
// through List or Get; Cleanup only reclaims the space.
type Cleaner interface {
	// Cleanup removes leftovers of interrupted writes that are old enough
	// not to belong to a write still in progress.
	Cleanup(ctx context.Context) error
}

// Appender is implemented by backends that can grow an object in place,
// so that a writer extending an object bit by bit (the WAL receiver's
// .partial segment) writes each byte once instead of rewriting the whole
// object every time. Callers find it by type assertion and fall back to Put
// when a backend lacks it or Append fails.
//
// Append writes data at offset, which must equal the object's current
// length; offset 0 creates the object, replacing any existing one
// atomically, exactly as Put does. checksum is the checksum (see Algorithm)
// of the object's first offset+len(data) bytes, old and new together: the
// caller keeps a running Hash (its Checksum does not reset the hash's
// state, so the caller can go on writing to it). The backend stores it as
// the object's checksum; at offset 0 it verifies it like
// PutOptions.Checksum, at other offsets it cannot without reading the object
// back, so a wrong digest shows as a *ChecksumError when the object is
// read.
//
// When Append returns nil, the bytes and their checksum are durable. After
// a crash at any point the object reads back, verified, exactly as of the
// previous successful Append (or Put) or as of this one: never a mix of the
// two, and never bytes whose checksum was not recorded. Get, Stat and List
// report the recorded length, never bytes written by an Append that did not
// complete. On an error the object is as before, with the same exception as
// Put: when only the final step that makes the write durable fails, the new
// bytes may be visible but must be treated as not durable (write the object
// again whole). An object written by Put can be appended to at its length.
//
// When offset is not the object's length (including offset > 0 for a
// missing object, whose error also wraps ErrNotExist) Append changes
// nothing and returns an error wrapping ErrAppendOffset; the caller should
// rewrite the object whole (Put, or Append at offset 0). An invalid digest
// is an error wrapping ErrInvalidChecksum. Appends to one object must not
// run concurrently with each other or with a Put of the same object;
// concurrent readers are safe and see one of the recorded lengths.
type Appender interface {
	Append(ctx context.Context, name string, offset int64, data []byte, checksum string) error
}

// DirLister is implemented by backends that can list one directory from a
// point in name order, a page at a time, so that a reader looking for what
// follows one name in a large directory (wal-fetch deciding whether a
// .partial ends the archive, among 100,000 segments) reads a page instead
// of the whole directory. Callers find it by type assertion and fall back
// to List.
//
// ListAfter returns the objects directly in directory dir (named
// dir + "/" + base, base without "/"; sub-directories and what they hold
// are left out) whose base sorts after after in byte order, sorted by
// name, at most limit of them (limit > 0): fewer than limit means there
// are no more. dir must be a valid name (see CheckName); a directory that
// does not exist gives an empty list and no error. Like List, it never
// returns the backend's internal files.
type DirLister interface {
	ListAfter(ctx context.Context, dir, after string, limit int) ([]ObjectInfo, error)
}

var (
	// ErrNotExist means the object does not exist.
	ErrNotExist = errors.New("storage: object does not exist")
	// ErrExist means Put with IfAbsent found the object already there.
	ErrExist = errors.New("storage: object already exists")
	// ErrChecksum means bytes did not match their checksum. Errors that
	// wrap it are *ChecksumError.
	ErrChecksum = errors.New("storage: checksum mismatch")
	// ErrNoChecksum means the backend holds no checksum for an object, so
	// it cannot be read verified; something other than barnacle wrote it.
	ErrNoChecksum = errors.New("storage: object has no stored checksum")
	// ErrInvalidChecksum means a checksum given to Put, or one found stored
	// with an object, is in neither of the forms Algorithm describes.
	ErrInvalidChecksum = errors.New("storage: invalid checksum")
	// ErrConflict means PutOnce found the object already stored with
	// different bytes. Errors that wrap it are *ConflictError.
	ErrConflict = errors.New("storage: object exists with different content")
	// ErrInvalidName means an object name breaks CheckName's rules.
	ErrInvalidName = errors.New("storage: invalid object name")
	// ErrAppendOffset means Append's offset is not the object's current
	// length: the object is not what the caller thinks it is.
	ErrAppendOffset = errors.New("storage: append offset is not the object's length")
)

// ChecksumError reports bytes whose checksum is not the expected one: data
// given to Put that does not match PutOptions.Checksum, or a stored object
// that no longer matches the checksum stored with it.
type ChecksumError struct {
	Name string // object name
	Want string // expected checksum
	Got  string // checksum of the bytes seen, of the same algorithm
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("storage: checksum mismatch for %s: want %s, got %s", e.Name, DescribeChecksum(e.Want), digestOf(e.Got))
}

// Is makes errors.Is(err, ErrChecksum) true.
func (e *ChecksumError) Is(target error) bool { return target == ErrChecksum }

// ConflictError reports that PutOnce found Name already stored with other
// bytes (or with the same stored checksum but another size, which means the
// stored object is damaged). The original is untouched; the new bytes were stored under
// AsideName so that nothing is lost and an operator can compare them.
type ConflictError struct {
	Name             string
	AsideName        string
	ExistingChecksum string // empty if the existing object has no stored checksum
	NewChecksum      string // of the algorithm of ExistingChecksum, when that is set
}

func (e *ConflictError) Error() string {
	if e.ExistingChecksum == e.NewChecksum {
		return fmt.Sprintf("storage: %s exists with the expected checksum (%s) stored but a different size, so it is damaged; new bytes stored as %s",
			e.Name, DescribeChecksum(e.NewChecksum), e.AsideName)
	}
	existing := DescribeChecksum(e.ExistingChecksum)
	if e.ExistingChecksum == "" {
		existing = "unknown (no stored checksum)"
	}
	return fmt.Sprintf("storage: %s already exists with different content (%s, new %s); new bytes stored as %s",
		e.Name, existing, DescribeChecksum(e.NewChecksum), e.AsideName)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// CheckName returns an error wrapping ErrInvalidName unless name is a valid
// object name: not empty, at most 1024 bytes, slash-separated components
// that are neither empty nor start with "." (so no leading, trailing or
// doubled slash, no "." or ".." and no hidden files, which backends keep for
// their internal files), and no NUL or backslash. Every backend applies the
// same rules, so an archive can move between backends.
func CheckName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalidName)
	}
	if len(name) > 1024 {
		return fmt.Errorf("%w: name longer than 1024 bytes: %.40q...", ErrInvalidName, name)
	}
	if strings.ContainsAny(name, "\x00\\") {
		return fmt.Errorf("%w: %q contains NUL or backslash", ErrInvalidName, name)
	}
	for c := range strings.SplitSeq(name, "/") {
		if c == "" {
			return fmt.Errorf("%w: %q has an empty path component", ErrInvalidName, name)
		}
		if c[0] == '.' {
			return fmt.Errorf("%w: %q has a component starting with \".\"", ErrInvalidName, name)
		}
	}
	return nil
}

// CheckPut is what every backend's Put checks before it writes: a valid
// name, a well-formed expected digest (returned normalized, "" when none)
// and a live ctx. Its errors name the object.
func CheckPut(ctx context.Context, name string, opts PutOptions) (want string, err error) {
	if err := CheckName(name); err != nil {
		return "", fmt.Errorf("put %s: %w", name, err)
	}
	if opts.Checksum != "" {
		if want, err = NormalizeChecksum(opts.Checksum); err != nil {
			return "", fmt.Errorf("put %s: %w", name, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("put %s: %w", name, err)
	}
	return want, nil
}

// CheckListAfter is what every backend's ListAfter checks before it lists:
// a valid dir, a positive limit and a live ctx. Its errors name the
// listing.
func CheckListAfter(ctx context.Context, dir, after string, limit int) error {
	if err := CheckName(dir); err != nil {
		return fmt.Errorf("list %s after %q: %w", dir, after, err)
	}
	if limit <= 0 {
		return fmt.Errorf("list %s after %q: limit %d is not positive", dir, after, limit)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s after %q: %w", dir, after, err)
	}
	return nil
}
