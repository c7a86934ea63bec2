package catalog

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// WALObject is one segment, .partial or history file under the WAL prefix.
type WALObject struct {
	// Name is the object's name under the WAL prefix, with its suffixes
	// ("000000010000000000000005.zst"); Key is the full object name.
	Name, Key string
	Size      int64
	ModTime   time.Time
	Timeline  wal.Timeline
	// Segment is the segment number (0 for a history file).
	Segment wal.SegmentNo
	// Partial is true for a .partial; Compression is "" or a
	// wal.Compression* suffix.
	Partial     bool
	Compression string
}

// WALIndex is what a listing of the WAL prefix says: the complete segments,
// .partial files and history files per timeline, conflict copies and
// foreign names. It is pure (built from a listing by IndexWAL, no I/O) and
// read-only, so it is safe for concurrent use.
//
// # When a .partial counts
//
// This is the one place that decides it; wal-fetch, the restore windows,
// the continuity check, the backup WAL check and the receiver ask here.
//
//   - Served as the segment (Serve): the .partial of segment X on
//     timeline T is what wal-fetch hands PostgreSQL for X, padded with
//     zeros to the segment size, when, and only when, X has no complete
//     copy, the .partial is stored uncompressed, T is the archive's newest
//     timeline (no segment, .partial or history file of a higher timeline)
//     and nothing is stored on T after X. PostgreSQL replays it to the last
//     archived byte and takes the zeros as the end of WAL. Any other
//     .partial is never served: an old timeline's last segment stays a
//     .partial for good at a switch (as PostgreSQL's own archiver leaves
//     it) and may hold WAL past the switch point that the new master never
//     had; recovery towards the new timeline reads that segment from the
//     new timeline's copy, which holds the same bytes up to the switch.
//   - Never a hole filler (Stored): a .partial that is not the last thing
//     stored on its timeline means missing bytes, so the segment counts as
//     missing; the final .partial of a timeline ends it, served or not, and
//     is not a hole.
//     What decides it sorts after the .partial: the segment's own names,
//     and whether anything of a higher timeline (its names, history files
//     included, sort after every name of a lower one) or a later segment
//     of T is stored, which is the first WAL file after X in name order.
//     So ServeSegment answers Serve for one segment from the segment's
//     own names and a page of what follows them, whatever the archive's
//     size, with this same rule.
//   - A backup's last segment (CheckBackupWAL): its .partial counts when it
//     holds the bytes the backup needs and it ends its timeline; if it is
//     not served, recovery to the newer timeline reads those bytes from
//     that timeline's copy, whose presence the continuity check and the
//     recoverable windows judge.
type WALIndex struct {
	segSize    uint64
	segments   []WALObject // every segment and .partial, in listing order
	complete   map[segKey]WALObject
	partials   map[segKey]WALObject
	histories  map[wal.Timeline]WALObject
	last       map[wal.Timeline]wal.SegmentNo // highest segment stored, complete or .partial
	first      map[wal.Timeline]wal.SegmentNo // lowest segment stored, complete or .partial
	timelines  []wal.Timeline
	conflicts  []WALObject
	unknown    []WALObject
	superseded []WALObject
	invalid    []error
	top        *WALObject
}

type segKey struct {
	tli wal.Timeline
	seg wal.SegmentNo
}

// compressionRank orders the copies of one complete segment: a segment is
// archived under one name only, but should two exist the plain one wins.
func compressionRank(c string) int {
	switch c {
	case "":
		return 0
	case wal.CompressionZstd:
		return 1
	}
	return 2
}

// IndexWAL builds the index from a listing of prefix (catalog.WALPrefix)
// for an archive of segment size segSize. Objects outside prefix or in a
// sub-directory of it are ignored. A name that has a segment's or history
// file's shape but is invalid (a segment number beyond segSize, timeline 0)
// is unknown and recorded for Invalid.
func IndexWAL(objs []storage.ObjectInfo, prefix string, segSize uint64) *WALIndex {
	ix := &WALIndex{
		segSize:   segSize,
		complete:  map[segKey]WALObject{},
		partials:  map[segKey]WALObject{},
		histories: map[wal.Timeline]WALObject{},
		last:      map[wal.Timeline]wal.SegmentNo{},
		first:     map[wal.Timeline]wal.SegmentNo{},
	}
	seen := map[wal.Timeline]bool{}
	for _, o := range objs {
		rel, ok := strings.CutPrefix(o.Name, prefix)
		if !ok || rel == "" || strings.Contains(rel, "/") {
			continue
		}
		w := WALObject{Name: rel, Key: o.Name, Size: o.Size, ModTime: o.ModTime}
		if wal.IsHistoryFileName(rel) {
			tli, err := wal.ParseHistoryFileName(rel)
			if err != nil {
				ix.unknown = append(ix.unknown, w)
				ix.invalid = append(ix.invalid, err)
				continue
			}
			w.Timeline = tli
			ix.histories[tli], seen[tli] = w, true
			continue
		}
		if strings.Contains(rel, ".conflict-") {
			ix.conflicts = append(ix.conflicts, w)
			continue
		}
		base, partial, comp := wal.SplitFileName(rel)
		if !wal.IsSegmentFileName(base) {
			ix.unknown = append(ix.unknown, w)
			continue
		}
		tli, seg, err := wal.ParseSegmentFileName(base, segSize)
		if err != nil {
			ix.unknown = append(ix.unknown, w)
			ix.invalid = append(ix.invalid, fmt.Errorf("%w (is the archive from a server with another wal_segment_size?)", err))
			continue
		}
		w.Timeline, w.Segment, w.Partial, w.Compression = tli, seg, partial, comp
		ix.segments = append(ix.segments, w)
		k := segKey{tli, seg}
		m := ix.complete
		if partial {
			m = ix.partials
		}
		if have, ok := m[k]; !ok || compressionRank(comp) < compressionRank(have.Compression) {
			m[k] = w
		}
		if _, ok := ix.last[tli]; !ok {
			ix.first[tli], ix.last[tli] = seg, seg
		}
		ix.first[tli], ix.last[tli] = min(ix.first[tli], seg), max(ix.last[tli], seg)
		seen[tli] = true
		if ix.top == nil || topLess(*ix.top, w) {
			ix.top = &w
		}
	}
	for _, o := range ix.segments {
		if _, ok := ix.complete[segKey{o.Timeline, o.Segment}]; ok && o.Partial {
			ix.superseded = append(ix.superseded, o)
		}
	}
	slices.SortFunc(ix.superseded, func(a, b WALObject) int { return strings.Compare(a.Name, b.Name) })
	for tli := range seen {
		ix.timelines = append(ix.timelines, tli)
	}
	slices.Sort(ix.timelines)
	return ix
}

// topLess orders segments by timeline, then segment, then a .partial
// before the complete segment of the same name (which supersedes it).
func topLess(a, b WALObject) bool {
	if c := cmp.Or(cmp.Compare(a.Timeline, b.Timeline), cmp.Compare(a.Segment, b.Segment)); c != 0 {
		return c < 0
	}
	return a.Partial && !b.Partial
}

// SegmentSize is the segment size the index was built for.
func (ix *WALIndex) SegmentSize() uint64 { return ix.segSize }

// Timelines are the timelines with a segment, .partial or history file,
// ascending.
func (ix *WALIndex) Timelines() []wal.Timeline { return slices.Clone(ix.timelines) }

// newest is the highest timeline in the archive (0 when it is empty).
func (ix *WALIndex) newest() wal.Timeline {
	if len(ix.timelines) == 0 {
		return 0
	}
	return ix.timelines[len(ix.timelines)-1]
}

// History returns tli's history file.
func (ix *WALIndex) History(tli wal.Timeline) (WALObject, bool) {
	o, ok := ix.histories[tli]
	return o, ok
}

// Histories are the history files, by ascending timeline.
func (ix *WALIndex) Histories() []WALObject {
	out := make([]WALObject, 0, len(ix.histories))
	for _, o := range ix.histories {
		out = append(out, o)
	}
	slices.SortFunc(out, func(a, b WALObject) int { return cmp.Compare(a.Timeline, b.Timeline) })
	return out
}

// Segments are every complete segment (all copies) and .partial, in
// listing order.
func (ix *WALIndex) Segments() []WALObject { return slices.Clone(ix.segments) }

// Conflicts are the conflict copies (<name>.conflict-<time>, see
// storage.PutOnce), in listing order.
func (ix *WALIndex) Conflicts() []WALObject { return slices.Clone(ix.conflicts) }

// Unknown are the names that are no WAL file barnacle knows (other tools'
// files, invalid segment or history names), in listing order.
func (ix *WALIndex) Unknown() []WALObject { return slices.Clone(ix.unknown) }

// Invalid returns an error for each name that has a segment's or history
// file's shape but is invalid; for a segment name, most likely an archive
// written with another wal_segment_size.
func (ix *WALIndex) Invalid() []error { return slices.Clone(ix.invalid) }

// Superseded are the .partial files whose complete segment is stored too
// (left behind by a crash between storing the segment and deleting its
// .partial), by name.
func (ix *WALIndex) Superseded() []WALObject { return slices.Clone(ix.superseded) }

// Top returns the highest segment or .partial (by timeline, then segment;
// a complete segment above its .partial); ok is false without segments.
func (ix *WALIndex) Top() (WALObject, bool) {
	if ix.top == nil {
		return WALObject{}, false
	}
	return *ix.top, true
}

// Bounds returns the lowest and highest segment stored on tli, complete or
// .partial.
func (ix *WALIndex) Bounds(tli wal.Timeline) (lo, hi wal.SegmentNo, ok bool) {
	hi, ok = ix.last[tli]
	return ix.first[tli], hi, ok
}

// Complete returns the complete copy of segment seg of tli: "X", else
// "X.zst", else "X.lz4".
func (ix *WALIndex) Complete(tli wal.Timeline, seg wal.SegmentNo) (WALObject, bool) {
	o, ok := ix.complete[segKey{tli, seg}]
	return o, ok
}

// Partial returns the .partial of segment seg of tli (the uncompressed one
// if there are several).
func (ix *WALIndex) Partial(tli wal.Timeline, seg wal.SegmentNo) (WALObject, bool) {
	o, ok := ix.partials[segKey{tli, seg}]
	return o, ok
}

// partialServed says whether the .partial of segment seg of tli is served
// as that segment (see the type's documentation): "" if so, else why not.
func (ix *WALIndex) partialServed(tli wal.Timeline, seg wal.SegmentNo) string {
	p, ok := ix.Partial(tli, seg)
	switch {
	case !ok:
		return "no .partial is stored"
	case p.Compression != "":
		return fmt.Sprintf("%s is compressed (barnacle stores a .partial uncompressed)", p.Name)
	}
	if c, ok := ix.Complete(tli, seg); ok {
		return fmt.Sprintf("it is superseded by %s", c.Name)
	}
	if newest := ix.newest(); newest > tli {
		return fmt.Sprintf("timeline %d is not the newest (the archive has %s)", tli, ix.nameOn(newest))
	}
	if ix.last[tli] > seg {
		return fmt.Sprintf("it is not the end of timeline %d (the archive has %s)", tli, ix.nameAt(tli, ix.last[tli]))
	}
	return ""
}

// nameOn names an object of timeline tli, for messages.
func (ix *WALIndex) nameOn(tli wal.Timeline) string {
	if _, ok := ix.last[tli]; ok {
		return ix.nameAt(tli, ix.last[tli])
	}
	return ix.histories[tli].Name
}

func (ix *WALIndex) nameAt(tli wal.Timeline, seg wal.SegmentNo) string {
	if o, ok := ix.Complete(tli, seg); ok {
		return o.Name
	}
	return ix.partials[segKey{tli, seg}].Name
}

// Serve returns the object wal-fetch serves for segment seg of tli: its
// complete copy, else its .partial when partialServed. ok is false when the
// archive holds nothing that may be served; why then says so.
func (ix *WALIndex) Serve(tli wal.Timeline, seg wal.SegmentNo) (o WALObject, ok bool, why string) {
	if o, ok := ix.Complete(tli, seg); ok {
		return o, true, ""
	}
	if _, ok := ix.Partial(tli, seg); !ok {
		return WALObject{}, false, "not in the archive"
	}
	if why := ix.partialServed(tli, seg); why != "" {
		return WALObject{}, false, why
	}
	return ix.partials[segKey{tli, seg}], true, ""
}

// Stored reports whether segment seg of tli is no hole: it has a complete
// copy, or a .partial that ends the timeline (nothing stored on tli after
// it), served or not.
func (ix *WALIndex) Stored(tli wal.Timeline, seg wal.SegmentNo) bool {
	if _, ok := ix.Complete(tli, seg); ok {
		return true
	}
	_, ok := ix.Partial(tli, seg)
	return ok && ix.last[tli] == seg
}

// reachIn returns the end of what is served for segment seg of tli: the
// next segment's start, the .partial's last byte + 1, or the segment's
// start when nothing is served; more is true when the following segment
// may continue it (a complete copy was served).
func (ix *WALIndex) reachIn(tli wal.Timeline, seg wal.SegmentNo) (end wal.LSN, more bool) {
	start := wal.SegmentStart(seg, ix.segSize)
	o, ok, _ := ix.Serve(tli, seg)
	switch {
	case !ok:
		return start, false
	case o.Partial:
		return start + wal.LSN(min(uint64(max(o.Size, 0)), ix.segSize)), false
	}
	return wal.SegmentStart(seg+1, ix.segSize), true
}

// Reach walks the WAL served on tli from the segment holding from and
// returns where it ends (at least from). hole names the first segment not
// served when something is stored on tli after it (a hole rather than the
// archive's end); "" otherwise.
func (ix *WALIndex) Reach(tli wal.Timeline, from wal.LSN) (to wal.LSN, hole string) {
	to = from
	seg := wal.SegmentOf(from, ix.segSize)
	for {
		end, more := ix.reachIn(tli, seg)
		to = max(to, end)
		if !more {
			break
		}
		seg++
	}
	if _, served, _ := ix.Serve(tli, seg); !served && ix.last[tli] > seg {
		return to, wal.SegmentFileName(tli, seg, ix.segSize)
	}
	return to, ""
}

// Position is a point in the WAL history: an LSN on a timeline.
type Position struct {
	Timeline wal.Timeline `json:"timeline"`
	LSN      wal.LSN      `json:"lsn"`
}

// Reached reports whether an archive whose WAL is durable up to p (the
// receiver's flushed position, an agent record's archived LSN) holds the
// WAL up to target: p is on target's timeline at or past target's LSN, or
// on a later timeline. A later timeline counts because the archive follows
// the master: at a timeline switch the receiver archives the old timeline
// to its end (the switch point) before it streams the new one.
func (p Position) Reached(target Position) bool {
	return p.Timeline > target.Timeline || (p.Timeline == target.Timeline && p.LSN >= target.LSN)
}

// servePage is how many names ServeSegment reads at a time from the
// segment's own on: normally the first page holds the deciding name or the
// archive's end. Small, because an object store whose listings carry no
// metadata costs a HEAD per name listed (pkg/storage/s3). A variable so
// that tests can make it smaller.
var servePage = 8

// ServeSegment returns what Serve(tli, seg) returns on the index of the
// whole WAL prefix (IndexWAL of a List of prefix), for segment file of
// tli and seg, without reading the whole prefix when b is a
// storage.DirLister (else it lists it, as before). named is a listing of
// prefix+file: the segment's every compression and its .partial. Only
// when those hold a .partial and no complete copy does the answer depend
// on other names (see the type's documentation): then it pages through
// the names after file until the first segment, .partial or history file
// (any one decides: it is a later segment of tli or of a higher
// timeline), or the end. The cost is the same for an archive of 100
// segments and of 100,000. The result is built by IndexWAL and Serve, so
// the rule stays in one place.
func ServeSegment(ctx context.Context, b storage.Backend, prefix string, named []storage.ObjectInfo, file string, segSize uint64) (WALObject, bool, string, error) {
	tli, seg, err := wal.ParseSegmentFileName(file, segSize)
	if err != nil {
		return WALObject{}, false, "", err
	}
	ix := IndexWAL(named, prefix, segSize)
	_, complete := ix.Complete(tli, seg)
	_, partial := ix.Partial(tli, seg)
	if complete || !partial {
		o, ok, why := ix.Serve(tli, seg)
		return o, ok, why, nil
	}
	dl, ok := b.(storage.DirLister)
	if !ok || !strings.HasSuffix(prefix, "/") {
		all, err := b.List(ctx, prefix)
		if err != nil {
			return WALObject{}, false, "", fmt.Errorf("list %s: %w", prefix, err)
		}
		o, ok, why := IndexWAL(all, prefix, segSize).Serve(tli, seg)
		return o, ok, why, nil
	}
	dir := strings.TrimSuffix(prefix, "/")
	objs := slices.Clone(named)
	after := file
	for {
		page, err := dl.ListAfter(ctx, dir, after, servePage)
		if err != nil {
			return WALObject{}, false, "", fmt.Errorf("list %s after %s: %w", prefix, after, err)
		}
		decided := false
		for _, o := range page {
			rel := strings.TrimPrefix(o.Name, prefix)
			after = rel
			if strings.HasPrefix(rel, file) {
				continue // the segment's own names, in named
			}
			objs = append(objs, o)
			if one := IndexWAL([]storage.ObjectInfo{o}, prefix, segSize); len(one.segments) > 0 || len(one.histories) > 0 {
				decided = true
				break
			}
		}
		if decided || len(page) < servePage {
			break
		}
	}
	o, ok, why := IndexWAL(objs, prefix, segSize).Serve(tli, seg)
	return o, ok, why, nil
}
