package check

import (
	"fmt"
	"slices"
	"strings"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// WALArchive is what the WAL continuity check looks at: the archive as
// catalog.ReadArchive read it (its WAL index, history files and recorded
// gaps), and where the oldest done backup starts.
type WALArchive struct {
	// WAL indexes the WAL prefix; nil counts as empty.
	WAL *catalog.WALIndex
	// Histories holds the parsed history files by timeline;
	// HistoryErrors why a listed one could not be read or parsed. A listed
	// history file in neither counts as unreadable.
	Histories     map[wal.Timeline][]wal.HistoryEntry
	HistoryErrors map[wal.Timeline]error
	// Gaps are the recorded gaps.
	Gaps []catalog.Gap
	// Backups are the catalog's backups, in any order: a done one that
	// starts at or after a gap's end resolves it (catalog.Gap.ResolvedBy).
	Backups []catalog.Backup
	// StartTimeline and StartLSN are the oldest done backup's start. With a
	// zero StartTimeline (no done backup) the check starts at the first
	// segment of the lowest timeline in the archive.
	StartTimeline wal.Timeline
	StartLSN      wal.LSN
}

// Continuity is the outcome of CheckContinuity.
type Continuity struct {
	// Ranges are the segment ranges checked, per timeline, oldest first.
	Ranges []TimelineRange
	// Missing are the absent files: history files first, then segment
	// names in timeline and segment order.
	Missing []string
	// Unreadable describes history files that could not be parsed.
	Unreadable []string
	// Gaps are the recorded gaps that end after the start and that no
	// done backup resolves yet.
	Gaps []catalog.Gap
	// Resolved are the recorded gaps that end after the start and that a
	// done backup after them resolves: history, not a problem.
	Resolved []ResolvedGap
}

// ResolvedGap is a recorded gap and the done backup that starts after it.
type ResolvedGap struct {
	Gap    catalog.Gap
	Backup string
}

// TimelineRange is the segments of one timeline that recovery from the
// start may read, First to Last inclusive.
type TimelineRange struct {
	Timeline    wal.Timeline
	First, Last string
}

// OK reports whether the WAL is continuous.
func (c Continuity) OK() bool {
	return len(c.Missing) == 0 && len(c.Unreadable) == 0 && len(c.Gaps) == 0
}

// CheckContinuity says whether recovery from the oldest done backup's
// start can replay WAL to the archive's end on every timeline that
// descends from the backup's:
//
//   - every timeline above 1 that the archive holds, or that a reachable
//     timeline's history passes through, has its history file;
//   - on each reachable timeline T, every segment from where T begins (the
//     backup's start, or T's switch point from its parent) to where it ends
//     is stored: up to the segment before the switch point of a child
//     (recovery reads the segment holding a switch point from the newer
//     timeline, see catalog.CheckBackupWAL), or else to the last segment
//     stored on T. Whether a segment is stored is catalog.WALIndex.Stored:
//     a .partial counts only as the last segment of a timeline without
//     children, in the middle it means missing bytes;
//   - no recorded gap that ends after the start is unresolved.
//
// A recorded gap is resolved once a done backup starts at or after its end
// (catalog.Gap.ResolvedBy): points after it are recoverable from that
// backup, points before it from the older ones, so the gap stays in
// gaps.json as history and is reported in Resolved; the segments it
// covers are not missing. A gap recorded on an older timeline counts when
// the start's timeline descends from it and the gap ends after the start:
// a gap is recorded on the timeline where the archive ended, and may run
// into the next one.
//
// A timeline that branched off before the start, or from a timeline the
// backup is not on, is not needed and not checked.
func CheckContinuity(a WALArchive) Continuity {
	f := a.WAL
	if f == nil {
		f = catalog.IndexWAL(nil, "", wal.DefaultSegmentSize)
	}
	segSize := f.SegmentSize()
	if wal.ValidSegmentSize(segSize) != nil {
		// The index then holds no segment; the backup's start still
		// needs a segment size to be placed.
		segSize = wal.DefaultSegmentSize
	}
	var c Continuity

	startTLI, startLSN := a.StartTimeline, a.StartLSN
	if startTLI == 0 {
		for _, tli := range f.Timelines() {
			if lo, _, ok := f.Bounds(tli); ok {
				startTLI, startLSN = tli, wal.SegmentStart(lo, segSize)
				break
			}
		}
		if startTLI == 0 {
			return c // no WAL and no backup: nothing to be continuous
		}
	}
	startSeg := wal.SegmentOf(startLSN, segSize)

	// The history of each timeline from startTLI on, where known.
	histories := map[wal.Timeline][]wal.HistoryEntry{}
	missingHistory := map[wal.Timeline]bool{}
	for _, tli := range f.Timelines() {
		if tli <= startTLI || tli == 1 {
			continue
		}
		if _, ok := f.History(tli); !ok {
			missingHistory[tli] = true
			continue
		}
		if h, ok := a.Histories[tli]; ok {
			histories[tli] = h
			continue
		}
		why := "not read"
		if err := a.HistoryErrors[tli]; err != nil {
			why = err.Error()
		}
		c.Unreadable = append(c.Unreadable, wal.HistoryFileName(tli)+": "+why)
	}

	// Required segment range per timeline, from every reachable timeline's
	// path back to startTLI. A timeline with a child ends before the
	// child's switch segment; one without ends at its last stored segment.
	type span struct {
		first                    wal.SegmentNo
		childLast, leafLast      wal.SegmentNo
		firstSet, childSet, leaf bool
		hasChild                 bool
	}
	need := map[wal.Timeline]*span{}
	get := func(tli wal.Timeline, first wal.SegmentNo) *span {
		s := need[tli]
		if s == nil {
			s = &span{}
			need[tli] = s
		}
		if !s.firstSet || first < s.first {
			s.first, s.firstSet = first, true
		}
		return s
	}
	leaf := func(tli wal.Timeline, first wal.SegmentNo) {
		s := get(tli, first)
		if _, hi, ok := f.Bounds(tli); ok && hi >= first && (!s.leaf || hi > s.leafLast) {
			s.leafLast, s.leaf = hi, true
		}
	}
	leaf(startTLI, startSeg)
	for _, tli := range f.Timelines() {
		if tli <= startTLI {
			continue
		}
		h, known := histories[tli]
		if !known {
			// Without its history the timeline's start is unknown: check
			// what it holds from its first stored segment.
			if lo, _, ok := f.Bounds(tli); ok {
				leaf(tli, lo)
			}
			continue
		}
		// Reachable only if the backup's timeline is an ancestor and the
		// branch happened after the backup started.
		sp, ok := wal.SwitchPoint(h, startTLI)
		if !ok || sp <= startLSN {
			continue
		}
		begin := startSeg
		for _, e := range h {
			if e.Timeline < startTLI {
				continue
			}
			end := wal.SegmentOf(e.SwitchPoint, segSize)
			s := get(e.Timeline, begin)
			s.hasChild = true
			if end > begin && (!s.childSet || end-1 > s.childLast) {
				s.childLast, s.childSet = end-1, true
			}
			if _, ok := f.History(e.Timeline); e.Timeline > startTLI && e.Timeline != 1 && !ok {
				missingHistory[e.Timeline] = true
			}
			begin = end
		}
		leaf(tli, begin)
	}

	// The recorded gaps that matter: those that end after the start, on
	// its timeline's line. Resolved ones excuse the segments they cover.
	var resolved []catalog.Gap
	for _, g := range a.Gaps {
		if !gapAfter(g, startTLI, startLSN, a.Histories) {
			continue
		}
		if d, ok := g.ResolvedBy(a.Backups); ok {
			c.Resolved = append(c.Resolved, ResolvedGap{Gap: g, Backup: d.ID})
			resolved = append(resolved, g)
			continue
		}
		c.Gaps = append(c.Gaps, g)
	}
	inResolvedGap := func(tli wal.Timeline, seg wal.SegmentNo) bool {
		from := wal.SegmentStart(seg, segSize)
		to := from + wal.LSN(segSize)
		for _, g := range resolved {
			if g.StartLSN < to && g.EndLSN > from && onLine(g.Timeline, tli, a.Histories) {
				return true
			}
		}
		return false
	}

	var missingHist []wal.Timeline
	for tli := range missingHistory {
		missingHist = append(missingHist, tli)
	}
	slices.Sort(missingHist)
	for _, tli := range missingHist {
		c.Missing = append(c.Missing, wal.HistoryFileName(tli))
	}

	var tlis []wal.Timeline
	for tli := range need {
		tlis = append(tlis, tli)
	}
	slices.Sort(tlis)
	for _, tli := range tlis {
		s := need[tli]
		var last wal.SegmentNo
		switch {
		case s.hasChild && s.childSet:
			last = s.childLast
		case s.hasChild:
			continue // the child's first segment holds all of it
		case s.leaf:
			last = s.leafLast
		case tli == startTLI:
			last = s.first // the backup's first segment, not stored
		default:
			continue
		}
		c.Ranges = append(c.Ranges, TimelineRange{
			Timeline: tli,
			First:    wal.SegmentFileName(tli, s.first, segSize),
			Last:     wal.SegmentFileName(tli, last, segSize),
		})
		for seg := s.first; seg <= last; seg++ {
			// A timeline with a child is read from the child at the
			// switch segment: before it, a .partial is a hole even where
			// it is the last thing stored on the timeline.
			if _, ok := f.Complete(tli, seg); ok || (!s.hasChild && f.Stored(tli, seg)) || inResolvedGap(tli, seg) {
				continue
			}
			c.Missing = append(c.Missing, wal.SegmentFileName(tli, seg, segSize))
		}
	}
	return c
}

// gapAfter reports whether gap g ends after the start (startTLI,
// startLSN) on a timeline recovery from the start may replay: the start's
// own or a later one, or an older one the start's timeline descends from
// (a gap recorded there may run past the switch into the start's). An
// unknown end, or an unknown descent, counts.
func gapAfter(g catalog.Gap, startTLI wal.Timeline, startLSN wal.LSN, histories map[wal.Timeline][]wal.HistoryEntry) bool {
	if g.EndLSN == wal.InvalidLSN {
		return true
	}
	if g.EndLSN <= startLSN {
		return false
	}
	if g.Timeline >= startTLI {
		return true
	}
	if _, ok := histories[startTLI]; !ok {
		return true
	}
	return onLine(g.Timeline, startTLI, histories)
}

// onLine reports whether timeline tli is anc or descends from it, by tli's
// history.
func onLine(anc, tli wal.Timeline, histories map[wal.Timeline][]wal.HistoryEntry) bool {
	if anc == tli {
		return true
	}
	for _, e := range histories[tli] {
		if e.Timeline == anc {
			return true
		}
	}
	return false
}

// WALContinuity turns a Continuity into the check's result. backupID names
// the oldest done backup ("" for none).
func WALContinuity(c Continuity, backupID string) Result {
	from := "the oldest done backup " + backupID
	if backupID == "" {
		from = "the start of the archive (no done backup)"
	}
	if c.OK() {
		var parts []string
		for _, r := range c.Ranges {
			parts = append(parts, fmt.Sprintf("timeline %d: %s..%s", r.Timeline, r.First, r.Last))
		}
		for _, r := range c.Resolved {
			parts = append(parts, fmt.Sprintf("recorded WAL gap on timeline %d from %s to %s is history (points in it are lost; backup %s after it is done)",
				r.Gap.Timeline, r.Gap.StartLSN, r.Gap.EndLSN, r.Backup))
		}
		return Pass(NameWALContinuity, "from "+from+"; "+strings.Join(parts, ", "))
	}
	var problems []string
	if n := len(c.Missing); n > 0 {
		shown := c.Missing
		if n > 3 {
			shown = shown[:3]
		}
		p := "missing " + strings.Join(shown, ", ")
		if n > 3 {
			p += fmt.Sprintf(" and %d more", n-3)
		}
		problems = append(problems, p)
	}
	if len(c.Unreadable) > 0 {
		problems = append(problems, "unreadable "+strings.Join(c.Unreadable, "; "))
	}
	for _, g := range c.Gaps {
		problems = append(problems, fmt.Sprintf("recorded WAL gap on timeline %d from %s to %s", g.Timeline, g.StartLSN, g.EndLSN))
	}
	if len(c.Missing) == 0 && len(c.Unreadable) == 0 {
		// Only recorded gaps: a backup after them is all it takes.
		return Failf(NameWALContinuity, "%s after %s: recovery cannot replay past it; take a new base backup "+
			"(barnacle backup): once it is done, the points after the gap are recoverable", strings.Join(problems, "; "), from)
	}
	return Failf(NameWALContinuity, "%s after %s: recovery cannot replay past it; take a new base backup "+
		"(barnacle backup), and delete the backups older than the hole once it is done (barnacle delete)",
		strings.Join(problems, "; "), from)
}
