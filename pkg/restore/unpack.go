package restore

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/pkg/durable"
)

// copyBuffers are the buffers files are copied through: large enough that
// a gigabyte-sized relation file takes few reads from the tar stream (the
// durable.Writer then passes each to the kernel in pieces of
// durable.MaxWrite), pooled since a data directory has thousands of
// small files.
var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, copyBufferSize)
	return &b
}}

const copyBufferSize = 256 << 10

// syncWorkers is how many files finish fsyncs at once: the device queues
// them, and their writeback mostly ran already.
const syncWorkers = 8

// Names inside a data directory that restore treats specially.
const (
	pgControlName     = "global/pg_control"
	pgControlTempName = "global/pg_control.barnacle-restoring"
	tablespaceMapName = "tablespace_map"
	autoConfName      = "postgresql.auto.conf"
	recoverySignal    = "recovery.signal"
	devNull           = "/dev/null"
	// maxTablespaceMap bounds the tablespace_map read into memory.
	maxTablespaceMap = 1 << 20
)

// skippedTopLevel are files of a data directory that a restore must not
// bring back: a lock file and options of the server that was backed up,
// and signal files that would start it in the wrong mode (PostgreSQL's
// BASE_BACKUP excludes most of them already; a restore is defensive).
var skippedTopLevel = map[string]bool{
	"postmaster.pid":  true,
	"postmaster.opts": true,
	"standby.signal":  true,
	"recovery.signal": true,
}

// Owner is the OS user and group that restored files get; Restore run as
// root uses it to give the data directory to the user PostgreSQL runs as.
type Owner struct {
	UID, GID int
}

// unpacker writes one tar archive into one directory through an os.Root,
// so that no name and no symbolic link in the archive can make it write
// outside that directory.
type unpacker struct {
	root *os.Root
	// base is set for base.tar: the data directory's own rules apply.
	base bool
	// tablespaces maps a tablespace OID to the directory it is restored
	// into; base.tar's pg_tblspc links and tablespace_map are rewritten to
	// it.
	tablespaces map[uint32]string
	owner       *Owner
	// noSync skips the fsyncs; only the fuzz test sets it, for speed.
	noSync bool
	// perFileSync makes finish fsync every file and directory written.
	// Without it the caller makes them durable with one syncfs per
	// filesystem (fsSyncer); it is set where syncfs does not report
	// write errors.
	perFileSync bool
	// limit, when positive, is how many bytes of regular files the
	// archive may write: its uncompressed size as backup.json records it.
	// A member that would write past it is refused before a byte of it is
	// written, so a small crafted archive cannot fill the disk.
	limit int64
	// sizes, when not nil, are the file sizes the backup manifest lists
	// (manifestSizes), by data-directory path; this archive's member names
	// get sizesPrefix in front. A member larger than its listed size is
	// refused before it is written.
	sizes       *manifestIndex
	sizesPrefix string
	// sizesNext is where in sizes the next member is looked up first.
	sizesNext int

	mu sync.Mutex
	// dirs are the directories created or written into, with the mtime
	// their tar member gave (zero when none did).
	dirs map[string]time.Time
	// files counts regular files written; sawControl whether
	// global/pg_control came by.
	files      int
	sawControl bool
	// unsynced are the regular files written and not yet fsynced.
	unsynced []string
	// written is the size of the regular files written so far.
	written int64
	// dirFile is root's directory, opened on first use, for openat2.
	dirFile *os.File
	// noOpenat2 is set once openat2 turned out to be missing (Linux
	// before 5.6, or a seccomp filter): files are created through root.
	noOpenat2 atomic.Bool
	// manyFiles is set by Restore when the backup manifest lists
	// syncfsMinFiles files or more and one syncfs will make them durable:
	// the writeback of small files is then not started one by one.
	manyFiles bool
}

// startMin is the smallest file whose writeback a finished file starts at
// once (writeback.Writer.Start). Smaller files are left to the final
// syncfs, which writes them out together: one sync_file_range each cost
// a system call and a device request per file.
const startMin = 1 << 20

// syncfsMinFiles is how many files a restore writes before one syncfs per
// filesystem replaces the fsync of each file. syncfs also waits for what
// other processes wrote to the filesystem: below this, on a data
// directory of few and mostly large files, fsyncing each (its writeback
// started early) stays cheaper on a shared disk; above it the fsyncs
// themselves cost more (issue 21). The first this many files of an
// archive get their writeback started as before either way.
var syncfsMinFiles = 10000 // a variable so that TestRestore takes the syncfs path

func newUnpacker(root *os.Root, base bool, tablespaces map[uint32]string, owner *Owner) *unpacker {
	return &unpacker{root: root, base: base, tablespaces: tablespaces, owner: owner, dirs: map[string]time.Time{".": {}},
		perFileSync: !syncfsReportsErrors()}
}

// close releases the directory handle; finish calls it, and a restore
// that fails before finish does.
func (u *unpacker) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.dirFile != nil {
		_ = u.dirFile.Close()
		u.dirFile = nil
	}
}

// newFile is a regular file being restored: its descriptor, and an
// os.File around it only where one is needed (durable.Writer, or
// os.Root's fallback). os.NewFile costs an fcntl(2) per file, which on
// 120,000 relation files is 120,000 calls for nothing (issue 21).
type newFile struct {
	fd   int
	f    *os.File
	name string
}

// file returns the os.File of nf, made on first use; it owns the
// descriptor from then on.
func (nf *newFile) file() *os.File {
	if nf.f == nil {
		nf.f = os.NewFile(uintptr(nf.fd), nf.name) //nolint:gosec // a file descriptor is not negative
	}
	return nf.f
}

func (nf *newFile) close() error {
	if nf.f != nil {
		return nf.f.Close()
	}
	if err := unix.Close(nf.fd); err != nil {
		return &fs.PathError{Op: "close", Path: nf.name, Err: err}
	}
	return nil
}

// Write writes p to the descriptor in pieces of at most durable.MaxWrite
// bytes, as durable.Writer does (its comment says why).
func (nf *newFile) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k, err := unix.Write(nf.fd, p[:min(len(p), durable.MaxWrite)])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return n, &fs.PathError{Op: "write", Path: nf.name, Err: err}
		}
		if k == 0 {
			return n, &fs.PathError{Op: "write", Path: nf.name, Err: io.ErrShortWrite}
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// create makes a new regular file name with mode perm (less the umask)
// and opens it for writing. What stands at name is cleared first (a file
// or link, never a directory), as tar does.
//
// The file is created with one openat2(2) from the root's directory,
// confined by the kernel (RESOLVE_BENEATH, no symbolic links): os.Root
// opens and closes every directory on the way, per call, which on tens of
// thousands of relation files three levels deep was a large part of a
// restore's system time. Where openat2 is missing, or the kernel asks to
// retry after a concurrent rename, os.Root does it.
func (u *unpacker) create(name string, perm fs.FileMode) (*newFile, error) {
	f, err := u.createOnce(name, perm)
	if errors.Is(err, fs.ErrExist) {
		if err := u.clear(name); err != nil {
			return nil, err
		}
		f, err = u.createOnce(name, perm)
	}
	return f, err
}

func (u *unpacker) createOnce(name string, perm fs.FileMode) (*newFile, error) {
	if dfd, ok := u.dirFD(); ok {
		how := unix.OpenHow{
			Flags:   unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC,
			Mode:    uint64(perm.Perm()),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		}
		for {
			fd, err := unix.Openat2(dfd, name, &how)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err == nil {
				return &newFile{fd: fd, name: name}, nil
			}
			if errors.Is(err, unix.ENOSYS) {
				u.noOpenat2.Store(true)
			}
			if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EPERM) {
				return nil, &fs.PathError{Op: "openat2", Path: name, Err: err}
			}
			break
		}
	}
	f, err := u.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm.Perm())
	if err != nil {
		return nil, err
	}
	return &newFile{fd: int(f.Fd()), f: f, name: name}, nil //nolint:gosec // a file descriptor fits in int
}

// dirFD is the descriptor of root's directory, opened on first use.
func (u *unpacker) dirFD() (int, bool) {
	if u.noOpenat2.Load() {
		return 0, false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.dirFile == nil {
		f, err := u.root.Open(".")
		if err != nil {
			return 0, false
		}
		u.dirFile = f
	}
	return int(u.dirFile.Fd()), true //nolint:gosec // a file descriptor fits in int
}

// unpack reads the tar stream r to its end-of-archive marker and writes
// every member. Errors name the member.
func (u *unpacker) unpack(ctx context.Context, r io.Reader) error {
	tr := newTarReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read tar header: %w", err)
		}
		if isSparse(hdr) {
			// archive/tar expands a sparse member's holes into zeros: a
			// few KiB of archive become any number of written bytes.
			// PostgreSQL's BASE_BACKUP never sends one.
			return &memberErr{name: hdr.Name, err: errors.New("sparse tar members are not restored; PostgreSQL never sends one")}
		}
		if err := u.member(ctx, hdr, tr); err != nil {
			return &memberErr{name: hdr.Name, err: err}
		}
	}
}

// isSparse reports whether hdr is a GNU sparse member, old style or in
// PAX records.
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// cleanName turns a tar member name into a name relative to the root, or
// fails for names that could leave it. "" means the root itself.
func cleanName(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty name")
	}
	if strings.ContainsRune(name, 0) {
		return "", errors.New("name contains NUL")
	}
	if strings.HasPrefix(name, "/") {
		return "", errors.New("absolute name")
	}
	// Each part between slashes; without strings.Split, which allocated
	// a slice per archive member.
	for rest := name; ; {
		part, after, more := strings.Cut(rest, "/")
		if part == ".." {
			return "", errors.New("name contains ..")
		}
		if !more {
			break
		}
		rest = after
	}
	c := path.Clean(name)
	if c == "." {
		return "", nil
	}
	return c, nil
}

// skip reports whether a member of base.tar must not be restored.
func (u *unpacker) skip(name string, isDir bool) bool {
	if path.Base(name) == "pg_internal.init" {
		return true // relcache init files are rebuilt; stale ones are harmful
	}
	if !u.base {
		return false
	}
	if skippedTopLevel[name] {
		return true
	}
	// WAL comes from the archive through restore_command; a segment left
	// in pg_wal would be replayed before it. Keep the directories.
	if strings.HasPrefix(name, "pg_wal/") {
		return !isDir || (name != "pg_wal/archive_status")
	}
	return false
}

func (u *unpacker) member(ctx context.Context, hdr *tar.Header, r io.Reader) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	isDir := hdr.Typeflag == tar.TypeDir
	if name == "" {
		if !isDir {
			return errors.New("names the directory itself but is not a directory")
		}
		u.noteDir(".", hdr.ModTime)
		return nil
	}
	if u.skip(name, isDir) {
		return nil
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return u.mkdir(name, hdr)
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old tar writers use TypeRegA
		return u.regular(ctx, name, hdr, r)
	case tar.TypeSymlink:
		return u.symlink(name, hdr)
	case tar.TypeLink:
		return u.hardlink(name, hdr)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return errors.New("device files and FIFOs are not restored")
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
}

// dirMode is the mode of a restored directory: the owner always has full
// access and others none, as PostgreSQL requires; group read and search
// stay if the archive had them (initdb --allow-group-access).
func dirMode(m int64) fs.FileMode { return fs.FileMode(m)&0o750 | 0o700 }

// fileMode is the mode of a restored file, in the same spirit.
func fileMode(m int64) fs.FileMode { return fs.FileMode(m)&0o640 | 0o600 }

func (u *unpacker) noteDir(name string, mtime time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if t, ok := u.dirs[name]; !ok || !mtime.IsZero() || t.IsZero() {
		if mtime.IsZero() {
			mtime = t
		}
		u.dirs[name] = mtime
	}
}

// parent creates the directories above name that are missing.
func (u *unpacker) parent(name string) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	u.mu.Lock()
	_, known := u.dirs[dir]
	u.mu.Unlock()
	if known {
		return nil
	}
	// Walk down so that each created directory gets its owner and is
	// remembered for the final fsync.
	parts := strings.Split(dir, "/")
	for i := range parts {
		d := strings.Join(parts[:i+1], "/")
		st, err := u.root.Lstat(d)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := u.root.Mkdir(d, 0o700); err != nil {
				return err
			}
			if err := u.chown(d); err != nil {
				return err
			}
		case err != nil:
			return err
		case st.Mode()&fs.ModeSymlink != 0:
			return fmt.Errorf("parent %s is a symbolic link; restore does not write through links", d)
		case !st.IsDir():
			return fmt.Errorf("parent %s is not a directory", d)
		}
		u.noteDir(d, time.Time{})
	}
	return nil
}

func (u *unpacker) chown(name string) error {
	if u.owner == nil {
		return nil
	}
	return u.root.Lchown(name, u.owner.UID, u.owner.GID)
}

// clear removes what stands at name before a member replaces it, as tar
// does; a directory is only replaced by a directory.
func (u *unpacker) clear(name string) error {
	st, err := u.root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.IsDir() {
		return errors.New("a directory already exists there")
	}
	return u.root.Remove(name)
}

func (u *unpacker) mkdir(name string, hdr *tar.Header) error {
	if err := u.parent(name); err != nil {
		return err
	}
	st, err := u.root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := u.root.Mkdir(name, 0o700); err != nil {
			return err
		}
		if err := u.chown(name); err != nil {
			return err
		}
	case err != nil:
		return err
	case !st.IsDir():
		return errors.New("something other than a directory already exists there")
	}
	if err := u.root.Chmod(name, dirMode(hdr.Mode)); err != nil {
		return err
	}
	u.noteDir(name, hdr.ModTime)
	return nil
}

func (u *unpacker) regular(ctx context.Context, name string, hdr *tar.Header, r io.Reader) error {
	u.mu.Lock()
	over := u.limit > 0 && (hdr.Size > u.limit || u.written+hdr.Size > u.limit)
	if !over {
		u.written += hdr.Size
	}
	u.mu.Unlock()
	if over {
		return fmt.Errorf("its %d bytes would make the archive write more than the %d bytes backup.json records for it", hdr.Size, u.limit)
	}
	if want, ok := u.sizes.size(u.sizesPrefix, name, &u.sizesNext); ok && hdr.Size > want {
		return fmt.Errorf("it holds %d bytes, but %s lists %d", hdr.Size, manifestName, want)
	}
	if err := u.parent(name); err != nil {
		return err
	}
	dest := name
	if u.base {
		switch name {
		case pgControlName:
			// Written under another name and renamed last: a restore that
			// fails leaves a directory PostgreSQL refuses to start on.
			dest = pgControlTempName
			u.mu.Lock()
			u.sawControl = true
			u.mu.Unlock()
		case tablespaceMapName:
			data, err := io.ReadAll(io.LimitReader(r, maxTablespaceMap+1))
			if err != nil {
				return err
			}
			if len(data) > maxTablespaceMap {
				return errors.New("tablespace_map is larger than 1 MiB")
			}
			mapped, err := rewriteTablespaceMap(data, u.tablespaces)
			if err != nil {
				return err
			}
			r = bytes.NewReader(mapped)
		}
	}
	mode := fileMode(hdr.Mode)
	// Created with its mode when the umask leaves it whole (0600 and
	// 0640 under the usual 022 or 077), which saves an fchmod per file;
	// otherwise created 0600 and given its mode below.
	perm, chmod := fs.FileMode(0o600), true
	if um, ok := processUmask(); ok && mode&^um == mode {
		perm, chmod = mode, false
	}
	nf, err := u.create(dest, perm)
	if err != nil {
		return err
	}
	u.mu.Lock()
	early := !u.manyFiles && u.files < syncfsMinFiles
	u.mu.Unlock()
	// Writeback is started on large files, and on every file while the
	// per-file fsyncs at the end may be what makes them durable;
	// durable.Writer needs an os.File for it.
	start := !u.noSync && (u.perFileSync || early || hdr.Size >= startMin)
	var w io.Writer = nf
	var wb *durable.Writer
	if start {
		wb = durable.NewWriter(nf.file())
		w = wb
	}
	tr, lends := r.(*tarReader)
	lends = lends && tr.lends()
	switch {
	case hdr.Size >= pipelineMinSize:
		_, err = copyPipelined(w, ctxReader{ctx, r})
	case lends:
		// Written from the decompressor's buffers: no copy.
		_, err = tr.writeTo(ctx, w)
	default:
		buf := copyBuffers.Get().(*[]byte) //nolint:forcetypeassert // the pool holds nothing else
		_, err = io.CopyBuffer(w, ctxReader{ctx, r}, *buf)
		copyBuffers.Put(buf)
	}
	if err == nil && start {
		// The writeback runs while the rest is unpacked; the fsyncs
		// at the end (finish's of every file, in parallel, or the
		// filesystem's) find the file mostly clean.
		wb.Start()
	}
	if err == nil && !u.noSync {
		// Kept for finish: with few files it fsyncs each (see
		// syncfsMinFiles).
		u.mu.Lock()
		u.unsynced = append(u.unsynced, dest)
		u.mu.Unlock()
	}
	// Mode, owner and time are set on the open file: by name, each would
	// walk the path through root again.
	if err == nil && chmod {
		if cerr := unix.Fchmod(nf.fd, uint32(mode)); cerr != nil {
			err = &fs.PathError{Op: "fchmod", Path: dest, Err: cerr}
		}
	}
	if err == nil && u.owner != nil {
		if cerr := unix.Fchown(nf.fd, u.owner.UID, u.owner.GID); cerr != nil {
			err = &fs.PathError{Op: "fchown", Path: dest, Err: cerr}
		}
	}
	if err == nil {
		// Last: every write changes the modification time.
		err = futimes(nf.fd, dest, hdr.ModTime)
	}
	if cerr := nf.close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	u.mu.Lock()
	u.files++
	u.mu.Unlock()
	return nil
}

// symlink restores a symbolic link if it is one of the few a data
// directory legitimately holds: pg_tblspc/<oid> (pointed at where that
// tablespace is restored), a link to /dev/null (Stolon's
// postgresql.auto.conf), and relative links that stay inside the
// directory. Every other link is refused.
func (u *unpacker) symlink(name string, hdr *tar.Header) error {
	target := hdr.Linkname
	switch {
	case u.base && path.Dir(name) == "pg_tblspc":
		oid, err := strconv.ParseUint(path.Base(name), 10, 32)
		if err != nil {
			return fmt.Errorf("pg_tblspc entry %q is not a tablespace OID", path.Base(name))
		}
		dir, ok := u.tablespaces[uint32(oid)]
		if !ok {
			return fmt.Errorf("tablespace %d is linked but the backup has no archive for it", oid)
		}
		target = dir
	case target == devNull:
	case target == "" || strings.HasPrefix(target, "/") || strings.ContainsRune(target, 0):
		return fmt.Errorf("symbolic link to %q points outside the directory", target)
	default:
		resolved := path.Join(path.Dir(name), target)
		if resolved == ".." || strings.HasPrefix(resolved, "../") {
			return fmt.Errorf("symbolic link to %q points outside the directory", target)
		}
	}
	if err := u.parent(name); err != nil {
		return err
	}
	if err := u.clear(name); err != nil {
		return err
	}
	if err := u.root.Symlink(target, name); err != nil {
		return err
	}
	return u.chown(name)
}

// hardlink restores a hard link to a regular file restored earlier from the
// same archive.
func (u *unpacker) hardlink(name string, hdr *tar.Header) error {
	old, err := cleanName(hdr.Linkname)
	if err != nil || old == "" {
		return fmt.Errorf("hard link to %q: target is not a name inside the directory", hdr.Linkname)
	}
	st, err := u.root.Lstat(old)
	if err != nil {
		return fmt.Errorf("hard link to %q: %w", hdr.Linkname, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("hard link to %q: target is not a regular file", hdr.Linkname)
	}
	if err := u.parent(name); err != nil {
		return err
	}
	if err := u.clear(name); err != nil {
		return err
	}
	return u.root.Link(old, name)
}

// futimes sets the access and modification times of the file open as fd
// to t, as futimens(3); name is for the error.
func futimes(fd int, name string, t time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	// utimensat with a NULL path sets the times of the descriptor itself.
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0) //nolint:gosec // the kernel reads two timespecs
	if errno != 0 {
		return &fs.PathError{Op: "futimens", Path: name, Err: errno}
	}
	return nil
}

// processUmask returns the process's file mode creation mask, from
// /proc/self/status (Linux 4.7 and later): reading it with umask(2) would
// change it for a moment under every other goroutine. ok is false when it
// cannot be read.
var processUmask = sync.OnceValues(func() (fs.FileMode, bool) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				return 0, false
			}
			return fs.FileMode(m) & fs.ModePerm, true
		}
	}
	return 0, false
})

// finish sets the directories' modification times (deepest first, since
// creating entries changes a directory's time) and, with perFileSync,
// fsyncs every file and directory written, so that the restore is durable
// when it returns; otherwise the caller's syncfs does.
func (u *unpacker) finish() error {
	defer u.close()
	u.mu.Lock()
	names := make([]string, 0, len(u.dirs))
	for d := range u.dirs {
		names = append(names, d)
	}
	u.mu.Unlock()
	slices.SortFunc(names, func(a, b string) int { return strings.Compare(b, a) })
	for _, d := range names {
		if t := u.dirs[d]; !t.IsZero() {
			if err := u.root.Chtimes(d, t, t); err != nil {
				return fmt.Errorf("set the time of %s: %w", d, err)
			}
		}
	}
	if u.noSync || !u.perFileSync {
		return nil
	}
	var g errgroup.Group
	g.SetLimit(syncWorkers)
	for _, name := range u.unsynced {
		g.Go(func() error {
			if err := syncAt(u.root, name); err != nil {
				return fmt.Errorf("sync %s: %w", name, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, d := range names {
		if err := syncAt(u.root, d); err != nil {
			return fmt.Errorf("sync %s: %w", d, err)
		}
	}
	return nil
}

// rewriteTablespaceMap replaces the location of every tablespace in a
// tablespace_map file ("<oid> <path>" lines; PostgreSQL escapes \n, \r and
// \ in the path with a backslash) by its restore directory. An OID
// without a directory is an error.
func rewriteTablespaceMap(data []byte, dirs map[uint32]string) ([]byte, error) {
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxTablespaceMap)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		oidStr, _, ok := strings.Cut(line, " ")
		if !ok {
			return nil, fmt.Errorf("tablespace_map line %q has no path", line)
		}
		oid, err := strconv.ParseUint(oidStr, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("tablespace_map line %q: bad OID", line)
		}
		dir, ok := dirs[uint32(oid)]
		if !ok {
			return nil, fmt.Errorf("tablespace_map names tablespace %d but the backup has no archive for it", oid)
		}
		var esc strings.Builder
		for _, c := range []byte(dir) {
			if c == '\n' || c == '\r' || c == '\\' {
				esc.WriteByte('\\')
			}
			esc.WriteByte(c)
		}
		fmt.Fprintf(&out, "%d %s\n", oid, esc.String())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read tablespace_map: %w", err)
	}
	return out.Bytes(), nil
}

// ctxReader stops a long copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
