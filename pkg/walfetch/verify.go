package walfetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Problem is one archived WAL file that failed verification.
type Problem struct {
	// File is the name under the cluster's WAL prefix, with its suffix
	// ("000000010000000000000005.zst"), or the bare name of a missing one.
	File    string `json:"file"`
	Problem string `json:"problem"`
}

func (p Problem) String() string { return p.File + ": " + p.Problem }

// Report is what VerifyWAL or VerifyBackupWAL read and found.
type Report struct {
	// Files is the number of WAL files read; Bytes their stored size.
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
	// Problems lists each damaged, unreadable or missing file, in name
	// order; empty when everything checked out.
	Problems []Problem `json:"problems"`
}

// walObject is one archived WAL file to check: rel is its name under the
// WAL prefix; need, for the last segment a backup needs, how many of its
// bytes a .partial must hold.
type walObject struct {
	rel  string
	size int64
	need uint64
}

// VerifyWAL reads every WAL file of cluster in the archive b and checks it
// as wal-fetch would serve it: each object against the checksum stored with
// it (read to its end), each complete segment decompressed to exactly the
// segment size, each .partial no longer than a segment, each .history
// parsed (a compressed .partial, which barnacle never writes, only against
// its checksum). Segments before segment number from (on any timeline) are
// left out; .history files are always checked. Other names (conflict
// copies) are not read.
//
// progress, if not nil, is called from VerifyWAL's goroutine after each
// file with the stored bytes read so far and in all. A file that fails is
// a Problem in the report, and VerifyWAL goes on; it returns an error only
// when it cannot go on (ctx ended, the WAL prefix or archive.json cannot
// be read), with the report so far.
func VerifyWAL(ctx context.Context, b storage.Backend, cluster string, from wal.SegmentNo, progress func(done, total int64)) (Report, error) {
	id, err := catalog.ReadIdentity(ctx, b, cluster)
	if err != nil {
		return Report{}, fmt.Errorf("verify wal: read the archive's identity: %w", err)
	}
	if err := wal.ValidSegmentSize(id.WALSegmentSize); err != nil {
		return Report{}, fmt.Errorf("verify wal: %w", err)
	}
	prefix := catalog.WALPrefix(cluster)
	objs, err := b.List(ctx, prefix)
	if err != nil {
		return Report{}, fmt.Errorf("verify wal: list %s: %w", prefix, err)
	}
	ix := catalog.IndexWAL(objs, prefix, id.WALSegmentSize)
	if errs := ix.Invalid(); len(errs) > 0 {
		return Report{}, fmt.Errorf("verify wal: %w", errs[0])
	}
	var todo []walObject
	for _, h := range ix.Histories() {
		todo = append(todo, walObject{rel: h.Name, size: h.Size})
	}
	for _, o := range ix.Segments() {
		if o.Segment >= from {
			todo = append(todo, walObject{rel: o.Name, size: o.Size})
		}
	}
	return verifyObjects(ctx, b, prefix, id.WALSegmentSize, todo, nil, progress)
}

// VerifyBackupWAL reads and checks, as VerifyWAL does, the WAL that backup
// doc needs to become consistent (catalog.CheckBackupWAL's range, with
// the stop timeline's history file when the backup spans timelines); a
// needed file that is missing is a Problem too.
func VerifyBackupWAL(ctx context.Context, b storage.Backend, cluster string, doc catalog.Backup, progress func(done, total int64)) (Report, error) {
	chk, err := catalog.CheckBackupWAL(ctx, b, cluster, doc)
	if err != nil {
		return Report{}, err
	}
	var missing []Problem
	for _, m := range chk.Missing {
		missing = append(missing, Problem{File: m, Problem: "missing from the archive; the backup cannot become consistent without it"})
	}
	todo := make([]walObject, 0, len(chk.Stored)+1)
	if doc.StopTimeline != doc.StartTimeline && !slices.Contains(chk.Missing, wal.HistoryFileName(doc.StopTimeline)) {
		todo = append(todo, walObject{rel: wal.HistoryFileName(doc.StopTimeline), size: -1})
	}
	for _, s := range chk.Stored {
		todo = append(todo, walObject{rel: s.Name, size: s.Size, need: s.Need})
	}
	return verifyObjects(ctx, b, catalog.WALPrefix(cluster), doc.WALSegmentSize, todo, missing, progress)
}

// verifyObjects checks todo one after the other; see VerifyWAL.
func verifyObjects(ctx context.Context, b storage.Backend, prefix string, segSize uint64, todo []walObject, problems []Problem, progress func(done, total int64)) (Report, error) {
	r := Report{Problems: problems}
	var total int64
	for _, o := range todo {
		total += max(o.size, 0)
	}
	for _, o := range todo {
		err := verifyObject(ctx, b, prefix, o, segSize)
		if ctx.Err() != nil {
			return r, fmt.Errorf("verify wal: %w", ctx.Err())
		}
		r.Files++
		r.Bytes += max(o.size, 0)
		if err != nil {
			r.Problems = append(r.Problems, Problem{File: o.rel, Problem: err.Error()})
		}
		if progress != nil {
			progress(r.Bytes, total)
		}
	}
	slices.SortStableFunc(r.Problems, func(a, b Problem) int { return strings.Compare(a.File, b.File) })
	if r.Problems == nil {
		r.Problems = []Problem{}
	}
	return r, nil
}

// verifyObject reads one WAL file to its end and checks it.
func verifyObject(ctx context.Context, b storage.Backend, prefix string, o walObject, segSize uint64) error {
	name := prefix + o.rel
	if wal.IsHistoryFileName(o.rel) {
		data, err := storage.ReadAll(ctx, b, name)
		if errors.Is(err, storage.ErrNotExist) {
			return errors.New("missing from the archive")
		}
		if err != nil {
			return err
		}
		if _, err := wal.ParseHistory(data); err != nil {
			return fmt.Errorf("not a timeline history file: %w", err)
		}
		return nil
	}
	_, partial, comp := wal.SplitFileName(o.rel)
	if !partial {
		return copySegment(ctx, b, name, segSize, io.Discard)
	}
	rc, err := b.Get(ctx, name)
	if err != nil {
		return err
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	switch {
	case err != nil:
		return err
	case comp != "":
		// Another tool's compressed .partial (barnacle stores them
		// plain): its checksum is all there is to check.
		return nil
	case uint64(n) > segSize:
		return fmt.Errorf("partial segment holds %d bytes, more than the segment size %d", n, segSize)
	case uint64(n) < o.need:
		return fmt.Errorf("partial segment holds %d bytes; the backup needs %d", n, o.need)
	}
	return nil
}
