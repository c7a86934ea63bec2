package walstream

import (
	"context"
	"fmt"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

const partialSuffix = ".partial"

// archiveScan is what a listing of the WAL prefix says about where the
// archive ends.
type archiveScan struct {
	// Top is the highest segment or .partial (catalog.WALIndex.Top); valid
	// when Found.
	Top   catalog.WALObject
	Found bool
	// Histories are the timelines that have a .history file, ascending.
	Histories []wal.Timeline
	// Superseded are the full names of .partial objects whose complete
	// segment is archived: left behind by a crash between storing the
	// segment and deleting its .partial.
	Superseded []string
}

// scanArchive reads the listing of prefix through catalog.WALIndex: a
// complete segment counts whatever its compression suffix, and supersedes
// its .partial under any of them (the compression setting may have changed
// between runs). Objects in sub-directories and names it does not know
// (conflict copies kept aside by storage.PutOnce, other tools' files) are
// ignored; a segment or history name that is invalid for segSize is an
// error.
func scanArchive(objs []storage.ObjectInfo, prefix string, segSize uint64) (archiveScan, error) {
	ix := catalog.IndexWAL(objs, prefix, segSize)
	if errs := ix.Invalid(); len(errs) > 0 {
		return archiveScan{}, fmt.Errorf("scan archive: %w", errs[0])
	}
	var scan archiveScan
	scan.Top, scan.Found = ix.Top()
	for _, h := range ix.Histories() {
		scan.Histories = append(scan.Histories, h.Timeline)
	}
	for _, o := range ix.Superseded() {
		scan.Superseded = append(scan.Superseded, o.Key)
	}
	return scan, nil
}

// resumePoint is where streaming continues so that the archive stays
// contiguous.
type resumePoint struct {
	Timeline wal.Timeline
	Start    wal.LSN
	// Partial names the .partial that holds the bytes of Start's segment
	// before Start; "" when Start is a segment boundary.
	Partial string
}

// switchFinder returns the switch point at which timeline tli ended
// according to the history file of a later timeline found in the archive,
// and that timeline; ok is false when no archived history names tli.
type switchFinder func(ctx context.Context, tli wal.Timeline) (next wal.Timeline, switchPoint wal.LSN, ok bool, err error)

// resumeFromScan decides where the archive ends. The highest item decides,
// except that a .partial of a timeline that a later archived history file
// ends is final: the next timeline then starts at the segment that holds
// the switch point, as pg_receivewal does, so that its first segment is
// complete. The same holds for a complete segment that reaches the switch
// point. ok is false for an archive without segments.
func resumeFromScan(ctx context.Context, scan archiveScan, segSize uint64, findSwitch switchFinder) (resumePoint, bool, error) {
	if !scan.Found {
		return resumePoint{}, false, nil
	}
	top := scan.Top
	end := wal.SegmentStart(top.Segment+1, segSize)
	if top.Partial {
		end = wal.SegmentStart(top.Segment, segSize) + wal.LSN(top.Size)
	}
	next, sp, switched, err := findSwitch(ctx, top.Timeline)
	if err != nil {
		return resumePoint{}, false, err
	}
	if switched && (top.Partial || end >= sp) {
		return resumePoint{Timeline: next, Start: wal.SegmentStart(wal.SegmentOf(sp, segSize), segSize)}, true, nil
	}
	if !top.Partial {
		return resumePoint{Timeline: top.Timeline, Start: end}, true, nil
	}
	if top.Compression != "" {
		return resumePoint{}, false, fmt.Errorf("resume inside %s: compressed partial segments are not supported", top.Key)
	}
	if top.Size < 0 || uint64(top.Size) > segSize {
		return resumePoint{}, false, fmt.Errorf("resume inside %s: size %d does not fit a %d-byte segment", top.Key, top.Size, segSize)
	}
	return resumePoint{Timeline: top.Timeline, Start: end, Partial: top.Key}, true, nil
}

// archivedSwitchFinder finds tli's end in the history files of the
// archive: the lowest later timeline whose history names tli.
func (r *Receiver) archivedSwitchFinder(histories []wal.Timeline) switchFinder {
	return func(ctx context.Context, tli wal.Timeline) (wal.Timeline, wal.LSN, bool, error) {
		for _, h := range histories {
			if h <= tli {
				continue
			}
			name := r.opts.Prefix + wal.HistoryFileName(h)
			data, err := storage.ReadAll(ctx, r.opts.Backend, name)
			if err != nil {
				return 0, 0, false, fmt.Errorf("read %s: %w", name, err)
			}
			hist, err := wal.ParseHistory(data)
			if err != nil {
				return 0, 0, false, fmt.Errorf("read %s: %w", name, err)
			}
			if sp, ok := wal.SwitchPoint(hist, tli); ok {
				return h, sp, true, nil
			}
		}
		return 0, 0, false, nil
	}
}

// nextTimelineAfter returns the timeline that follows tli in history, a
// server's parsed history for its timeline current (which is not listed in
// its own history).
func nextTimelineAfter(history []wal.HistoryEntry, current, tli wal.Timeline) wal.Timeline {
	for i, e := range history {
		if e.Timeline == tli {
			if i+1 < len(history) {
				return history[i+1].Timeline
			}
			return current
		}
	}
	return current
}

// Object names are made here only, so that a compression suffix (see
// wal.SplitFileName) has one place to go.

// segmentObject names a complete segment, given its file name, as the
// configured compression stores it.
func (r *Receiver) segmentObject(file string) string {
	return r.opts.Prefix + file + r.suffix
}

func (r *Receiver) partialObject(tli wal.Timeline, seg wal.SegmentNo, segSize uint64) string {
	return r.opts.Prefix + wal.SegmentFileName(tli, seg, segSize) + partialSuffix
}

func (r *Receiver) historyObject(tli wal.Timeline) string {
	return r.opts.Prefix + wal.HistoryFileName(tli)
}
