package restore

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/compress"
	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// DefaultParallel is how many stored archives Restore fetches and unpacks
// at once when Options.Parallel is 0: the base archive and one tablespace
// typically, without starving a small machine.
const DefaultParallel = 2

// manifestName is PostgreSQL's backup manifest, stored beside the archives
// and restored into the data directory as pg_basebackup does.
const manifestName = "backup_manifest"

// Options configures Restore.
type Options struct {
	// Backend and Cluster locate the archive (catalog.BackupPrefix).
	Backend storage.Backend
	Cluster string
	// Backup is the backup to restore, as the catalog holds it (see
	// ChooseBackup, catalog.ResolveBackup); its status must be done.
	Backup catalog.Backup
	// TargetDir is the data directory to restore into (absolute). It is
	// created (mode 0700) when missing.
	TargetDir string
	// TablespaceMap maps a tablespace OID to the directory to restore it
	// into; a tablespace not in the map goes to the location the backup
	// recorded, or with a Fence to DefaultTablespaceDir. Directories must
	// be absolute; an OID that the backup does not have is an error.
	TablespaceMap map[uint32]string
	// Fence, when set, is the directory every write must stay below (the
	// agent's restore-root): the target and every tablespace directory
	// must lie under it, symbolic links resolved, or Restore refuses
	// before writing anything (ErrOutside). Restore opens it once and does
	// everything through that handle (os.Root), so no symbolic link or
	// rename made under it while the restore runs can redirect a write
	// outside. A tablespace the map does not name goes to
	// DefaultTablespaceDir, never to the location backup.json records.
	Fence string
	// Force allows non-empty destinations: their old contents are moved to
	// a sibling "<dir>.barnacle-old-<UTC time>" (renamed, never deleted).
	// A directory in use by a running server is refused even with Force.
	Force bool
	// Parallel is how many archives are fetched and unpacked at once;
	// 0 means DefaultParallel.
	Parallel int
	// Recovery, when not nil, makes the data directory start archive
	// recovery: recovery.signal is written and the settings are appended
	// to postgresql.auto.conf. nil restores the data only (Stolon's keeper
	// writes recovery.signal and the settings itself).
	Recovery *Recovery
	// Owner, when not nil, is given every file and directory restored
	// (lchown); Restore run as root uses it for the postgres OS user.
	Owner *Owner
	// OnProgress, if set, is called with the uncompressed bytes read so far
	// and the backup's total (the sum of its files' Bytes), about every MiB
	// and once at the end. Calls come from Restore's worker goroutines one
	// at a time; it must return quickly.
	OnProgress func(done, total int64)
	// Logger receives the logs under the name "restore"; nil discards them.
	Logger hclog.Logger
	// Now is the clock for moved-aside names and the settings' comment;
	// nil means time.Now.
	Now func() time.Time
}

// Result is what Restore did.
type Result struct {
	BackupID  string `json:"backupID"`
	TargetDir string `json:"targetDir"`
	// Tablespaces maps each tablespace OID to the directory it was
	// restored into.
	Tablespaces map[uint32]string `json:"tablespaces,omitempty"`
	// MovedAside maps each destination that was not empty (Force) to the
	// directory its old contents were moved to.
	MovedAside map[string]string `json:"movedAside,omitempty"`
	// Bytes is the uncompressed archive bytes read; Files the regular
	// files written.
	Bytes int64 `json:"bytes"`
	Files int   `json:"files"`
	// Notes are things the operator should know, e.g. that the
	// postgresql.auto.conf symbolic link was replaced by a file.
	Notes []string `json:"notes,omitempty"`
}

// ObjectError is a failure to fetch, verify, decompress or unpack one stored
// object of a backup. Member is the tar member being written, when known.
type ObjectError struct {
	Object string
	Member string
	Err    error
}

// Error names the object and, when known, the member.
func (e *ObjectError) Error() string {
	if e.Member != "" {
		return fmt.Sprintf("restore: object %s: member %q: %v", e.Object, e.Member, e.Err)
	}
	return fmt.Sprintf("restore: object %s: %v", e.Object, e.Err)
}

// Unwrap returns the cause, e.g. a *storage.ChecksumError.
func (e *ObjectError) Unwrap() error { return e.Err }

// DefaultTablespaceDir is where a fenced restore (Options.Fence) puts a
// tablespace its map does not name: "<target>.tablespaces/<oid>", beside
// the target directory and so below the fence too. Not inside the target:
// PostgreSQL warns against tablespaces inside the data directory.
func DefaultTablespaceDir(target string, oid uint32) string {
	return filepath.Join(filepath.Clean(target)+".tablespaces", strconv.FormatUint(uint64(oid), 10))
}

// testHookChecked, when set (by tests only), runs after every destination
// was checked and before the first is changed: the moment a symbolic link
// swapped in would have redirected a restore that works by name.
var testHookChecked func()

// maxArchiveBytes bounds the size backup.json may claim for one stored
// archive: more is not a backup barnacle wrote but a document made to
// defeat the bound on what a restore writes.
const maxArchiveBytes = 1 << 50

// Restore restores opts.Backup into opts.TargetDir and its tablespace
// directories, and blocks until done. It checks every destination first
// (refusing, before it changes anything, one outside opts.Fence, one in
// use by a running server, a non-empty one without Force, and a backup
// whose recorded size exceeds the free space), moves non-empty ones aside
// with Force, then fetches the stored archives, opts.Parallel at a time,
// each written through a handle opened once below the fence. Each is
// read to its end, so the backend verifies its checksum; Restore also checks
// it against the checksum and size that backup.json recorded, and stops as
// soon as an archive would write more than that size or a file more than
// the size backup_manifest (fetched first) lists for it (sparse members
// are refused outright). Every file and directory written is on disk
// before Restore returns: with many files (syncfsMinFiles) one syncfs(2)
// per filesystem written to (a tablespace on another disk gets its own)
// flushes them all at the end, before global/pg_control is put in place;
// with fewer, or on kernels before 5.8, whose syncfs does not report
// write errors, each file and directory is fsynced instead. Members a restore must not
// bring back (postmaster.pid and .opts, standby.signal and recovery.signal,
// pg_internal.init, WAL in pg_wal) are left out; tablespace links and
// tablespace_map point at the restore directories.
//
// Any failure returns an error: an *ObjectError naming the object (and
// member) for damaged or unreadable data, wrapping storage.ErrChecksum when
// the bytes do not match their checksum; an error wrapping ErrInUse or
// ErrNotEmpty, ErrOutside or ErrNoSpace for refused destinations (nothing
// written), ErrRedirected for a destination redirected outside the fence
// while the restore ran; ctx's error when it ends. A failed
// restore leaves what it wrote, without global/pg_control, so PostgreSQL
// will not start on it; Result.MovedAside is set even then.
func Restore(ctx context.Context, opts Options) (Result, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	log = log.Named("restore")
	doc := opts.Backup
	res := Result{BackupID: doc.ID, Tablespaces: map[uint32]string{}, MovedAside: map[string]string{}}

	plan, err := planRestore(opts)
	if err != nil {
		return res, err
	}
	res.TargetDir = plan.target
	if opts.Recovery != nil {
		if _, err := RenderRecoverySettings(*opts.Recovery); err != nil {
			return res, err
		}
	}

	fenceDir, fenceShown := "/", "/"
	if opts.Fence != "" {
		fenceDir, fenceShown = opts.Fence, "restore-root "+opts.Fence
	}
	fc, err := openFence(fenceDir, fenceShown)
	if err != nil {
		return res, err
	}
	defer fc.root.Close()

	// Check every destination before changing any.
	dests := []destination{}
	d, err := inspectDir(fc, plan.target, "target directory", opts.Force, false)
	if err != nil {
		return res, err
	}
	dests = append(dests, d)
	tsDest := map[uint32]int{} // OID -> index in dests
	for _, a := range plan.archives {
		if a.tablespace == 0 {
			continue
		}
		d, err := inspectDir(fc, a.dir, tablespaceWhat(a.tablespace), opts.Force, true)
		if err != nil {
			return res, err
		}
		tsDest[a.tablespace] = len(dests)
		dests = append(dests, d)
	}
	if err := checkOverlap(dests); err != nil {
		return res, err
	}
	needs := make([]int64, len(dests))
	for _, a := range plan.archives {
		i := 0
		if a.tablespace != 0 {
			i = tsDest[a.tablespace]
		}
		needs[i] += a.file.Bytes
	}
	if err := checkSpace(fc, dests, needs); err != nil {
		return res, err
	}
	if testHookChecked != nil {
		testHookChecked()
	}
	t := now()
	for _, d := range dests {
		aside, err := makeReady(fc, d, t, opts.Owner)
		if aside != "" {
			res.MovedAside[d.path] = aside
			log.Info("moved old contents aside", "directory", d.path, "moved_to", aside)
		}
		if err != nil {
			return res, err
		}
	}
	// Each destination is opened once, through the fence, and written
	// only through that handle. Its path as the kernel names the opened
	// directory is what is reported and what pg_tblspc links point to.
	roots := make([]*os.Root, len(dests))
	defer func() {
		for _, r := range roots {
			if r != nil {
				_ = r.Close()
			}
		}
	}()
	for i := range dests {
		d := &dests[i]
		r, err := fc.root.OpenRoot(d.rel)
		if err != nil {
			return res, fmt.Errorf("restore: open %s %s: %w", d.what, d.path, fc.outside(err, d.what, d.path))
		}
		roots[i] = r
		p, err := handlePath(r, ".")
		if err != nil {
			return res, fmt.Errorf("restore: open %s %s: %w", d.what, d.path, err)
		}
		if _, err := fc.rel(p, d.what, d.path); err != nil {
			return res, err
		}
		d.path = p
	}
	// Durability: one syncfs per filesystem written to, at the end,
	// where the kernel's syncfs reports write errors; opened now, before
	// the first write, since syncfs reports only the errors that come
	// after its file was opened.
	perFileSync := !syncfsReportsErrors()
	var syncer *fsSyncer
	if !perFileSync {
		what := make([]string, len(dests))
		for i, d := range dests {
			what[i] = d.what + " " + d.path
		}
		if syncer, err = newFSSyncer(roots, what); err != nil {
			return res, err
		}
		held := syncer
		defer func() { _ = held.close() }()
	}
	res.TargetDir = dests[0].path
	for oid, i := range tsDest {
		res.Tablespaces[oid] = dests[i].path
	}

	var total int64
	for _, f := range doc.Files {
		total += f.Bytes
	}
	prog := &progress{fn: opts.OnProgress, total: total}

	log.Info("restore started", "backup", doc.ID, "target_dir", res.TargetDir, "archives", len(plan.archives))
	// The manifest first: the sizes it lists bound each file the
	// archives may write (it is verified against its checksum like every
	// object).
	var sizes *manifestIndex
	for _, a := range plan.archives {
		if a.file.Name != manifestName {
			continue
		}
		if err := fetchObject(ctx, opts.Backend, catalog.BackupPrefix(opts.Cluster, doc.ID), a, roots[0], nil, opts.Owner, prog); err != nil {
			return res, err
		}
		data, err := roots[0].ReadFile(manifestName)
		if err != nil {
			return res, fmt.Errorf("restore: read back %s: %w", manifestName, err)
		}
		if sizes, err = manifestSizes(data); err != nil {
			return res, &ObjectError{Object: a.file.Name, Err: err}
		}
	}
	var unpackers []*unpacker
	var base *unpacker
	g, gctx := errgroup.WithContext(ctx)
	parallel := opts.Parallel
	if parallel <= 0 {
		parallel = DefaultParallel
	}
	g.SetLimit(parallel)
	for _, a := range plan.archives {
		root := roots[0]
		if a.tablespace != 0 {
			root = roots[tsDest[a.tablespace]]
		}
		if a.file.Name == manifestName {
			continue // fetched above
		}
		u := newUnpacker(root, a.tablespace == 0, res.Tablespaces, opts.Owner)
		u.perFileSync = perFileSync
		defer u.close()
		u.limit = a.file.Bytes
		u.sizes = sizes
		// The manifest lists every file: with as many as one syncfs is
		// for, no small file's writeback is started on its own.
		u.manyFiles = syncer != nil && sizes.files() >= syncfsMinFiles
		if a.tablespace != 0 {
			u.sizesPrefix = "pg_tblspc/" + strconv.FormatUint(uint64(a.tablespace), 10) + "/"
		}
		unpackers = append(unpackers, u)
		if a.tablespace == 0 {
			base = u
		}
		g.Go(func() error {
			return fetchObject(gctx, opts.Backend, catalog.BackupPrefix(opts.Cluster, doc.ID), a, root, u, opts.Owner, prog)
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	for _, u := range unpackers {
		res.Files += u.files
	}
	res.Bytes = prog.done
	if !base.sawControl {
		return res, fmt.Errorf("restore: object %s has no %s: it is not a base backup of a data directory", plan.archives[0].file.Name, pgControlName)
	}

	baseRoot := roots[0]
	if opts.Recovery != nil {
		notes, err := writeRecovery(baseRoot, *opts.Recovery, doc.ID, now(), opts.Owner)
		res.Notes = append(res.Notes, notes...)
		if err != nil {
			return res, err
		}
	}
	if res.Files < syncfsMinFiles {
		// Few files: each is fsynced, and syncfs does not wait for other
		// writers of the filesystem.
		for _, u := range unpackers {
			u.perFileSync = true
		}
		syncer = nil
	}
	for _, u := range unpackers {
		if err := u.finish(); err != nil {
			return res, fmt.Errorf("restore: %w", err)
		}
	}
	if syncer != nil {
		// Every file and directory written, global/pg_control's
		// temporary name included, reaches the disk before the rename
		// below makes the directory startable.
		if err := syncer.sync(); err != nil {
			return res, err
		}
	}
	// Last, and durable only after everything else is: the control file
	// makes the directory startable.
	if err := baseRoot.Rename(pgControlTempName, pgControlName); err != nil {
		return res, fmt.Errorf("restore: put %s in place: %w", pgControlName, err)
	}
	if err := syncDir(baseRoot, "global"); err != nil {
		return res, err
	}
	for _, d := range dests {
		if err := syncDir(fc.root, filepath.Dir(d.rel)); err != nil {
			return res, err
		}
	}
	prog.final()
	log.Info("restore done", "backup", doc.ID, "target_dir", res.TargetDir, "bytes", res.Bytes, "files", res.Files)
	return res, nil
}

// archive is one stored object to restore and where it goes.
type archive struct {
	file catalog.BackupFile
	// tablespace is the OID for a tablespace archive, 0 for base.tar and
	// the manifest.
	tablespace uint32
	dir        string
	// compression is the algorithm for compress.NewReader.
	compression string
}

type restorePlan struct {
	target string
	// archives has base.tar first.
	archives []archive
}

// planRestore checks the options and the backup document and decides
// where each stored object goes.
func planRestore(opts Options) (restorePlan, error) {
	doc := opts.Backup
	var p restorePlan
	if opts.Backend == nil {
		return p, errors.New("restore: options: backend is required")
	}
	if opts.Cluster == "" {
		return p, errors.New("restore: options: cluster is required")
	}
	if opts.TargetDir == "" {
		return p, errors.New("restore: options: target directory is required")
	}
	if doc.Status != catalog.StatusDone {
		return p, fmt.Errorf("restore: backup %s has status %q; only a done backup can be restored", doc.ID, doc.Status)
	}
	target, err := filepath.Abs(opts.TargetDir)
	if err != nil {
		return p, fmt.Errorf("restore: target directory: %w", err)
	}
	p.target = target
	var base *archive
	seen := map[uint32]bool{}
	var rest []archive
	for _, f := range doc.Files {
		name, alg, err := splitArchiveName(f.Name)
		if err != nil {
			return p, fmt.Errorf("restore: backup %s: %w", doc.ID, err)
		}
		a := archive{file: f, compression: alg}
		if f.Bytes <= 0 || f.Bytes > maxArchiveBytes || f.StoredBytes < 0 || f.StoredBytes > maxArchiveBytes {
			return p, fmt.Errorf("restore: backup %s: object %s records %d bytes (%d stored), which no archive barnacle writes holds; the document is damaged",
				doc.ID, f.Name, f.Bytes, f.StoredBytes)
		}
		switch {
		case name == manifestName:
		case name == "base.tar":
			if base != nil {
				return p, fmt.Errorf("restore: backup %s lists two base archives", doc.ID)
			}
			base = &a
			continue
		default:
			oid, err := strconv.ParseUint(strings.TrimSuffix(name, ".tar"), 10, 32)
			if err != nil || oid == 0 || !strings.HasSuffix(name, ".tar") || f.TablespaceOID != uint32(oid) {
				return p, fmt.Errorf("restore: backup %s: object %s is neither base.tar nor <tablespace OID>.tar of its recorded tablespace", doc.ID, f.Name)
			}
			if seen[uint32(oid)] {
				return p, fmt.Errorf("restore: backup %s lists tablespace %d twice", doc.ID, oid)
			}
			seen[uint32(oid)] = true
			a.tablespace = uint32(oid)
			a.dir = f.TablespaceLocation
			if opts.Fence != "" {
				// Whoever may write restore requests or backup.json does
				// not choose where a fenced restore writes.
				a.dir = DefaultTablespaceDir(target, a.tablespace)
			}
			if m, ok := opts.TablespaceMap[a.tablespace]; ok {
				a.dir = m
			}
			if !filepath.IsAbs(a.dir) {
				return p, fmt.Errorf("restore: directory %q of tablespace %d is not an absolute path", a.dir, oid)
			}
			a.dir = filepath.Clean(a.dir)
		}
		rest = append(rest, a)
	}
	if base == nil {
		return p, fmt.Errorf("restore: backup %s has no base archive (base.tar) among its files", doc.ID)
	}
	for oid := range opts.TablespaceMap {
		if !seen[oid] {
			return p, fmt.Errorf("restore: tablespace map names tablespace %d, which backup %s does not have", oid, doc.ID)
		}
	}
	p.archives = append([]archive{*base}, rest...)
	return p, nil
}

// manifestSizes reads the size of every file a backup manifest lists,
// by its path in the data directory (tablespace files under
// pg_tblspc/<oid>/).
func manifestSizes(data []byte) (*manifestIndex, error) {
	files, ok := scanManifest(data)
	if !ok {
		var m struct {
			Files []manifestFile `json:"Files"`
		}
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, fmt.Errorf("parse %s: %w", manifestName, err)
		}
		files = m.Files
	}
	idx := &manifestIndex{paths: make([]string, len(files)), sizes: make([]int64, len(files)),
		at: make(map[string]int, len(files)), inOrder: true}
	for i, f := range files {
		p := f.Path
		if f.EncodedPath != "" {
			raw, err := hex.DecodeString(f.EncodedPath)
			if err != nil {
				return nil, fmt.Errorf("%s: Encoded-Path %q is not hex", manifestName, f.EncodedPath)
			}
			p = string(raw)
		}
		if f.Size < 0 || f.Size > maxArchiveBytes {
			return nil, fmt.Errorf("%s: %s has size %d", manifestName, p, f.Size)
		}
		if _, dup := idx.at[p]; dup {
			idx.inOrder = false // the last listing counts, as it always did
		}
		idx.paths[i], idx.sizes[i], idx.at[p] = p, f.Size, i
	}
	return idx, nil
}

// manifestIndex is the sizes a backup manifest lists, in its order and
// by path. PostgreSQL lists the files in the order it sends them, so an
// archive's members are looked up by position first (next), and by path
// (a map lookup, a tenth of the unpacking goroutine's CPU on 121,000
// relation files) only when the member is not the next one listed.
type manifestIndex struct {
	paths []string
	sizes []int64
	at    map[string]int // index of each path in paths
	// inOrder is false when a path is listed twice: lookups then go by
	// path only, so that the last listing counts.
	inOrder bool
}

// files is how many files the manifest lists.
func (m *manifestIndex) files() int {
	if m == nil {
		return 0
	}
	return len(m.at)
}

// size returns the size the manifest lists for prefix+name; *next is the
// position to try first, updated to the one after the file found.
func (m *manifestIndex) size(prefix, name string, next *int) (int64, bool) {
	if m == nil {
		return 0, false
	}
	if i := *next; m.inOrder && i < len(m.paths) {
		if p := m.paths[i]; len(p) == len(prefix)+len(name) && strings.HasPrefix(p, prefix) && p[len(prefix):] == name {
			*next = i + 1
			return m.sizes[i], true
		}
	}
	i, ok := m.at[prefix+name]
	if !ok {
		return 0, false
	}
	*next = i + 1
	return m.sizes[i], true
}

// splitArchiveName returns the name without its compression suffix and
// the algorithm that suffix means.
func splitArchiveName(name string) (string, string, error) {
	switch {
	case strings.HasSuffix(name, ".zst"):
		return strings.TrimSuffix(name, ".zst"), compress.Zstd, nil
	case strings.HasSuffix(name, ".lz4"):
		return strings.TrimSuffix(name, ".lz4"), compress.LZ4, nil
	case strings.Contains(name, "/") || name == "":
		return "", "", fmt.Errorf("object name %q is not a backup file name", name)
	}
	return name, compress.None, nil
}

// fetchObject streams one stored object: through a hash (checked against
// backup.json's checksum, when the backend holds another one), a decompressor and the unpacker, or for the
// manifest into a file in root. It reads the stored object to its end so
// that the backend verifies its checksum too.
func fetchObject(ctx context.Context, b storage.Backend, prefix string, a archive, root *os.Root, u *unpacker, owner *Owner, prog *progress) (err error) {
	f := a.file
	objErr := func(member string, err error) error { return &ObjectError{Object: f.Name, Member: member, Err: err} }
	// The backend verifies the bytes against the digest stored with the
	// object as they are read; when that digest is backup.json's, hashing
	// them a second time here would only cost CPU.
	var h *storage.Hash
	if info, err := b.Stat(ctx, prefix+f.Name); err != nil {
		return objErr("", err)
	} else if f.Checksum != "" && !strings.EqualFold(info.Checksum, f.Checksum) {
		if h, err = storage.HashFor(f.Checksum); err != nil {
			return objErr("", fmt.Errorf("backup.json: %w", err))
		}
	}
	rc, err := b.Get(ctx, prefix+f.Name)
	if err != nil {
		return objErr("", err)
	}
	defer rc.Close()
	var src io.Reader = rc
	if h != nil {
		src = io.TeeReader(rc, h)
	}
	raw := &countingReader{r: src}
	// drainRaw reads the rest of the stored object: a damaged object
	// often breaks decompression or tar parsing first, and its checksum
	// error (the cause) only shows at its end.
	drainRaw := func(cause error) error {
		if _, err := io.Copy(io.Discard, raw); err != nil {
			if errors.Is(err, storage.ErrChecksum) || cause == nil {
				return objErr("", err)
			}
		}
		return nil
	}
	ra, err := decompressAhead(a.compression, raw)
	if err != nil {
		return objErr("", err)
	}
	defer ra.Close()
	// The decompressed stream may not exceed what backup.json records: a
	// small compressed object can expand to any size (a zstd bomb), and it
	// must stop as soon as it does, not at the end.
	plain := &countingReader{r: ra, onRead: prog.add, limit: f.Bytes}

	var member string
	if u == nil {
		err = writeManifest(ctx, root, plain, owner)
	} else {
		err = u.unpack(ctx, plain)
		if err != nil {
			member, err = splitMember(err)
		}
	}
	if err == nil {
		// Trailing bytes after the tar end marker (padding) and the end of
		// the compressed stream, where the decompressor checks its frame.
		if _, err = io.Copy(io.Discard, plain); err != nil {
			member = ""
		}
	}
	if err != nil {
		_ = ra.Close() // drainRaw reads raw, which the read-ahead must not any more
		if ctx.Err() != nil {
			return objErr(member, err)
		}
		if cerr := drainRaw(err); cerr != nil {
			// The damage (cerr) is the cause; what it broke on the way
			// is said once, after it, not as a second "restore: object"
			// error that reads like the same failure printed twice.
			what := "it"
			if member != "" {
				what = fmt.Sprintf("member %q", member)
			}
			return fmt.Errorf("%w (which also broke reading %s: %w)", cerr, what, err)
		}
		return objErr(member, err)
	}
	if err := drainRaw(nil); err != nil {
		return err
	}
	if h != nil {
		if got := h.Checksum(); !strings.EqualFold(got, f.Checksum) {
			return objErr("", &storage.ChecksumError{Name: prefix + f.Name, Want: f.Checksum, Got: got})
		}
	}
	if f.StoredBytes > 0 && raw.n != f.StoredBytes {
		return objErr("", fmt.Errorf("stored size is %d bytes, backup.json records %d", raw.n, f.StoredBytes))
	}
	if f.Bytes > 0 && plain.n != f.Bytes {
		return objErr("", fmt.Errorf("uncompressed size is %d bytes, backup.json records %d", plain.n, f.Bytes))
	}
	return nil
}

// splitMember takes the tar member name out of an unpacker error.
func splitMember(err error) (string, error) {
	var me *memberErr
	if errors.As(err, &me) {
		return me.name, me.err
	}
	return "", err
}

// memberErr carries the tar member name out of the unpacker.
type memberErr struct {
	name string
	err  error
}

func (e *memberErr) Error() string { return fmt.Sprintf("member %q: %v", e.name, e.err) }
func (e *memberErr) Unwrap() error { return e.err }

func writeManifest(ctx context.Context, root *os.Root, r io.Reader, owner *Owner) error {
	return createSync(root, manifestName, ctxReader{ctx, r}, owner)
}

// writeRecovery writes recovery.signal and appends the settings to
// postgresql.auto.conf, replacing a symbolic link there (Stolon points it
// at /dev/null) by a regular file.
func writeRecovery(root *os.Root, r Recovery, backupID string, now time.Time, owner *Owner) ([]string, error) {
	settings, err := RenderRecoverySettings(r)
	if err != nil {
		return nil, err
	}
	var notes []string
	existing := []byte(nil)
	st, err := root.Lstat(autoConfName)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		existing = []byte("# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n")
	case err != nil:
		return nil, fmt.Errorf("restore: %s: %w", autoConfName, err)
	case st.Mode()&fs.ModeSymlink != 0:
		link, _ := root.Readlink(autoConfName)
		notes = append(notes, fmt.Sprintf("%s was a symbolic link to %s; it is now a regular file holding the recovery settings", autoConfName, link))
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("restore: %s is not a regular file", autoConfName)
	default:
		if existing, err = root.ReadFile(autoConfName); err != nil {
			return nil, fmt.Errorf("restore: read %s: %w", autoConfName, err)
		}
		if len(existing) > 0 && existing[len(existing)-1] != '\n' {
			existing = append(existing, '\n')
		}
	}
	content := append(existing, []byte(settingsHeader(backupID, now)+settings)...)
	// Written beside and renamed over, so a crash leaves the old file or
	// the new one, and a symbolic link is replaced, not followed.
	tmp := autoConfName + ".barnacle-tmp"
	if err := writeFileSync(root, tmp, content, owner); err != nil {
		return notes, fmt.Errorf("restore: write %s: %w", autoConfName, err)
	}
	if err := root.Rename(tmp, autoConfName); err != nil {
		return notes, fmt.Errorf("restore: write %s: %w", autoConfName, err)
	}
	if err := writeFileSync(root, recoverySignal, nil, owner); err != nil {
		return notes, fmt.Errorf("restore: write %s: %w", recoverySignal, err)
	}
	return notes, nil
}

func writeFileSync(root *os.Root, name string, data []byte, owner *Owner) error {
	_ = root.Remove(name)
	return createSync(root, name, bytes.NewReader(data), owner)
}

// createSync creates name under root (it must not exist), copies r into
// it, fsyncs it and gives it to owner.
func createSync(root *os.Root, name string, r io.Reader, owner *Owner) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && owner != nil {
		err = root.Lchown(name, owner.UID, owner.GID)
	}
	return err
}

// countingReader counts the bytes read and reports them.
type countingReader struct {
	r      io.Reader
	n      int64
	onRead func(int64)
	// limit, when positive, is how many bytes may be read: one more is
	// an error (errTooLarge), returned at once.
	limit int64
}

// errTooLarge is what a countingReader returns past its limit.
var errTooLarge = errors.New("the archive holds more data than backup.json records for it; stopped before writing more")

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.allow(len(p))
	if err != nil {
		return 0, err
	}
	return c.account(c.r.Read(p[:k]))
}

// allow returns how many of want bytes may be read next: all, or up to
// one past the limit (to see that it is passed), or errTooLarge.
func (c *countingReader) allow(want int) (int, error) {
	if c.limit > 0 {
		if c.n > c.limit {
			return 0, errTooLarge
		}
		if rem := c.limit - c.n + 1; int64(want) > rem {
			want = int(rem)
		}
	}
	return want, nil
}

// account counts n bytes just read (with err) and reports them: it
// returns how many are within the limit, and errTooLarge past it.
func (c *countingReader) account(n int, err error) (int, error) {
	c.n += int64(n)
	if c.limit > 0 && c.n > c.limit {
		n -= int(c.n - c.limit)
		err = errTooLarge
	}
	if c.onRead != nil && n > 0 {
		c.onRead(int64(n))
	}
	return n, err
}

// chunkReader lends its own buffer instead of copying into the caller's
// (compress.FrameReader): Next returns the next bytes, at most n, valid
// until the next call.
type chunkReader interface {
	Next(n int) ([]byte, error)
}

// chunks returns c as a chunkReader when the reader under it is one, nil
// otherwise.
func (c *countingReader) chunks() chunkReader {
	if _, ok := c.r.(chunkReader); ok {
		return c
	}
	return nil
}

// Next is Read without the copy, counted and bounded the same way; only
// for a countingReader whose chunks is not nil.
func (c *countingReader) Next(n int) ([]byte, error) {
	k, err := c.allow(n)
	if err != nil {
		return nil, err
	}
	b, err := c.r.(chunkReader).Next(k) //nolint:forcetypeassert // chunks checked it
	m, err := c.account(len(b), err)
	return b[:m], err
}

// progress sums the bytes of all workers and calls the callback about
// every MiB, one call at a time.
type progress struct {
	fn    func(done, total int64)
	total int64

	mu       sync.Mutex
	done     int64
	reported int64
}

const progressStep = 1 << 20

func (p *progress) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if p.fn != nil && p.done-p.reported >= progressStep {
		p.reported = p.done
		p.fn(p.done, p.total)
	}
}

func (p *progress) final() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fn != nil {
		p.fn(p.done, p.total)
	}
}

// decodeWorkers is how many goroutines decode the frames of one zstd
// archive (compress.FrameReader); DefaultParallel archives are restored at
// once.
const decodeWorkers = 2

// decompressAhead returns the decompressed content of raw, read (and so
// hashed) and decompressed in other goroutines than the caller's, which
// parses the tar stream and writes files. Close stops them and waits until
// raw is no longer read, so that the caller may read it itself.
func decompressAhead(algorithm string, raw io.Reader) (io.ReadCloser, error) {
	if algorithm == compress.Zstd {
		// Archives of compress.FrameWriter decode on several cores and
		// read ahead by themselves; others fall back to one stream.
		return compress.NewFrameReader(raw, decodeWorkers)
	}
	dec, err := compress.NewReader(algorithm, raw)
	if err != nil {
		return nil, err
	}
	return &decoderAhead{readAhead: newReadAhead(dec), dec: dec}, nil
}

// decoderAhead is a decompressor read ahead by a readAhead.
type decoderAhead struct {
	*readAhead
	dec io.Closer
}

func (d *decoderAhead) Close() error {
	d.stop()
	return d.dec.Close()
}

// readAheadChunk and readAheadDepth size the buffer between the
// decompressing goroutine and the writing one: 8 MiB in flight.
const (
	readAheadChunk = 1 << 20
	readAheadDepth = 8
)

// readAhead reads r in its own goroutine into a bounded queue of chunks.
type readAhead struct {
	ch   chan []byte
	free chan []byte
	done chan struct{}
	err  error  // set before ch is closed
	buf  []byte // the chunk being read from, whole
	cur  []byte // its unread rest
	once sync.Once
}

func newReadAhead(r io.Reader) *readAhead {
	ra := &readAhead{ch: make(chan []byte, readAheadDepth), free: make(chan []byte, readAheadDepth+2), done: make(chan struct{})}
	go func() {
		defer close(ra.ch)
		for {
			var buf []byte
			select {
			case buf = <-ra.free:
			default:
				buf = make([]byte, readAheadChunk)
			}
			// Not io.ReadFull: it would turn a decompressor's
			// io.ErrUnexpectedEOF (a stream cut short) into a clean end.
			n, err := fill(r, buf[:cap(buf)])
			if n > 0 {
				select {
				case ra.ch <- buf[:n]:
				case <-ra.done:
					return
				}
			}
			if err != nil {
				ra.err = err
				return
			}
		}
	}()
	return ra
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		buf, ok := <-ra.ch
		if !ok {
			return 0, ra.err
		}
		ra.buf, ra.cur = buf, buf
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	if len(ra.cur) == 0 {
		select {
		case ra.free <- ra.buf[:cap(ra.buf)]:
		default:
		}
	}
	return n, nil
}

// stop ends the goroutine and waits for it, so that r can be closed; a
// read of r in progress must end (ctx's end makes the backend's reader
// return).
func (ra *readAhead) stop() {
	ra.once.Do(func() { close(ra.done) })
	for range ra.ch {
	}
}
