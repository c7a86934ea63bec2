package catalog

import (
	"fmt"
	"slices"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Window is a stretch of WAL on one timeline that recovery can reach: from
// the stop point of the oldest done backup (or, on a later timeline, from
// where that timeline branched off) to the end of the WAL archived after it
// without a break.
type Window struct {
	Timeline wal.Timeline
	// FromLSN and FromTime are the stop LSN and stop time of the oldest
	// backup the window starts with; on a later timeline FromLSN is where
	// it branched off and FromTime is zero.
	FromLSN  wal.LSN
	FromTime time.Time
	// ToLSN is the end of the archived WAL (the first byte not archived).
	// ToTime is when the newest WAL object of the timeline was written,
	// for a window that reaches its timeline's archived end: no commit
	// after it is in the archive. Zero means unknown, and time targets are
	// then not checked against it.
	ToLSN  wal.LSN
	ToTime time.Time
	// StopsAt says why the window ends before its timeline's archived end:
	// the first missing segment or a recorded gap; empty when it reaches it.
	StopsAt string
}

// String renders the window for messages.
func (w Window) String() string {
	from := w.FromLSN.String()
	if !w.FromTime.IsZero() {
		from += " (" + w.FromTime.UTC().Format(time.RFC3339) + ")"
	}
	to := w.ToLSN.String()
	if !w.ToTime.IsZero() {
		to += " (" + w.ToTime.UTC().Format(time.RFC3339) + ")"
	}
	return fmt.Sprintf("timeline %d: %s to %s", w.Timeline, from, to)
}

// RecoverableWindows computes, for the oldest done backup, the window on
// its stop timeline and on every archived timeline that branched from it
// after the backup's stop point: the WAL that wal-fetch serves (see
// WALIndex) from the window's start without a hole, cut short by a recorded
// gap. StopsAt says what ended a window early. It is pure.
//
// A timeline's window reaches into the segment where a later timeline
// branched off it, up to the switch point, when that later timeline's copy
// of the segment is served: recovery towards it reads that segment from
// there. The old timeline's own .partial of it is never served.
func RecoverableWindows(a Archive) []Window {
	out := []Window{}
	var oldest *Backup
	for i := range a.Backups {
		if a.Backups[i].Status == StatusDone {
			oldest = &a.Backups[i]
		}
	}
	segSize := a.SegmentSize
	if oldest == nil || wal.ValidSegmentSize(segSize) != nil || a.WAL == nil {
		return out
	}
	stop := oldest.StopLSN
	if stop == wal.InvalidLSN {
		return out
	}
	var timelines []wal.Timeline
	for _, tli := range a.WAL.Timelines() {
		if _, _, ok := a.WAL.Bounds(tli); ok {
			timelines = append(timelines, tli)
		}
	}
	for tli := range a.Histories {
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
			h, ok := a.Histories[tli]
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
		to, hole := a.WAL.Reach(tli, from)
		if hole == "" {
			to = max(to, a.branchReach(tli, to))
		}
		switch {
		case hole != "":
			w.StopsAt = "missing " + hole
		case to == from:
			w.StopsAt = "missing " + wal.SegmentFileName(tli, wal.SegmentOf(from, segSize), segSize)
		}
		for _, g := range a.Gaps {
			start, end := g.StartLSN, g.EndLSN
			if start == wal.InvalidLSN || g.Timeline != tli || start >= to {
				continue
			}
			if end <= from {
				continue
			}
			to = max(from, start)
			w.StopsAt = fmt.Sprintf("recorded gap %s..%s", g.StartLSN, g.EndLSN)
		}
		w.FromLSN, w.ToLSN = from, to
		if w.StopsAt == "" {
			for _, o := range a.WAL.Segments() {
				if o.Timeline == tli && o.ModTime.After(w.ToTime) {
					w.ToTime = o.ModTime
				}
			}
		}
		out = append(out, w)
	}
	return out
}

// branchReach returns how far tli's WAL reaches through the segment that
// starts at or holds end, where the WAL served on tli stops, by way of a
// later timeline that branched off tli inside that segment and whose copy
// of it is served: up to the switch point. It returns 0 when there is none.
func (a Archive) branchReach(tli wal.Timeline, end wal.LSN) wal.LSN {
	seg := wal.SegmentOf(end, a.SegmentSize)
	var reach wal.LSN
	for htli, h := range a.Histories {
		for i, e := range h {
			if e.Timeline != tli || wal.SegmentOf(e.SwitchPoint, a.SegmentSize) != seg || e.SwitchPoint <= end {
				continue
			}
			child := htli // the timeline that began at e.SwitchPoint
			if i+1 < len(h) {
				child = h[i+1].Timeline
			}
			if _, ok, _ := a.WAL.Serve(child, seg); ok {
				reach = max(reach, e.SwitchPoint)
			}
		}
	}
	return reach
}
