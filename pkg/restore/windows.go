package restore

import (
	"fmt"
	"slices"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/retention"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// RecoverableWindows computes, for the oldest done backup, the window on
// its stop timeline and on every archived timeline that branched from it
// after the backup's stop point. Each window runs from its start as long
// as the segments are stored without a hole and no recorded gap
// intervenes; StopsAt says what ended it early. ToTime is left zero (the
// listing has no commit times; see Prepare). It is pure.
func RecoverableWindows(in retention.Input, gaps []catalog.Gap) []Window {
	out := []Window{}
	var oldest *catalog.Backup
	for i := range in.Backups {
		if in.Backups[i].Status == catalog.StatusDone {
			oldest = &in.Backups[i]
		}
	}
	segSize := in.WALSegmentSize
	if oldest == nil || wal.ValidSegmentSize(segSize) != nil {
		return out
	}
	stop, err := wal.ParseLSN(oldest.StopLSN)
	if err != nil {
		return out
	}
	// What is stored per timeline: complete segments, and the bytes of
	// each .partial (stored uncompressed, so its size is its length).
	complete := map[wal.Timeline]map[wal.SegmentNo]bool{}
	partial := map[wal.Timeline]map[wal.SegmentNo]uint64{}
	var timelines []wal.Timeline
	for _, f := range in.WAL {
		base, isPartial, compression := wal.SplitFileName(f.Name)
		tli, seg, err := wal.ParseSegmentFileName(base, segSize)
		if err != nil {
			continue
		}
		if !slices.Contains(timelines, tli) {
			timelines = append(timelines, tli)
		}
		if isPartial {
			if compression == "" && f.Size > 0 {
				if partial[tli] == nil {
					partial[tli] = map[wal.SegmentNo]uint64{}
				}
				partial[tli][seg] = uint64(f.Size)
			}
			continue
		}
		if complete[tli] == nil {
			complete[tli] = map[wal.SegmentNo]bool{}
		}
		complete[tli][seg] = true
	}
	for tli := range in.Histories {
		if !slices.Contains(timelines, tli) {
			timelines = append(timelines, tli)
		}
	}
	slices.Sort(timelines)

	for _, tli := range timelines {
		var from wal.LSN
		w := Window{Timeline: tli}
		switch {
		case tli == oldest.StopTimeline:
			from = stop
			w.FromTime = oldest.StopTime
		case tli > oldest.StopTimeline:
			h, ok := in.Histories[tli]
			if !ok || len(h) == 0 {
				continue
			}
			sp, ok := wal.SwitchPoint(h, oldest.StopTimeline)
			if !ok || sp <= stop {
				continue // branched before the backup was consistent
			}
			from = h[len(h)-1].SwitchPoint
		default:
			continue
		}
		// Walk the stored WAL from the segment holding from (or, when from
		// is a segment boundary, the one before it, which recovery reads).
		seg := wal.SegmentOf(from, segSize)
		to := from
		for {
			if complete[tli][seg] {
				to = max(to, wal.SegmentStart(seg+1, segSize))
				seg++
				continue
			}
			if n, ok := partial[tli][seg]; ok {
				to = max(to, wal.SegmentStart(seg, segSize)+wal.LSN(n))
				break
			}
			// Nothing at all from the start, or a hole before later WAL;
			// otherwise this is simply the archive's end.
			if to == from || hasLater(complete[tli], partial[tli], seg) {
				w.StopsAt = "missing " + wal.SegmentFileName(tli, seg, segSize)
			}
			break
		}
		for _, g := range gaps {
			start, err := wal.ParseLSN(g.StartLSN)
			if err != nil || g.Timeline != tli || start >= to {
				continue
			}
			end, err := wal.ParseLSN(g.EndLSN)
			if err != nil || end <= from {
				continue
			}
			to = max(from, start)
			w.StopsAt = fmt.Sprintf("recorded gap %s..%s", g.StartLSN, g.EndLSN)
		}
		w.FromLSN, w.ToLSN = from, to
		out = append(out, w)
	}
	return out
}

// hasLater reports whether anything is stored on the timeline after seg,
// which makes seg a hole rather than the archive's end.
func hasLater(complete map[wal.SegmentNo]bool, partial map[wal.SegmentNo]uint64, seg wal.SegmentNo) bool {
	for s := range complete {
		if s > seg {
			return true
		}
	}
	for s := range partial {
		if s > seg {
			return true
		}
	}
	return false
}
