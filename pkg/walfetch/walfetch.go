// Package walfetch serves PostgreSQL's restore_command: it copies one WAL
// file (a segment or a timeline history file) from the archive to the path
// PostgreSQL names, and can prefetch the segments that recovery will ask for
// next into a local spool directory, so that replay does not wait for the
// archive once per segment.
//
// # What is served
//
// For a segment name ("000000020000000000000005") Fetch writes the complete
// segment, whatever its compression ("X", "X.zst" or "X.lz4" in the
// archive), decompressed. If the archive holds the segment only as
// "X.partial", Fetch serves it padded with zeros to the segment size when,
// and only when, catalog.WALIndex says that .partial is served: it is the
// end of the archive's newest timeline. catalog.WALIndex is the one place
// that rule is stated, with its reasons; any other .partial (an old
// timeline's last segment, left as a .partial at a switch) is not served
// under the segment's name, and Fetch reports ErrNotFound. A name
// asked for literally ("X.partial") is copied verbatim, for an operator who
// wants it.
//
// For a history name ("00000002.history") Fetch copies the file verbatim.
// Other names are an error.
//
// Everything served is verified against the checksum stored with it in the
// archive (the object is read to its end) and written to the destination
// atomically: a temporary file in the destination's directory, fsynced and
// renamed over it, so that PostgreSQL never sees a partly written file, even
// when wal-fetch is killed.
//
// # Prefetch
//
// Prefetch fetches the segments after a requested one into Options.SpoolDir,
// several at once; the next Fetch takes its segment from there (a rename,
// after checking its digest) instead of from the archive. The CLI runs
// Prefetch in a detached child process after Fetch has served a segment, so
// that the downloads overlap with PostgreSQL's replay of that segment.
//
// Other modules may import this package, but its API is not stable.
package walfetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/durable"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// ErrNotFound means the archive does not hold the requested WAL file (or
// holds it only in a form that must not be served, such as an old
// timeline's .partial). PostgreSQL asks for files past the end of the
// archive on purpose, so this is the normal end of archive recovery, not a
// failure to report.
var ErrNotFound = errors.New("walfetch: wal file not in the archive")

// ErrDamaged means the archive was read, but what it holds is not a WAL
// file Fetch may serve: compressed data that does not decompress, a
// segment of the wrong length, a .partial longer than a segment. Damaged
// stored bytes are reported with storage.ErrChecksum instead. Either one
// stops recovery; neither is ErrNotFound.
var ErrDamaged = errors.New("walfetch: damaged wal file")

// DefaultSpoolWait is how long Fetch waits, when Options.SpoolWait is 0,
// for a prefetcher that is downloading the requested segment before it
// downloads the segment itself.
const DefaultSpoolWait = 30 * time.Second

// Options modifies Fetch and Prefetch. The zero value fetches without a
// spool and prefetches nothing.
type Options struct {
	// SpoolDir is the prefetch spool. "" disables it: Fetch goes to the
	// archive and Prefetch does nothing. It must be private to one
	// PostgreSQL server, and on the same filesystem as Fetch's destination
	// for the cheap path (a rename; another filesystem costs a copy).
	// Fetch and Prefetch create it (mode 0700) and keep their files in a
	// sub-directory named after the archive URL and cluster, so that a
	// spool left over from another archive is never served.
	SpoolDir string
	// Prefetch is how many segments after the requested one Prefetch
	// fetches, all at once; 0 disables prefetching.
	Prefetch int
	// SpoolWait bounds how long Fetch waits for a prefetcher that holds
	// the requested segment's lock (it is downloading it) before fetching
	// the segment itself; 0 means DefaultSpoolWait.
	SpoolWait time.Duration
	// CompleteOnly serves complete segments only: a segment that the
	// archive holds only as a .partial is reported as ErrNotFound, even
	// the newest timeline's. It is for a standby that must replay whole
	// segments only (see docs/design.md, "A standby fed by the archive");
	// archive recovery with it would end short of the archived WAL.
	CompleteOnly bool
	// ReuseServedPartial is for a standby: when the .partial that Fetch
	// would serve is the one it served last (same segment, same length)
	// and PostgreSQL still holds that copy in dest's directory under the
	// segment's name (the same file: PostgreSQL renames dest to it), Fetch
	// reports ErrNotFound instead of downloading it again, and PostgreSQL
	// reads its own copy from pg_wal, which holds the same bytes. A standby
	// at the archive's end asks for that segment every
	// wal_retrieve_retry_interval; without this each ask downloads up to a
	// segment. Never for archive recovery: there "not found" ends it.
	ReuseServedPartial bool
	// ServedPartial, when not nil, is set to true by Fetch when it served
	// a .partial padded with zeros: the archive's end, after which there
	// is nothing to prefetch.
	ServedPartial *bool
	// Logger receives debug messages (per file: where it came from, why a
	// .partial was not served, spool hits and misses). nil discards them.
	Logger hclog.Logger
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	o.Logger = o.Logger.Named("walfetch")
	if o.SpoolWait <= 0 {
		o.SpoolWait = DefaultSpoolWait
	}
	if o.Prefetch < 0 {
		o.Prefetch = 0
	}
	return o
}

// Fetch writes the WAL file walName of cluster, as the archive b holds it
// (see the package documentation for what is served for segments, .partial
// and .history names), to dest, atomically: dest either keeps its old
// content or holds the whole file, never part of it. It blocks until dest
// is durable or an error occurs; ctx's end stops it with ctx's error and
// leaves dest untouched.
//
// It returns an error wrapping ErrNotFound when the archive has no such
// file; other errors (a missing archive.json, damaged objects, storage
// failures, an invalid name) are failures that PostgreSQL must not take for
// the end of the archive. A segment found in opts.SpoolDir is verified and
// moved into place without reading the archive; when a prefetcher is
// downloading it, Fetch waits for it up to opts.SpoolWait. Fetch is safe for
// concurrent use with other Fetch and Prefetch calls on the same spool, but
// not with another Fetch to the same dest.
func Fetch(ctx context.Context, b storage.Backend, cluster, walName, dest string, opts Options) error {
	opts = opts.withDefaults()
	f := &fetcher{b: b, cluster: cluster, prefix: catalog.WALPrefix(cluster), opts: opts, log: opts.Logger.With("file", walName)}
	if err := CheckName(walName); err != nil {
		return err
	}
	if wal.IsSegmentFileName(walName) {
		return f.segment(ctx, walName, dest)
	}
	return f.verbatim(ctx, walName, dest)
}

// CheckName returns an error unless walName is a name Fetch serves: a
// segment ("000000010000000000000005"), a .partial of one, or a timeline
// history file ("00000002.history"). The segment number is checked
// against the archive's segment size by Fetch.
func CheckName(walName string) error {
	switch {
	case wal.IsSegmentFileName(walName), isPlainPartial(walName):
		if walName[:8] == "00000000" {
			return fmt.Errorf("walfetch: %q names timeline 0", walName)
		}
		return nil
	case wal.IsHistoryFileName(walName):
		_, err := wal.ParseHistoryFileName(walName)
		return err
	}
	return fmt.Errorf("walfetch: %q is not a WAL segment, .partial or .history file name", walName)
}

// isPlainPartial reports whether name is "<segment>.partial" exactly: the
// receiver never compresses a .partial.
func isPlainPartial(name string) bool {
	base, ok := strings.CutSuffix(name, ".partial")
	return ok && wal.IsSegmentFileName(base)
}

type fetcher struct {
	b       storage.Backend
	cluster string
	prefix  string
	opts    Options
	log     hclog.Logger
}

// withIdentity runs fn while it reads archive.json, and returns the
// archive's segment size once both are done; fn's result is only used
// after the identity checked out. Reading the identity on every call costs
// no extra round trip (it runs alongside fn) and turns a wrong cluster-name
// or archive-url into an error instead of an archive that looks empty,
// which PostgreSQL would take for the end of recovery.
//
// fn's ErrNotFound counts only once the identity has been read: an archive
// that vanished (a volume unmounted, a directory renamed) answers "no such
// file" for everything, archive.json included, and that must stop
// recovery, not end it.
func (f *fetcher) withIdentity(ctx context.Context, fn func(ctx context.Context) error) (uint64, error) {
	ictx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		segSize uint64
		err     error
	}
	done := make(chan result, 1)
	go func() {
		id, err := catalog.ReadIdentity(ictx, f.b, f.cluster)
		if err == nil {
			err = wal.ValidSegmentSize(id.WALSegmentSize)
		}
		done <- result{id.WALSegmentSize, err}
	}()
	ferr := fn(ctx)
	notFound := errors.Is(ferr, ErrNotFound)
	if ferr != nil && !notFound {
		cancel()
	}
	r := <-done
	if r.err != nil && (ferr == nil || notFound) {
		return 0, fmt.Errorf("read the archive's identity: %w", r.err)
	}
	return r.segSize, ferr
}

// verbatim copies the object walName as is (verified) to dest.
func (f *fetcher) verbatim(ctx context.Context, walName, dest string) error {
	name := f.prefix + walName
	var rc io.ReadCloser
	_, err := f.withIdentity(ctx, func(ctx context.Context) error {
		var err error
		rc, err = f.b.Get(ctx, name)
		if errors.Is(err, storage.ErrNotExist) {
			f.log.Debug("not in the archive")
			return fmt.Errorf("%s: %w", name, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("get %s: %w", name, err)
		}
		return nil
	})
	if rc != nil {
		defer rc.Close()
	}
	if err != nil {
		return err
	}
	if err := writeAtomic(dest, func(w io.Writer) error {
		if _, err := io.Copy(w, rc); err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		return nil
	}); err != nil {
		return err
	}
	f.log.Debug("served from the archive", "object", name)
	return nil
}

// listSegment lists the objects named after segment file: one List call
// finds every compression variant and the .partial, where Stat would need
// one round trip each.
func listSegment(ctx context.Context, b storage.Backend, prefix, file string) ([]storage.ObjectInfo, error) {
	objs, err := b.List(ctx, prefix+file)
	if err != nil {
		return nil, fmt.Errorf("list %s%s: %w", prefix, file, err)
	}
	return objs, nil
}

func (f *fetcher) segment(ctx context.Context, file, dest string) error {
	var sp *spool
	if f.opts.SpoolDir != "" {
		var err error
		if sp, err = openSpool(f.opts.SpoolDir, f.b.URL(), f.cluster, f.log, true); err != nil {
			return err
		}
		sp.setPosition(file)
		sp.removeStale(file)
		unlock, err := sp.lockWait(ctx, file, f.opts.SpoolWait)
		if err != nil {
			return err
		}
		defer unlock()
		if ok, err := sp.take(file, dest); err != nil || ok {
			return err
		}
	}
	var objs []storage.ObjectInfo
	segSize, err := f.withIdentity(ctx, func(ctx context.Context) error {
		var err error
		objs, err = listSegment(ctx, f.b, f.prefix, file)
		return err
	})
	if err != nil {
		return err
	}
	tli, seg, err := wal.ParseSegmentFileName(file, segSize)
	if err != nil {
		return err
	}
	if sp != nil {
		sp.setSegmentSize(segSize)
	}
	named := catalog.IndexWAL(objs, f.prefix, segSize)
	if c, ok := named.Complete(tli, seg); ok {
		if err := writeAtomic(dest, func(w io.Writer) error {
			return copySegment(ctx, f.b, c.Key, segSize, w)
		}); err != nil {
			return err
		}
		f.log.Debug("served from the archive", "object", c.Key)
		return nil
	}
	partial, ok := named.Partial(tli, seg)
	if !ok {
		f.log.Debug("not in the archive")
		return fmt.Errorf("%s%s: %w", f.prefix, file, ErrNotFound)
	}
	if f.opts.CompleteOnly {
		f.log.Debug("partial segment not served", "object", partial.Key, "reason", "complete segments only")
		return fmt.Errorf("%s%s: only %s exists, and complete segments only are served: %w", f.prefix, file, partial.Key, ErrNotFound)
	}
	// Before the listing below, which a standby at the archive's end
	// would otherwise make at every retry: "not found" is right whether or
	// not the .partial may still be served, as pg_wal holds the bytes
	// PostgreSQL already had, and a new timeline is found through its
	// history file.
	if f.opts.ReuseServedPartial && servedBefore(dest, file, partial.Size, segSize) {
		f.log.Debug("partial segment unchanged since served; the server holds it", "object", partial.Key, "size", partial.Size)
		return fmt.Errorf("%s%s: %s is unchanged since it was served, and pg_wal holds that copy: %w", f.prefix, file, partial.Key, ErrNotFound)
	}
	// Whether a .partial is served depends on what follows it in the
	// archive (see catalog.WALIndex): ServeSegment reads a page of the
	// names after it, not the whole WAL prefix, which a standby at the
	// archive's end would otherwise list at every retry once the .partial
	// has grown.
	p, ok, why, err := catalog.ServeSegment(ctx, f.b, f.prefix, objs, file, segSize)
	if err != nil {
		return err
	}
	if !ok {
		f.log.Debug("partial segment not served", "object", partial.Key, "reason", why)
		return fmt.Errorf("%s%s: only %s exists, and %s: %w", f.prefix, file, partial.Key, why, ErrNotFound)
	}
	var n int64
	if err := writeAtomic(dest, func(w io.Writer) error {
		var err error
		n, err = copyPadded(ctx, f.b, p.Key, segSize, w)
		return err
	}); err != nil {
		return err
	}
	if f.opts.ReuseServedPartial {
		// min: the listing and the read may disagree on a .partial that
		// grows meanwhile; the smaller length never claims bytes the copy
		// lacks.
		recordServed(dest, file, min(n, p.Size), f.log)
	}
	if f.opts.ServedPartial != nil {
		*f.opts.ServedPartial = true
	}
	f.log.Debug("served a partial segment padded with zeros", "object", p.Key)
	return nil
}

// servedFile is the record, in dest's directory, of the .partial last
// served to a standby: "<segment> <length> <device> <inode>" of the file
// written as dest, which PostgreSQL renames to the segment's name.
const servedFile = ".barnacle-served-partial"

// recordServed writes the servedFile record for dest, just written with
// the first size bytes of segment file's .partial. A failure only costs a
// download at the next ask, so it is logged, not returned.
func recordServed(dest, file string, size int64, log hclog.Logger) {
	dev, ino, ok := fileID(dest)
	if !ok {
		return
	}
	record := fmt.Sprintf("%s %d %d %d\n", file, size, dev, ino)
	err := writeAtomic(filepath.Join(filepath.Dir(dest), servedFile), func(w io.Writer) error {
		_, err := io.WriteString(w, record)
		return err
	})
	if err != nil {
		log.Debug("could not record the partial segment served", "error", err)
	}
}

// servedBefore reports whether the servedFile record next to dest says
// that file's .partial was served with size bytes, and the server still
// holds that very copy (same device and inode, a segment long) as file
// next to dest.
func servedBefore(dest, file string, size int64, segSize uint64) bool {
	dir := filepath.Dir(dest)
	b, err := os.ReadFile(filepath.Join(dir, servedFile))
	if err != nil {
		return false
	}
	var (
		name     string
		n        int64
		dev, ino uint64
	)
	if _, err := fmt.Sscanf(string(b), "%s %d %d %d\n", &name, &n, &dev, &ino); err != nil || name != file || n != size {
		return false
	}
	st, err := os.Stat(filepath.Join(dir, file))
	if err != nil || !st.Mode().IsRegular() || uint64(st.Size()) != segSize {
		return false
	}
	d, i, ok := fileID(filepath.Join(dir, file))
	return ok && d == dev && i == ino
}

// fileID returns path's device and inode numbers.
func fileID(path string) (dev, ino uint64, ok bool) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, 0, false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	// Dev is not a uint64 on every platform.
	return uint64(sys.Dev), sys.Ino, true
}

// copySegment writes the complete segment object name, decompressed and
// verified (read to its end), to w. Its decompressed length must be the
// segment size: anything else is a damaged or foreign object.
func copySegment(ctx context.Context, b storage.Backend, name string, segSize uint64, w io.Writer) error {
	rc, err := catalog.OpenSegment(ctx, b, name)
	if err != nil {
		return err
	}
	defer rc.Close()
	ww := &writeErr{w: w}
	// One byte more than a segment tells an overlong object from an exact one.
	n, err := io.Copy(ww, io.LimitReader(rc, int64(segSize)+1))
	if err != nil {
		return damaged(rc, ww, err)
	}
	if uint64(n) != segSize {
		return fmt.Errorf("segment %s holds %d bytes once decompressed, want the segment size %d: %w", name, n, segSize, ErrDamaged)
	}
	// The limit stopped short of the verifying reader's end.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return damaged(rc, nil, err)
	}
	return nil
}

// damaged returns err, the failure of copying from rc to w, marked with
// ErrDamaged when it is neither the backend's (storage failures and
// checksum mismatches say so themselves) nor the destination's: the
// object read fine and did not decompress.
func damaged(rc *catalog.SegmentReader, w *writeErr, err error) error {
	if rc.StorageErr() != nil || (w != nil && w.err != nil) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrDamaged, err)
}

// writeErr remembers the error of the writer it wraps.
type writeErr struct {
	w   io.Writer
	err error
}

func (e *writeErr) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil && e.err == nil {
		e.err = err
	}
	return n, err
}

// copyPadded writes the .partial object name, verified, then zeros up to
// segSize, to w, and returns the .partial's length.
func copyPadded(ctx context.Context, b storage.Backend, name string, segSize uint64, w io.Writer) (int64, error) {
	rc, err := b.Get(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("get %s: %w", name, err)
	}
	defer rc.Close()
	n, err := io.Copy(w, io.LimitReader(rc, int64(segSize)+1))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", name, err)
	}
	if uint64(n) > segSize {
		return 0, fmt.Errorf("partial segment %s is longer than the segment size %d: %w", name, segSize, ErrDamaged)
	}
	if _, err := io.Copy(w, io.LimitReader(zeros{}, int64(segSize)-n)); err != nil {
		return 0, err
	}
	return n, nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// tempPrefix starts the names of the temporary files Fetch writes next to
// dest; PostgreSQL ignores such names in pg_wal.
const tempPrefix = ".barnacle-tmp-"

// staleTempAge is how old a temporary file next to dest must be before a
// later Fetch removes it as debris of a killed one: far longer than any
// fetch takes, so that a running one never loses its file.
const staleTempAge = time.Hour

// writeAtomic creates dest with the bytes fill writes (durable.WriteFile),
// first removing the stale temporary files of killed fetches beside it.
// No fsync: PostgreSQL unlinks RECOVERYXLOG before every restore_command
// and makes a file it keeps durable itself (durable_rename in
// KeepFileRestoredFromArchive), so a crash can only lose a file that would
// be fetched again.
func writeAtomic(dest string, fill func(w io.Writer) error) error {
	dir, base := filepath.Split(dest)
	if dir == "" {
		dir = "."
	}
	removeStaleTemps(dir, tempPrefix+base+"-")
	return durable.WriteFile(dest, tempPrefix+base+"-", 0o600, fill)
}

func removeStaleTemps(dir, prefix string) {
	matches, _ := filepath.Glob(filepath.Join(dir, prefix+"*"))
	for _, m := range matches {
		if isOld(m) {
			_ = os.Remove(m)
		}
	}
}
