package walstream

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

const partialSuffix = ".partial"

// archiveItem is a segment or a .partial found in the archive.
type archiveItem struct {
	Name        string // full object name
	Timeline    wal.Timeline
	Segment     wal.SegmentNo
	Partial     bool
	Size        int64
	Compression string // "" or a wal.Compression* suffix
}

// less orders items by timeline, then segment, then a .partial before the
// complete segment of the same name (which supersedes it).
func (a archiveItem) less(b archiveItem) bool {
	if a.Timeline != b.Timeline {
		return a.Timeline < b.Timeline
	}
	if a.Segment != b.Segment {
		return a.Segment < b.Segment
	}
	return a.Partial && !b.Partial
}

// archiveScan is what a listing of the WAL prefix says about where the
// archive ends.
type archiveScan struct {
	// Top is the highest segment or .partial; valid when Found.
	Top   archiveItem
	Found bool
	// Histories are the timelines that have a .history file, ascending.
	Histories []wal.Timeline
	// Superseded are .partial objects whose complete segment is archived:
	// left behind by a crash between storing the segment and deleting its
	// .partial.
	Superseded []string
}

// scanArchive classifies the objects listed under prefix. A complete
// segment counts whatever its compression suffix: "X", "X.zst" and "X.lz4"
// are the same segment, and it supersedes X's .partial under any of them
// (the compression setting may have changed between runs). Objects in
// sub-directories and names it does not know (conflict copies kept aside by
// storage.PutOnce, other tools' files) are ignored.
func scanArchive(objs []storage.ObjectInfo, prefix string, segSize uint64) (archiveScan, error) {
	var scan archiveScan
	complete := map[string]bool{}
	var partials []archiveItem
	for _, o := range objs {
		rel, ok := strings.CutPrefix(o.Name, prefix)
		if !ok || rel == "" || strings.Contains(rel, "/") {
			continue
		}
		if wal.IsHistoryFileName(rel) {
			tli, err := wal.ParseHistoryFileName(rel)
			if err != nil {
				return archiveScan{}, fmt.Errorf("scan archive: %w", err)
			}
			scan.Histories = append(scan.Histories, tli)
			continue
		}
		base, partial, comp := wal.SplitFileName(rel)
		if !wal.IsSegmentFileName(base) {
			continue
		}
		tli, seg, err := wal.ParseSegmentFileName(base, segSize)
		if err != nil {
			return archiveScan{}, fmt.Errorf("scan archive: %w (is the archive from a server with another wal_segment_size?)", err)
		}
		it := archiveItem{Name: o.Name, Timeline: tli, Segment: seg, Partial: partial, Size: o.Size, Compression: comp}
		if partial {
			partials = append(partials, it)
		} else {
			complete[base] = true
		}
		if !scan.Found || scan.Top.less(it) {
			scan.Top, scan.Found = it, true
		}
	}
	for _, p := range partials {
		if complete[wal.SegmentFileName(p.Timeline, p.Segment, segSize)] {
			scan.Superseded = append(scan.Superseded, p.Name)
		}
	}
	slices.Sort(scan.Histories)
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
		return resumePoint{}, false, fmt.Errorf("resume inside %s: compressed partial segments are not supported", top.Name)
	}
	if top.Size < 0 || uint64(top.Size) > segSize {
		return resumePoint{}, false, fmt.Errorf("resume inside %s: size %d does not fit a %d-byte segment", top.Name, top.Size, segSize)
	}
	return resumePoint{Timeline: top.Timeline, Start: end, Partial: top.Name}, true, nil
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
