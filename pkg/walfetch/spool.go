package walfetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/durable"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// The spool holds, per archive, one directory of files named after the
// segment they concern:
//
//	<segment>.<blake3>   a prefetched segment, complete: the name carries
//	                     the BLAKE3-256 of its bytes (hex), checked before
//	                     use (fast, on replay's critical path; a spool file
//	                     from a version that named SHA-256 there fails the
//	                     check and is fetched again)
//	<segment>.lock       flock(2)ed by whoever is fetching the segment
//	<segment>.tmp-*      a download in progress (or the debris of a
//	                     killed one, removed by the next lock holder)
//
// A spooled segment appears by rename only, after its bytes were read
// verified from the archive, so a crash never leaves a truncated file
// under a final name; the digest in the name also catches later damage
// (a crash before the unfsynced data reached the disk, a bit flip), and
// such a file is deleted instead of served. Locks only save work (a Fetch
// waits for a prefetcher that is downloading its segment instead of
// downloading it again); correctness rests on the rename and the digest.

const (
	lockSuffix = ".lock"
	tmpInfix   = ".tmp-"
	// spoolKeyLen is the length of the per-archive directory names.
	spoolKeyLen = 16
	// lockPoll is how often lockWait retries a lock held by a prefetcher.
	lockPoll = 10 * time.Millisecond
)

// lockBusyHook, if set (by tests), is called each time lockWait finds a
// lock held.
var lockBusyHook func(file string)

type spool struct {
	root string // Options.SpoolDir
	dir  string // root/<key>
	log  hclog.Logger
}

// openSpool creates the spool directory for the archive at url and
// cluster. The key keeps a spool left in the data directory by a restore
// from another archive from ever being served. Only Fetch (createRoot)
// creates root: a prefetcher still running once RemoveSpool has removed
// root at the end of recovery must not bring it back.
func openSpool(root, url, cluster string, log hclog.Logger, createRoot bool) (*spool, error) {
	sum := sha256.Sum256([]byte(url + "\x00" + cluster))
	sp := &spool{root: root, dir: filepath.Join(root, hex.EncodeToString(sum[:])[:spoolKeyLen]), log: log}
	if createRoot {
		if err := os.MkdirAll(sp.dir, 0o700); err != nil {
			return nil, fmt.Errorf("create the prefetch spool: %w", err)
		}
		return sp, nil
	}
	if err := os.Mkdir(sp.dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("open the prefetch spool (removed at the end of recovery?): %w", err)
	}
	return sp, nil
}

// isSpoolKey reports whether name looks like a per-archive directory.
func isSpoolKey(name string) bool {
	if len(name) != spoolKeyLen {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil
}

func finalName(file, sum string) string { return file + "." + sum }

// spooled returns the paths of the complete spooled copies of file
// (normally none or one).
func (sp *spool) spooled(file string) []string {
	entries, err := os.ReadDir(sp.dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), file+".")
		if ok && len(rest) == 64 && isLowerHex(rest) {
			out = append(out, filepath.Join(sp.dir, e.Name()))
		}
	}
	return out
}

func isLowerHex(s string) bool {
	for i := range len(s) {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// removeStale deletes what recovery will not ask for again: spooled files
// of segments before file on its timeline, and of older timelines (a
// prefetcher that ran past a timeline switch), and per-archive directories
// of other archives. Errors are ignored: stale files cost space, not
// correctness.
func (sp *spool) removeStale(file string) {
	if entries, err := os.ReadDir(sp.root); err == nil {
		for _, e := range entries {
			if e.IsDir() && isSpoolKey(e.Name()) && filepath.Join(sp.root, e.Name()) != sp.dir {
				_ = os.RemoveAll(filepath.Join(sp.root, e.Name()))
			}
		}
	}
	entries, err := os.ReadDir(sp.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		n := e.Name()
		if len(n) < 24 || !wal.IsSegmentFileName(n[:24]) {
			continue
		}
		if !before(n[:24], file) {
			continue
		}
		switch rest := n[24:]; {
		case rest == lockSuffix:
			// Only while holding it: whoever holds it may be writing.
			if unlock, ok, _ := sp.tryLock(n[:24]); ok {
				_ = os.Remove(filepath.Join(sp.dir, n))
				unlock()
			}
		case strings.HasPrefix(rest, tmpInfix) && !isOld(filepath.Join(sp.dir, n)):
			// A prefetcher is still writing it; it goes next time.
		default:
			_ = os.Remove(filepath.Join(sp.dir, n))
			sp.log.Trace("stale spool file removed", "spool_file", n)
		}
	}
}

// before reports whether recovery, asking for segment file, is past
// segment a: a is on an older timeline, or earlier on the same one. Hex
// names of one width order like their numbers: timeline first, then the
// segment.
func before(a, file string) bool {
	return a[:8] < file[:8] || (a[:8] == file[:8] && a[8:24] < file[8:24])
}

// positionFile holds the name of the segment recovery last asked for, so
// that a slow prefetcher does not download segments already served.
const positionFile = "position"

// setPosition records that recovery asked for segment file. Best effort.
func (sp *spool) setPosition(file string) { sp.writeSmall(positionFile, file) }

// passed reports whether recovery has asked for file or a later segment.
func (sp *spool) passed(file string) bool {
	pos, err := os.ReadFile(filepath.Join(sp.dir, positionFile))
	if err != nil || !wal.IsSegmentFileName(string(pos)) {
		return false
	}
	return !before(string(pos), file)
}

// segmentSizeFile caches the archive's segment size, which never changes
// (catalog.EnsureIdentity refuses a server with another one), so that a
// prefetcher can name the next segments without a round trip to the
// archive first.
const segmentSizeFile = "segment-size"

// segmentSize returns the cached segment size, or 0.
func (sp *spool) segmentSize() uint64 {
	data, err := os.ReadFile(filepath.Join(sp.dir, segmentSizeFile))
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(string(data), 10, 64)
	if err != nil || wal.ValidSegmentSize(n) != nil {
		return 0
	}
	return n
}

// setSegmentSize caches the segment size. Best effort.
func (sp *spool) setSegmentSize(n uint64) { sp.writeSmall(segmentSizeFile, strconv.FormatUint(n, 10)) }

// writeSmall replaces the small file name with content, atomically. Best
// effort: the files it writes only save work.
func (sp *spool) writeSmall(name, content string) {
	_ = durable.WriteFile(filepath.Join(sp.dir, name), name+tmpInfix, 0o600, func(w io.Writer) error {
		_, err := io.WriteString(w, content)
		return err
	})
}

// isOld reports whether the file p was last written long enough ago to
// be the debris of a killed writer rather than a write in progress.
func isOld(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && time.Since(fi.ModTime()) > staleTempAge
}

// removeTemps deletes file's temporary downloads; only the holder of
// file's lock calls it, so none of them is in use.
func (sp *spool) removeTemps(file string) {
	matches, _ := filepath.Glob(filepath.Join(sp.dir, file+tmpInfix+"*"))
	for _, m := range matches {
		_ = os.Remove(m)
	}
}

// tryLock takes file's lock without waiting; ok is false when another
// process (or another open file in this one) holds it. The lock goes with
// the process, so a killed prefetcher never blocks anyone. Lock files are
// deleted while locked (removeStale), so a lock taken on a file that is no
// longer the one under the name is dropped and taken again.
func (sp *spool) tryLock(file string) (unlock func(), ok bool, err error) {
	p := filepath.Join(sp.dir, file+lockSuffix)
	for {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, false, fmt.Errorf("open the spool lock for %s: %w", file, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			_ = f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, false, nil
			}
			return nil, false, fmt.Errorf("lock the spool for %s: %w", file, err)
		}
		held, herr := f.Stat()
		named, nerr := os.Stat(p)
		if herr == nil && nerr == nil && os.SameFile(held, named) {
			return func() { _ = f.Close() }, true, nil
		}
		_ = f.Close()
		if herr != nil {
			return nil, false, fmt.Errorf("lock the spool for %s: %w", file, herr)
		}
	}
}

// lockWait takes file's lock, waiting up to wait for a prefetcher that
// holds it; after that it goes on without the lock (the prefetcher may be
// stuck), which costs at worst a second download.
func (sp *spool) lockWait(ctx context.Context, file string, wait time.Duration) (func(), error) {
	deadline := time.Now().Add(wait)
	waited := false
	for {
		unlock, ok, err := sp.tryLock(file)
		if err != nil {
			return nil, err
		}
		if ok {
			if waited {
				sp.log.Debug("waited for the prefetcher")
			}
			return unlock, nil
		}
		if time.Now().After(deadline) {
			sp.log.Debug("prefetcher holds the segment too long; fetching it directly", "waited", wait)
			return func() {}, nil
		}
		waited = true
		if lockBusyHook != nil {
			lockBusyHook(file)
		}
		t := time.NewTimer(lockPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// take moves a spooled copy of file to dest after checking its digest,
// and reports whether it did. A copy whose bytes do not match its digest
// is deleted and not served. The caller holds file's lock.
func (sp *spool) take(file, dest string) (bool, error) {
	sp.removeTemps(file)
	for _, p := range sp.spooled(file) {
		if err := checkSpooled(p); err != nil {
			sp.log.Warn("damaged prefetched segment deleted; fetching it from the archive", "spool_file", p, "error", err)
			_ = os.Remove(p)
			continue
		}
		if err := moveInto(p, dest); err != nil {
			return false, err
		}
		sp.log.Debug("served from the prefetch spool")
		return true, nil
	}
	sp.log.Debug("not in the prefetch spool")
	return false, nil
}

// checkSpooled verifies the spooled file p against the digest in its name
// and makes it durable, ready to be renamed into place.
func checkSpooled(p string) error {
	want := p[len(p)-64:]
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	h := storage.NewHash(storage.BLAKE3)
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("blake3 %s, want %s", got, want)
	}
	return nil
}

// moveInto renames the verified spooled file p to dest, or copies it there
// atomically when the spool is on another filesystem.
func moveInto(p, dest string) error {
	err := os.Rename(p, dest)
	if errors.Is(err, unix.EXDEV) {
		err = writeAtomic(dest, func(w io.Writer) error {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(w, f)
			return err
		})
		if err == nil {
			_ = os.Remove(p)
		}
		return err
	}
	if err != nil {
		return fmt.Errorf("move the prefetched segment to %s: %w", dest, err)
	}
	return nil
}

// store writes file into the spool with the bytes fill writes: a
// temporary file, renamed to its final name carrying the digest once fill
// succeeded. Not fsynced: take checks the digest before use, which costs
// less than a sync per prefetched segment. The caller holds file's lock.
func (sp *spool) store(file string, fill func(w io.Writer) error) error {
	err := durable.WriteNamed(sp.dir, file+tmpInfix, 0o600, func(w io.Writer) (string, error) {
		h := storage.NewHash(storage.BLAKE3)
		if err := fill(io.MultiWriter(w, h)); err != nil {
			return "", err
		}
		return finalName(file, hex.EncodeToString(h.Sum(nil))), nil
	})
	if err != nil {
		return fmt.Errorf("write the spool file for %s: %w", file, err)
	}
	return nil
}

// Prefetch downloads the opts.Prefetch segments after the segment walName
// on the same timeline, all at once, into opts.SpoolDir, where a later
// Fetch of one of them finds it. It skips segments already spooled or
// being fetched by another process, and stores nothing for a segment that
// the archive holds only as a .partial (it still grows) or not at all: past
// the archive's end each costs one List. It blocks until every download is
// done or failed, and returns nil when the archive ends early; other errors
// are the first download that failed (the others still finish). It does nothing when opts.SpoolDir is "" or opts.Prefetch is 0.
// ctx's end stops it; spooled segments stay valid.
//
// The timeline stays walName's: a prefetcher that runs past a timeline
// switch spools segments that recovery will not ask for, and Fetch removes
// them once recovery asks for the new timeline.
func Prefetch(ctx context.Context, b storage.Backend, cluster, walName string, opts Options) error {
	opts = opts.withDefaults()
	if opts.SpoolDir == "" || opts.Prefetch == 0 {
		return nil
	}
	if !wal.IsSegmentFileName(walName) {
		return fmt.Errorf("walfetch: prefetch after %q: not a WAL segment name", walName)
	}
	log := opts.Logger.With("after", walName)
	sp, err := openSpool(opts.SpoolDir, b.URL(), cluster, log, false)
	if err != nil {
		return err
	}
	segSize := sp.segmentSize()
	if segSize == 0 {
		id, err := catalog.ReadIdentity(ctx, b, cluster)
		if err != nil {
			return fmt.Errorf("read the archive's identity: %w", err)
		}
		segSize = id.WALSegmentSize
		sp.setSegmentSize(segSize)
	}
	tli, seg, err := wal.ParseSegmentFileName(walName, segSize)
	if err != nil {
		return err
	}
	prefix := catalog.WALPrefix(cluster)
	var g errgroup.Group
	for i := 1; i <= opts.Prefetch; i++ {
		g.Go(func() error {
			file := wal.SegmentFileName(tli, seg+wal.SegmentNo(i), segSize)
			err := prefetchOne(ctx, b, sp, prefix, file, segSize)
			if errors.Is(err, ErrNotFound) {
				return nil
			}
			return err
		})
	}
	return g.Wait()
}

// prefetchOne spools the complete segment file unless it is there or
// someone else is fetching it. It returns ErrNotFound when the archive has
// no complete segment of that name.
func prefetchOne(ctx context.Context, b storage.Backend, sp *spool, prefix, file string, segSize uint64) error {
	if len(sp.spooled(file)) > 0 || sp.passed(file) {
		return nil
	}
	unlock, ok, err := sp.tryLock(file)
	if err != nil || !ok {
		return err
	}
	defer unlock()
	if len(sp.spooled(file)) > 0 || sp.passed(file) {
		return nil
	}
	sp.removeTemps(file)
	objs, err := listSegment(ctx, b, prefix, file)
	if err != nil {
		return err
	}
	tli, seg, err := wal.ParseSegmentFileName(file, segSize)
	if err != nil {
		return err
	}
	c, ok := catalog.IndexWAL(objs, prefix, segSize).Complete(tli, seg)
	if !ok {
		sp.log.Trace("prefetch reached the archive's end", "file", file)
		return ErrNotFound
	}
	start := time.Now()
	if err := sp.store(file, func(w io.Writer) error {
		return copySegment(ctx, b, c.Key, segSize, w)
	}); err != nil {
		return fmt.Errorf("prefetch %s: %w", c.Key, err)
	}
	sp.log.Debug("segment prefetched", "file", file, "duration", time.Since(start))
	return nil
}

// RemoveSpool deletes the spool directory spoolDir and everything in it.
// Run it once recovery has ended (barnacle restore makes it PostgreSQL's
// recovery_end_command): no Fetch comes after that. spoolDir is renamed
// away first, atomically, so that a prefetcher still downloading cannot
// put a segment back: its writes go to paths under the old name, which no
// longer exists, and it does not create spoolDir again (see openSpool). A
// missing spoolDir is not an error.
func RemoveSpool(spoolDir string) error {
	doomed := fmt.Sprintf("%s.removed-%d", spoolDir, os.Getpid())
	if err := os.Rename(spoolDir, doomed); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("remove the prefetch spool: %w", err)
	}
	if err := os.RemoveAll(doomed); err != nil {
		return fmt.Errorf("remove the prefetch spool: %w", err)
	}
	return nil
}
