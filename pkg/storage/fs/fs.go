// Package fs is the storage.Backend for a local or shared (NFS, CephFS,
// ...) directory, opened from a file:///absolute/path archive URL.
//
// Objects are plain files under the root, named by their object names. Each
// file carries its checksum (storage.Algorithm: BLAKE3 for what Put hashes
// itself, SHA-256 for older objects and for checksums given by the writer)
// in the user extended attribute user.barnacle.sha256, which is named after
// the only algorithm of the first versions. It is set on a hidden temporary
// file before the file becomes visible, so the bytes and their checksum
// appear together or not at all. The filesystem must therefore support user
// extended attributes and hard links; New checks both.
//
// The attribute holds the checksum ("<hex>" or "blake3:<hex>") for objects
// written by Put, and the checksum and the object's length
// ("<checksum>:<length>", length in decimal) for objects written by
// Append, which grows the file in place: the file may then be longer than
// the object, by zeroes reserved for the next appends (up to 1 MiB) or
// bytes of an Append that a crash interrupted, and readers use only the
// recorded length. Both forms are
// read everywhere.
//
// Other modules may import this package, but its API is not stable.
package fs

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	iofs "io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/pkg/durable"
	"github.com/barnacle-pg/barnacle/pkg/redact"
	"github.com/barnacle-pg/barnacle/pkg/storage"
)

const (
	// xattrName holds an object's checksum (see storage.Algorithm),
	// followed for appended objects by ":" and the object's length in
	// decimal.
	xattrName = "user.barnacle.sha256"
	// tempPrefix starts the names of files being written. storage.CheckName
	// forbids object names starting with ".", so these never collide with
	// objects and List can skip them by name alone.
	tempPrefix = ".tmp-"
	// copyChunk is how much Put copies between context checks.
	copyChunk = 256 << 10
	// dirMode and fileMode leave the archive readable by the group so that
	// restores can run as another user of the same group (PostgreSQL's OS
	// user runs restore_command). They are set explicitly after creation,
	// so a restrictive umask (077 under some service managers) does not
	// take the group's read access away. The group is the directory's when
	// it has the setgid bit (chmod g+s on the root passes it down), else
	// the writer's primary group.
	dirMode  = 0o750
	fileMode = 0o640
	// appendReserve is the granularity at which Append extends a file
	// ahead of the object; see Append.
	appendReserve = 1 << 20
	// mkdirAttempts bounds Put's retries when a Delete in another process
	// removes the (empty) directory Put has just created (within one
	// process, Backend.tidying rules that out).
	mkdirAttempts = 10
)

// DefaultTempMaxAge is how old a temporary file must be before Cleanup
// removes it. A Put that takes longer than this to copy its data would lose
// its temporary file to a concurrent Cleanup, so it is far above the time
// any single object takes to write.
const DefaultTempMaxAge = time.Hour

// zeroes is what Append writes ahead of an object's end.
var zeroes = make([]byte, appendReserve)

// fsetxattr is a variable so that tests can simulate a filesystem without
// user extended attributes.
var fsetxattr = unix.Fsetxattr

// Options configures New. The zero value is ready to use.
type Options struct {
	// CreateRoot makes New create the root directory (and its parents)
	// when it does not exist. It is off by default because a missing root
	// usually means a shared volume that is not mounted, and writing the
	// archive to the local disk instead would go unnoticed.
	CreateRoot bool
	// TempMaxAge is how old a temporary file must be before Cleanup removes
	// it; zero means DefaultTempMaxAge.
	TempMaxAge time.Duration
	// ReadOnly opens the archive for reading only: New does not write its
	// probe file, so that a user who may read but not write the archive
	// (PostgreSQL's OS user running restore_command, a read-only mount)
	// can restore from it. Writes are not refused by the Backend, but
	// nothing checked that they can work; writers leave it off.
	ReadOnly bool
}

// Backend stores objects as files under a root directory. It is safe for
// concurrent use by many goroutines and many processes, including processes
// on other hosts sharing the directory, provided the filesystem gives
// rename(2) and link(2) their POSIX atomicity.
type Backend struct {
	root       string
	url        string
	tempMaxAge time.Duration
	// tidying keeps Delete from removing a directory that a Put in this
	// process has just created and not yet put its temporary file in:
	// createTemp holds it for reading from mkdir to open, Delete for
	// writing while it removes emptied directories. Another process
	// sharing the archive can still win that race; createTemp retries.
	tidying sync.RWMutex
}

var (
	_ storage.Backend       = (*Backend)(nil)
	_ storage.SpaceReporter = (*Backend)(nil)
	_ storage.Cleaner       = (*Backend)(nil)
	_ storage.Appender      = (*Backend)(nil)
)

// Open returns a Backend for a file:///absolute/path URL with default
// Options. It rejects relative paths, hosts, user information, query
// parameters and fragments, with an error naming the URL.
func Open(u *url.URL) (*Backend, error) { return OpenWith(u, Options{}) }

// OpenWith is Open with opts (CreateRoot, ReadOnly, ...).
func OpenWith(u *url.URL, opts Options) (*Backend, error) {
	shown := redact.URL(u.String())
	switch {
	case u.Scheme != "file":
		return nil, fmt.Errorf("fs: archive URL %q: scheme is %q, not file", shown, u.Scheme)
	case u.Opaque != "":
		return nil, fmt.Errorf("fs: archive URL %q has a relative path: use file:///absolute/path", shown)
	case u.Host != "":
		return nil, fmt.Errorf("fs: archive URL %q names host %q, but file URLs take no host: use three slashes and an absolute path, as in file:///%s%s",
			shown, u.Host, u.Host, u.Path)
	case u.User != nil:
		return nil, fmt.Errorf("fs: archive URL %q has user information, which file URLs do not take", shown)
	case u.RawQuery != "" || u.ForceQuery:
		return nil, fmt.Errorf("fs: archive URL %q has query parameters, but file URLs take none", shown)
	case u.Fragment != "":
		return nil, fmt.Errorf("fs: archive URL %q has a fragment, which file URLs do not take", shown)
	case !filepath.IsAbs(u.Path):
		return nil, fmt.Errorf("fs: archive URL %q has no absolute path: use file:///absolute/path", shown)
	}
	b, err := New(u.Path, opts)
	if err != nil {
		return nil, err
	}
	b.url = shown
	return b, nil
}

// New returns a Backend rooted at the absolute directory root. It fails if
// root does not exist (unless opts.CreateRoot) or is not a directory, and,
// by writing and removing a probe file, if the filesystem does not support
// user extended attributes or hard links (with opts.ReadOnly: if root
// cannot be listed and entered instead). It starts no goroutines and does
// not clean up old temporary files (see Cleanup).
func New(root string, opts Options) (*Backend, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("fs: archive directory %q is not an absolute path", root)
	}
	root = filepath.Clean(root)
	fi, err := os.Stat(root)
	if errors.Is(err, iofs.ErrNotExist) && opts.CreateRoot {
		if err := os.MkdirAll(root, dirMode); err != nil {
			return nil, fmt.Errorf("fs: create archive directory: %w", err)
		}
		fi, err = os.Stat(root)
	}
	switch {
	case errors.Is(err, iofs.ErrNotExist):
		return nil, fmt.Errorf("fs: archive directory %s does not exist: create it (or mount the archive volume) first", root)
	case err != nil:
		return nil, fmt.Errorf("fs: open archive directory: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("fs: archive path %s is not a directory", root)
	}
	if opts.ReadOnly {
		// Reading needs to list the root; say so now rather than on the
		// first read, for an archive the user may not read.
		if err := listable(root); err != nil {
			return nil, fmt.Errorf("fs: archive directory %s is not readable: %w", root, err)
		}
	} else if err := probe(root); err != nil {
		return nil, err
	}
	maxAge := opts.TempMaxAge
	if maxAge <= 0 {
		maxAge = DefaultTempMaxAge
	}
	return &Backend{
		root:       root,
		url:        (&url.URL{Scheme: "file", Path: root}).String(),
		tempMaxAge: maxAge,
	}, nil
}

// listable reads one entry of the directory dir.
func listable(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// probe checks that root supports what Put relies on: creating files, user
// extended attributes and hard links.
func probe(root string) (err error) {
	name := filepath.Join(root, tempPrefix+"probe-"+randomHex())
	link := name + "-link"
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if err != nil {
		return fmt.Errorf("fs: archive directory %s is not writable: %w", root, err)
	}
	defer func() {
		err = errors.Join(err, ignoreNotExist(os.Remove(name)), ignoreNotExist(os.Remove(link)))
	}()
	xerr := fsetxattr(int(f.Fd()), xattrName, []byte("probe"), 0)
	if cerr := f.Close(); xerr == nil && cerr != nil {
		return fmt.Errorf("fs: write probe file in %s: %w", root, cerr)
	}
	if errors.Is(xerr, unix.ENOTSUP) {
		return fmt.Errorf("fs: archive directory %s is on a filesystem without user extended attributes; "+
			"barnacle stores each object's checksum in the user extended attribute %s "+
			"(ext4, xfs, btrfs, and tmpfs on Linux 6.6 or later support them; on ext4 mounted with nouser_xattr, remount with user_xattr): %w",
			root, xattrName, xerr)
	}
	if xerr != nil {
		return fmt.Errorf("fs: set extended attribute %s on a probe file in %s: %w", xattrName, root, xerr)
	}
	if err := os.Link(name, link); err != nil {
		return fmt.Errorf("fs: archive directory %s does not support hard links, which barnacle needs for atomic write-if-absent: %w", root, err)
	}
	return nil
}

// URL returns the file:// URL of the root. It holds no secret.
func (b *Backend) URL() string { return b.url }

// Root returns the absolute path of the archive directory.
func (b *Backend) Root() string { return b.root }

func (b *Backend) path(name string) string {
	return filepath.Join(b.root, filepath.FromSlash(name))
}

// Put implements storage.Backend. It writes a hidden temporary file in the
// object's directory (creating directories as needed), hashing and checking
// the context between chunks, stores the checksum in the file's extended
// attribute and fsyncs it; then it renames the file over the object (or,
// with IfAbsent, links it to the object's name, which fails atomically if
// the name exists) and fsyncs the directory.
func (b *Backend) Put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	want, err := storage.CheckPut(ctx, name, opts)
	if err != nil {
		return err
	}
	return b.put(ctx, name, r, want, opts.IfAbsent, false)
}

// put is Put after the argument checks, with want the normalized expected
// checksum or "" (then the object gets one of storage.DefaultAlgorithm).
// recordLength stores the length with the checksum, as Append does, so that
// the object can grow in place without first converting its attribute. Errors start with "put <name>:".
func (b *Backend) put(ctx context.Context, name string, r io.Reader, want string, ifAbsent, recordLength bool) error {
	final := b.path(name)
	dir := filepath.Dir(final)
	tmp, err := b.createTemp(dir)
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	tmpName := tmp.Name()
	closed := false
	defer func() {
		if !closed {
			_ = tmp.Close() // the write already failed; its error is the one to report
		}
		_ = os.Remove(tmpName) // gone after a rename; otherwise debris for Cleanup
	}()

	h, err := storage.HashForPut(want)
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	n, err := copyInto(ctx, &hashingWriter{w: durable.NewWriter(tmp), h: h}, r)
	if err != nil {
		return fmt.Errorf("put %s: write: %w", name, err)
	}
	got := h.Checksum()
	if want != "" && got != want {
		return fmt.Errorf("put %s: %w", name, &storage.ChecksumError{Name: name, Want: want, Got: got})
	}
	attr := checksum{sum: got, length: -1}
	if recordLength {
		attr.length = n
	}
	// Set before the fsync so that one fsync makes data and checksum durable
	// together (the file is new and not yet visible, so no reader can see the
	// two apart), and before the file gets its name so that no reader ever
	// sees the object without its checksum.
	if err := fsetxattr(int(tmp.Fd()), xattrName, attr.encode(), 0); err != nil {
		return fmt.Errorf("put %s: store checksum in extended attribute %s: %w", name, xattrName, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("put %s: fsync: %w", name, err)
	}
	closed = true
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("put %s: close: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}

	if ifAbsent {
		// link(2) fails with EEXIST if the name exists, atomically, which a
		// Stat followed by rename(2) would not.
		if err := os.Link(tmpName, final); err != nil {
			if errors.Is(err, iofs.ErrExist) {
				if fi, serr := os.Lstat(final); serr == nil && fi.IsDir() {
					return fmt.Errorf("put %s: %s is a directory", name, final)
				}
				// The writer that linked the existing object may have died
				// before its directory fsync. Sync now, so that a caller
				// who takes ErrExist as "already archived" can rely on it.
				if err := durable.SyncDir(dir); err != nil {
					return fmt.Errorf("put %s: %w", name, err)
				}
				return fmt.Errorf("put %s: %w", name, storage.ErrExist)
			}
			return fmt.Errorf("put %s: link into place: %w", name, err)
		}
		// The object is in place; a temporary file that fails to go is
		// debris for Cleanup, not a failed Put.
		_ = os.Remove(tmpName)
	} else if err := os.Rename(tmpName, final); err != nil {
		return fmt.Errorf("put %s: rename into place: %w", name, err)
	}
	if err := durable.SyncDir(dir); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	return nil
}

// Append implements storage.Appender.
//
// At offset 0 it writes the object as Put does (temporary file, rename,
// directory fsync), so that it replaces an existing object atomically, and
// records the length with the digest. At other offsets it writes the bytes
// in place at offset (and zeroes past them up to the next MiB, so that the
// next appends overwrite written blocks: their fdatasync then flushes data
// only, as pg_receivewal's does in its zero-filled segments), fdatasyncs,
// then records "<digest>:<new length>" in the attribute and fsyncs again.
// Until the attribute changes, readers and a crash see the old length and
// digest, and the bytes past it are ignored (and overwritten by the next
// Append); after it, the new ones, whose data is already on disk.
//
// Why two syncs: a single fsync after both steps would not order them.
// Neither ext4 (data=ordered covers newly allocated blocks, not every
// write) nor xfs promises that file data reaches the disk before a
// metadata change made later, so after a crash the journal could hold the
// new attribute while the data blocks still hold zeroes or old bytes: an
// object whose checksum no longer matches, with nothing valid to fall back
// to. fdatasync first makes the data durable before the attribute that
// vouches for it can be.
//
// An object written by Put has no recorded length; the first Append records
// its file size (one extra fsync), because otherwise a crash after the
// bytes were written would leave a file longer than its plain digest covers.
func (b *Backend) Append(ctx context.Context, name string, offset int64, data []byte, sum string) (err error) {
	if err := storage.CheckName(name); err != nil {
		return fmt.Errorf("append %s: %w", name, err)
	}
	want, err := storage.NormalizeChecksum(sum)
	if err != nil {
		return fmt.Errorf("append %s: %w", name, err)
	}
	if offset < 0 {
		return fmt.Errorf("append %s: %w: negative offset %d", name, storage.ErrAppendOffset, offset)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("append %s: %w", name, err)
	}
	if offset == 0 {
		if err := b.put(ctx, name, bytes.NewReader(data), want, false, true); err != nil {
			return fmt.Errorf("append at offset 0: %w", err)
		}
		return nil
	}

	p := b.path(name)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if errors.Is(err, iofs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EISDIR) {
		return fmt.Errorf("append %s at offset %d: %w (%w)", name, offset, storage.ErrAppendOffset, storage.ErrNotExist)
	}
	if err != nil {
		return fmt.Errorf("append %s: open: %w", name, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("append %s: close: %w", name, cerr)
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("append %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("append %s at offset %d: %w (%w)", name, offset, storage.ErrAppendOffset, storage.ErrNotExist)
	}
	cs, err := readChecksum(f)
	if errors.Is(err, storage.ErrNoChecksum) {
		return fmt.Errorf("append %s: %w: %s has no extended attribute %s, so barnacle did not write it",
			name, storage.ErrNoChecksum, p, xattrName)
	}
	if err != nil {
		return fmt.Errorf("append %s: %w", name, err)
	}
	if cs.length < 0 {
		// Written by Put: the file is the object.
		if fi.Size() != offset {
			return fmt.Errorf("append %s at offset %d: %w: the object is %d bytes", name, offset, storage.ErrAppendOffset, fi.Size())
		}
		cs.length = offset
		if err := fsetxattr(int(f.Fd()), xattrName, cs.encode(), 0); err != nil {
			return fmt.Errorf("append %s: record the length in extended attribute %s: %w", name, xattrName, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("append %s: fsync: %w", name, err)
		}
	}
	if cs.length != offset {
		return fmt.Errorf("append %s at offset %d: %w: the object is %d bytes", name, offset, storage.ErrAppendOffset, cs.length)
	}
	if fi.Size() < offset {
		// Damaged (truncated) on disk: appending would vouch for a hole.
		return fmt.Errorf("append %s at offset %d: %w: the file holds only %d of the object's %d bytes",
			name, offset, storage.ErrAppendOffset, fi.Size(), offset)
	}
	if _, err := f.WriteAt(data, offset); err != nil {
		return fmt.Errorf("append %s: write: %w", name, err)
	}
	if end := offset + int64(len(data)); end > fi.Size() {
		// Zeroes up to the next appendReserve boundary: measured on ext4,
		// 8 KiB appends went from 1.8k to 2.6k a second. Readers never see
		// them (they are past the recorded length).
		if pad := (end+appendReserve-1)/appendReserve*appendReserve - end; pad > 0 {
			if _, err := f.WriteAt(zeroes[:pad], end); err != nil {
				return fmt.Errorf("append %s: reserve space: %w", name, err)
			}
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("append %s: fdatasync: %w", name, err)
	}
	next := checksum{sum: want, length: offset + int64(len(data))}
	if err := fsetxattr(int(f.Fd()), xattrName, next.encode(), 0); err != nil {
		return fmt.Errorf("append %s: store checksum in extended attribute %s: %w", name, xattrName, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("append %s: fsync: %w", name, err)
	}
	return nil
}

// createTemp creates a new temporary file in dir, creating dir first if
// needed. A concurrent Delete may remove dir as an empty directory between
// the two steps; the file, once created, keeps dir from being removed.
func (b *Backend) createTemp(dir string) (*os.File, error) {
	var err error
	for range mkdirAttempts {
		var f *os.File
		f, err = b.mkdirAndCreate(dir)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, iofs.ErrNotExist) {
			break
		}
	}
	return nil, err
}

// mkdirAndCreate is one attempt of createTemp, under b.tidying.
func (b *Backend) mkdirAndCreate(dir string) (*os.File, error) {
	b.tidying.RLock()
	defer b.tidying.RUnlock()
	if err := b.mkdirAll(dir); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, tempPrefix+randomHex()), os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if err != nil {
		return nil, fmt.Errorf("create temporary file: %w", err)
	}
	if err := f.Chmod(fileMode); err != nil { // past the umask; see fileMode
		_ = f.Close()
		_ = os.Remove(f.Name())
		return nil, fmt.Errorf("set the mode of a temporary file: %w", err)
	}
	return f, nil
}

// mkdirAll creates dir and its missing parents below the root, fsyncing
// each parent so that the new entries survive a crash.
func (b *Backend) mkdirAll(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("create directory %s: a file is in the way", dir)
		}
		return nil
	}
	if !errors.Is(err, iofs.ErrNotExist) {
		return fmt.Errorf("create directory: %w", err)
	}
	if len(dir) <= len(b.root) {
		return fmt.Errorf("archive directory %s has disappeared", b.root)
	}
	parent := filepath.Dir(dir)
	if err := b.mkdirAll(parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, dirMode); err != nil {
		if !errors.Is(err, iofs.ErrExist) {
			return fmt.Errorf("create directory: %w", err)
		}
	} else if err := setDirMode(dir); err != nil {
		return err
	}
	return durable.SyncDir(parent)
}

// setDirMode gives the new directory dir dirMode past the umask, keeping
// the setgid bit it inherited from its parent (chmod would clear it).
func setDirMode(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	if err := os.Chmod(dir, fi.Mode()&os.ModeSetgid|dirMode); err != nil {
		return fmt.Errorf("set the mode of directory %s: %w", dir, err)
	}
	return nil
}

// Get implements storage.Backend. The checksum comes from the opened file,
// so a concurrent overwrite cannot pair new bytes with an old checksum.
func (b *Backend) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	if err := storage.CheckName(name); err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	f, _, err := openObject(b.path(name))
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	cs, err := readChecksum(f)
	if errors.Is(err, storage.ErrNoChecksum) {
		_ = f.Close() // read-only; nothing to lose
		return nil, fmt.Errorf("get %s: %w: %s has no extended attribute %s, so barnacle did not write it and cannot verify it",
			name, storage.ErrNoChecksum, f.Name(), xattrName)
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	var r io.Reader = f
	if cs.length >= 0 {
		// Bytes past the recorded length belong to an Append that did not
		// complete. Appends never rewrite bytes below it, so what is read
		// matches the digest read above even while the object grows. A file
		// shorter than the length fails verification at its end.
		r = io.LimitReader(f, cs.length)
	}
	return storage.NewVerifyingReader(name, &ctxReadCloser{ctxReader: ctxReader{ctx: ctx, r: r}, c: f}, cs.sum), nil
}

// Stat implements storage.Backend. ObjectInfo.Checksum is empty when the file
// has no valid checksum attribute.
func (b *Backend) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	if err := storage.CheckName(name); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", name, err)
	}
	info, err := statObject(b.path(name), name)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", name, err)
	}
	return info, nil
}

// List implements storage.Backend. It walks only the directories that can
// hold matching names, and skips every file and directory whose name starts
// with "." (temporary files, and things like NFS filers' .snapshot).
func (b *Backend) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	dirPart := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dirPart = prefix[:i]
		if err := storage.CheckName(dirPart); err != nil {
			return nil, fmt.Errorf("list %q: %w", prefix, err)
		}
	}
	if strings.ContainsAny(prefix, "\x00\\") {
		return nil, fmt.Errorf("list %q: %w: contains NUL or backslash", prefix, storage.ErrInvalidName)
	}
	start := b.root
	if dirPart != "" {
		start = b.path(dirPart)
	}
	var out []storage.ObjectInfo
	err := filepath.WalkDir(start, func(p string, d iofs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if err != nil {
			if errors.Is(err, iofs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
				return nil // the prefix names nothing, or a concurrent Delete won
			}
			return err
		}
		if p == start {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(b.root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if strings.HasPrefix(rel+"/", prefix) || strings.HasPrefix(prefix, rel+"/") {
				return nil
			}
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(rel, prefix) {
			return nil
		}
		info, err := statObject(p, rel)
		if errors.Is(err, storage.ErrNotExist) {
			return nil // deleted since the directory was read
		}
		if err != nil {
			return err
		}
		out = append(out, info)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	slices.SortFunc(out, func(a, b storage.ObjectInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

var _ storage.DirLister = (*Backend)(nil)

// ListAfter implements storage.DirLister: one read of dir's entries
// (names and types, no per-file stat) and a stat of each object returned
// only, where List stats, and reads the checksum attribute of, every file
// under the prefix (a round trip each on NFS).
func (b *Backend) ListAfter(ctx context.Context, dir, after string, limit int) ([]storage.ObjectInfo, error) {
	if err := storage.CheckListAfter(ctx, dir, after, limit); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(b.path(dir)) // sorted by name
	if errors.Is(err, iofs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s after %q: %w", dir, after, err)
	}
	i, _ := slices.BinarySearchFunc(entries, after, func(e os.DirEntry, after string) int {
		return strings.Compare(e.Name(), after)
	})
	var out []storage.ObjectInfo
	for _, e := range entries[i:] {
		if len(out) == limit {
			break
		}
		// Hidden names are temporary files; only regular files are
		// objects, as for List.
		if e.Name() <= after || strings.HasPrefix(e.Name(), ".") || !e.Type().IsRegular() {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("list %s after %q: %w", dir, after, err)
		}
		name := dir + "/" + e.Name()
		info, err := statObject(b.path(name), name)
		if errors.Is(err, storage.ErrNotExist) {
			continue // deleted since the directory was read
		}
		if err != nil {
			return nil, fmt.Errorf("list %s after %q: %w", dir, after, err)
		}
		out = append(out, info)
	}
	return out, nil
}

// Delete implements storage.Backend. It also removes the object's
// directories that it leaves empty (never the root), so that deleting old
// backups does not leave a trail of empty directories.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := storage.CheckName(name); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	p := b.path(name)
	// unlink(2) rather than os.Remove, which would also rmdir a directory
	// that happens to share the name.
	err := unix.Unlink(p)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EISDIR):
		return nil // no object by that name
	case err != nil:
		return fmt.Errorf("delete %s: %w", name, &os.PathError{Op: "unlink", Path: p, Err: err})
	}
	dir := filepath.Dir(p)
	// A concurrent Delete may already have removed the emptied directory,
	// taking our entry with it; there is nothing left to sync.
	if err := durable.SyncDir(dir); err != nil && !errors.Is(err, iofs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	b.tidying.Lock()
	defer b.tidying.Unlock()
	for ; len(dir) > len(b.root); dir = filepath.Dir(dir) {
		if unix.Rmdir(dir) != nil {
			break // not empty (or already gone): nothing more to tidy
		}
	}
	return nil
}

// FreeSpace implements storage.SpaceReporter: the bytes available to an
// unprivileged user on the root's filesystem.
func (b *Backend) FreeSpace(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("free space: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(b.root, &st); err != nil {
		return 0, fmt.Errorf("free space: statfs %s: %w", b.root, err)
	}
	return st.Bavail * uint64(st.Bsize), nil //nolint:gosec // Bsize is never negative
}

// Cleanup implements storage.Cleaner: it removes temporary files older than
// Options.TempMaxAge anywhere under the root, left behind by writers that
// crashed. It walks the whole archive, so call it at start-up or
// occasionally, not per operation. It skips hidden directories.
func (b *Backend) Cleanup(ctx context.Context) error {
	cutoff := time.Now().Add(-b.tempMaxAge)
	err := filepath.WalkDir(b.root, func(p string, d iofs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if err != nil {
			if errors.Is(err, iofs.ErrNotExist) {
				return nil
			}
			return err
		}
		if p == b.root || !strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		if d.IsDir() {
			return filepath.SkipDir
		}
		if !strings.HasPrefix(d.Name(), tempPrefix) {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, iofs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.ModTime().Before(cutoff) {
			return ignoreNotExist(os.Remove(p))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("clean up temporary files in %s: %w", b.root, err)
	}
	return nil
}

// openObject opens the regular file at p. A missing file, or a directory
// (which is a prefix, not an object), is storage.ErrNotExist.
func openObject(p string) (*os.File, iofs.FileInfo, error) {
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, iofs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			return nil, nil, storage.ErrNotExist
		}
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		_ = f.Close()
		return nil, nil, storage.ErrNotExist
	}
	return f, fi, nil
}

// statObject describes the file at p as the object name.
func statObject(p, name string) (storage.ObjectInfo, error) {
	f, fi, err := openObject(p)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	defer f.Close() //nolint:errcheck // read-only
	cs, err := readChecksum(f)
	if err != nil && !errors.Is(err, storage.ErrNoChecksum) && !errors.Is(err, storage.ErrInvalidChecksum) {
		return storage.ObjectInfo{}, err
	}
	size := fi.Size()
	if err == nil && cs.length >= 0 {
		size = cs.length
	}
	return storage.ObjectInfo{Name: name, Size: size, ModTime: fi.ModTime(), Checksum: cs.sum}, nil
}

// checksum is the value of the checksum attribute.
type checksum struct {
	sum string // normalized, see storage.Algorithm
	// length is the object's length for appended objects, whose file may
	// be longer; -1 for objects written by Put, whose file is the object.
	length int64
}

func (c checksum) encode() []byte {
	if c.length < 0 {
		return []byte(c.sum)
	}
	return []byte(c.sum + ":" + strconv.FormatInt(c.length, 10))
}

// readChecksum returns the checksum stored on f: storage.ErrNoChecksum when
// there is none, storage.ErrInvalidChecksum when it is not "<checksum>" or
// "<checksum>:<length>".
func readChecksum(f *os.File) (checksum, error) {
	var buf [128]byte
	n, err := unix.Fgetxattr(int(f.Fd()), xattrName, buf[:])
	switch {
	case errors.Is(err, unix.ENODATA):
		return checksum{}, storage.ErrNoChecksum
	case errors.Is(err, unix.ERANGE):
		return checksum{}, fmt.Errorf("%w: extended attribute %s on %s is too long", storage.ErrInvalidChecksum, xattrName, f.Name())
	case err != nil:
		return checksum{}, fmt.Errorf("read extended attribute %s on %s: %w", xattrName, f.Name(), err)
	}
	cs, err := parseChecksum(string(buf[:n]))
	if err != nil {
		return checksum{}, fmt.Errorf("extended attribute %s on %s: %w", xattrName, f.Name(), err)
	}
	return cs, nil
}

func parseChecksum(v string) (checksum, error) {
	// A tag ("blake3:") uses the separator of the length: strip it first.
	tag, rest := "", v
	if t, r, ok := strings.Cut(v, ":"); ok && strings.EqualFold(t, string(storage.BLAKE3)) {
		tag, rest = t+":", r
	}
	hexPart, lenPart, hasLen := strings.Cut(rest, ":")
	sum, err := storage.NormalizeChecksum(tag + hexPart)
	if err != nil {
		return checksum{}, err
	}
	if !hasLen {
		return checksum{sum: sum, length: -1}, nil
	}
	length, err := strconv.ParseInt(lenPart, 10, 64)
	if err != nil || length < 0 || lenPart[0] == '+' {
		return checksum{}, fmt.Errorf("%w: %q has no valid length after the digest", storage.ErrInvalidChecksum, v)
	}
	return checksum{sum: sum, length: length}, nil
}

func ignoreNotExist(err error) error {
	if errors.Is(err, iofs.ErrNotExist) {
		return nil
	}
	return err
}

func randomHex() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// ctxReader stops reading with the context's error once it ends, so that a
// long copy notices cancellation between chunks.
// copyInto copies r into w until EOF, checking ctx between chunks. A
// reader that can write itself (io.WriterTo, such as a pipe of large
// buffers) hands its buffers to w directly, saving a copy of every byte.
func copyInto(ctx context.Context, w io.Writer, r io.Reader) (int64, error) {
	if wt, ok := r.(io.WriterTo); ok {
		return wt.WriteTo(&ctxWriter{ctx: ctx, w: w})
	}
	return io.CopyBuffer(w, &ctxReader{ctx: ctx, r: r}, make([]byte, copyChunk))
}

// hashingWriter writes to w and hashes what it writes into h. Large
// writes are hashed on another goroutine while w writes them: the hash and
// the copy into the page cache each take a while, and a base backup
// archive that streams through Put otherwise waits for both in turn.
type hashingWriter struct {
	w    io.Writer
	h    hash.Hash
	done chan struct{}
}

// parallelHashSize is the write size from which hashingWriter hashes on
// another goroutine; below it the hand-off costs more than it saves.
const parallelHashSize = 256 << 10

func (hw *hashingWriter) Write(p []byte) (int, error) {
	if len(p) < parallelHashSize {
		n, err := hw.w.Write(p)
		hw.h.Write(p[:n])
		return n, err
	}
	if hw.done == nil {
		hw.done = make(chan struct{})
	}
	go func() {
		hw.h.Write(p)
		hw.done <- struct{}{}
	}()
	n, err := hw.w.Write(p)
	<-hw.done
	// After a short write the hash covers bytes that were not written;
	// Put fails on the error and discards the file, hash and all.
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}

// ctxWriter fails writes once its context is done.
type ctxWriter struct {
	ctx context.Context //nolint:containedctx // bounds the life of one write stream
	w   io.Writer
}

func (c *ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

type ctxReader struct {
	ctx context.Context //nolint:containedctx // bounds the life of one read stream
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type ctxReadCloser struct {
	ctxReader
	c io.Closer
}

func (c *ctxReadCloser) Close() error { return c.c.Close() }
