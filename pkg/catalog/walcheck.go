package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// WALCheck says whether the WAL a backup needs to become consistent is in
// the archive.
type WALCheck struct {
	// First and Last are the file names of the first and last segment
	// needed (bare names, no suffix).
	First string `json:"first"`
	Last  string `json:"last"`
	// Missing lists what is absent: bare segment names, oldest first, or
	// the stop timeline's history file (then alone, because without it the
	// segments' timelines cannot be known).
	Missing []string `json:"missing"`
	// Present counts the needed segments found.
	Present int `json:"present"`
	// Stored are the objects that hold the needed segments found, oldest
	// first, for a caller that reads them (not part of the JSON shape).
	Stored []StoredSegment `json:"-"`
}

// StoredSegment is the object holding one segment a backup needs.
type StoredSegment struct {
	// Name is the object's name under the WAL prefix, with its suffix.
	Name string
	Size int64
	// Need is, for a .partial, how many of its bytes the backup needs
	// (0 for a complete segment).
	Need uint64
}

// OK reports whether everything needed is present.
func (c WALCheck) OK() bool { return len(c.Missing) == 0 }

// neededSegment is one segment a backup needs; bytes is how much of it,
// counted from its start.
type neededSegment struct {
	name  string
	bytes uint64
}

// CheckBackupWAL checks that the archive holds the WAL from doc's StartLSN
// (on StartTimeline) to its StopLSN (on StopTimeline). StopLSN is the
// first byte after the backup's end record, so a StopLSN on a segment
// boundary does not need the segment that starts there (PostgreSQL's
// XLByteToPrevSeg). A segment counts as present when stored as X, X.zst or
// X.lz4; the last one also when X.partial (stored uncompressed) holds at
// least the bytes up to StopLSN and nothing of its timeline is stored after
// it (WALIndex documents when a .partial counts, and why an old timeline's
// one does here). When the timelines differ, the stop
// timeline's history file says which timeline each segment is read from,
// as recovery does (the segment holding a switch point is read from the
// newer timeline). Errors are for a document that makes no sense and for
// storage failures, not for missing WAL.
func CheckBackupWAL(ctx context.Context, b storage.Backend, cluster string, doc Backup) (WALCheck, error) {
	segSize := doc.WALSegmentSize
	if err := wal.ValidSegmentSize(segSize); err != nil {
		return WALCheck{}, fmt.Errorf("check wal of backup %s: %w", doc.ID, err)
	}
	start, stop := doc.StartLSN, doc.StopLSN
	if start == wal.InvalidLSN {
		return WALCheck{}, fmt.Errorf("check wal of backup %s: no start LSN", doc.ID)
	}
	if stop <= start || doc.StartTimeline == 0 || doc.StopTimeline < doc.StartTimeline {
		return WALCheck{}, fmt.Errorf("check wal of backup %s: invalid range %s on timeline %d to %s on timeline %d",
			doc.ID, doc.StartLSN, doc.StartTimeline, doc.StopLSN, doc.StopTimeline)
	}

	var history []wal.HistoryEntry
	if doc.StopTimeline != doc.StartTimeline {
		name := WALPrefix(cluster) + wal.HistoryFileName(doc.StopTimeline)
		data, err := storage.ReadAll(ctx, b, name)
		if errors.Is(err, storage.ErrNotExist) {
			return WALCheck{Missing: []string{wal.HistoryFileName(doc.StopTimeline)}}, nil
		}
		if err != nil {
			return WALCheck{}, fmt.Errorf("check wal of backup %s: read %s: %w", doc.ID, name, err)
		}
		if history, err = wal.ParseHistory(data); err != nil {
			return WALCheck{}, fmt.Errorf("check wal of backup %s: %s: %w", doc.ID, name, err)
		}
		if _, ok := wal.SwitchPoint(history, doc.StartTimeline); !ok {
			return WALCheck{}, fmt.Errorf("check wal of backup %s: timeline %d is not an ancestor of timeline %d in %s",
				doc.ID, doc.StartTimeline, doc.StopTimeline, name)
		}
	}

	first, last := wal.SegmentOf(start, segSize), wal.SegmentOf(stop-1, segSize)
	needed := make([]neededSegment, 0, last-first+1)
	for seg := first; seg <= last; seg++ {
		tli := doc.StartTimeline
		if history != nil {
			// The timeline of the segment's last byte: recovery reads a
			// segment from the newest timeline that had begun by its end.
			tli = wal.TimelineOf(history, doc.StopTimeline, wal.SegmentStart(seg+1, segSize)-1)
		}
		n := neededSegment{name: wal.SegmentFileName(tli, seg, segSize), bytes: segSize}
		if seg == last {
			n.bytes = uint64(stop - wal.SegmentStart(seg, segSize))
		}
		needed = append(needed, n)
	}

	check := WALCheck{First: needed[0].name, Last: needed[len(needed)-1].name}
	// Segment names sharing their first 16 digits (timeline and high part)
	// list together, so a check costs one List per 4 GiB of WAL rather than
	// one per segment or one of the whole WAL prefix.
	var objs []storage.ObjectInfo
	listed := map[string]bool{}
	for _, n := range needed {
		group := n.name[:16]
		if listed[group] {
			continue
		}
		listed[group] = true
		got, err := b.List(ctx, WALPrefix(cluster)+group)
		if err != nil {
			return WALCheck{}, fmt.Errorf("check wal of backup %s: list %s: %w", doc.ID, group, err)
		}
		objs = append(objs, got...)
	}
	ix := IndexWAL(objs, WALPrefix(cluster), segSize)
	for i, n := range needed {
		if o, ok := segmentStored(ix, n, i == len(needed)-1); ok {
			check.Present++
			check.Stored = append(check.Stored, o)
		} else {
			check.Missing = append(check.Missing, n.name)
		}
	}
	return check, nil
}

// segmentStored applies CheckBackupWAL's presence rule to one segment and
// returns the object that holds it: a complete copy, or for the last
// segment a .partial holding the bytes needed that ends its timeline (see
// WALIndex: the index here knows only the listed groups).
func segmentStored(ix *WALIndex, n neededSegment, last bool) (StoredSegment, bool) {
	tli, seg, err := wal.ParseSegmentFileName(n.name, ix.SegmentSize())
	if err != nil {
		return StoredSegment{}, false
	}
	if o, ok := ix.Complete(tli, seg); ok {
		return StoredSegment{Name: o.Name, Size: o.Size}, true
	}
	p, ok := ix.Partial(tli, seg)
	if !last || !ok || p.Compression != "" || !ix.Stored(tli, seg) {
		return StoredSegment{}, false
	}
	if p.Size >= 0 && uint64(p.Size) >= n.bytes {
		return StoredSegment{Name: p.Name, Size: p.Size, Need: n.bytes}, true
	}
	return StoredSegment{}, false
}
