package restore

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// ErrOutsideWindow is matched (errors.Is) by *OutsideWindowError.
var ErrOutsideWindow = errors.New("restore: target outside the recoverable window")

// Candidate is a done backup that ChooseBackup considered, and why it did
// not fit.
type Candidate struct {
	ID           string
	StopLSN      wal.LSN
	StopTimeline wal.Timeline
	StopTime     time.Time
	Reason       string
}

// NoBackupError says that no done backup can reach a target, listing every
// done backup considered (newest first) with the reason it was rejected.
// errors.Is(err, catalog.ErrNoBackup) is true.
type NoBackupError struct {
	Target   Target
	Timeline string // the resolved target timeline, as recovery_target_timeline
	// Backups is how many backups the catalog listed, done or not.
	Backups    int
	Candidates []Candidate
}

// Error lists the candidates and why each was rejected.
func (e *NoBackupError) Error() string {
	var b strings.Builder
	if len(e.Candidates) == 0 {
		fmt.Fprintf(&b, "restore: no done backup in the archive (%d listed, none with status done)", e.Backups)
		return b.String()
	}
	switch e.Target.Kind {
	case TargetTime:
		fmt.Fprintf(&b, "restore: no backup finished before %s on timeline %s", e.Target.Time.UTC().Format(time.RFC3339Nano), e.Timeline)
	case TargetLSN:
		fmt.Fprintf(&b, "restore: no backup stopped at or before LSN %s on timeline %s", e.Target.LSN, e.Timeline)
	default:
		fmt.Fprintf(&b, "restore: no backup can recover to %s on timeline %s", e.Target, e.Timeline)
	}
	b.WriteString("; done backups considered, newest first:")
	for _, c := range e.Candidates {
		fmt.Fprintf(&b, " %s (stopped at %s on timeline %d, %s): %s;", c.ID, c.StopLSN, c.StopTimeline,
			c.StopTime.UTC().Format(time.RFC3339), c.Reason)
	}
	return strings.TrimSuffix(b.String(), ";")
}

// Is makes errors.Is(err, catalog.ErrNoBackup) true.
func (e *NoBackupError) Is(target error) bool { return target == catalog.ErrNoBackup }

// ChooseBackup picks the backup to restore for target along timeline tt:
// the newest backup with status done (others are ignored) that
//
//   - stopped before the target: StopTime before a time target, StopLSN at
//     or before an LSN target. An xid or restore-point target cannot be
//     compared with a backup by itself, so the newest backup is taken
//     (ChooseBackupAt compares it with the target's record, found in the
//     WAL). Immediate and end-of-WAL take the newest;
//   - is on the target timeline or on an ancestor of it that the target
//     timeline branched off after the backup's stop LSN, according to
//     histories (each timeline's parsed .history file, as in the archive).
//     Latest is the highest timeline in histories or among the backups;
//     current accepts every backup's own timeline.
//
// It is pure. When no backup fits it returns a *NoBackupError listing the
// candidates and why each was rejected; an invalid target is an error too.
func ChooseBackup(backups []catalog.Backup, histories map[wal.Timeline][]wal.HistoryEntry, target Target, tt TimelineTarget) (catalog.Backup, error) {
	return ChooseBackupAt(backups, histories, target, tt, wal.InvalidLSN)
}

// ChooseBackupAt is ChooseBackup for a restore-point or xid target whose
// record the caller found in the WAL starting at record (InvalidLSN: not
// known): a backup must also have stopped at or before record, since
// PostgreSQL stops there only once it is past the backup's consistency
// point (its stop LSN). It is pure, like ChooseBackup.
func ChooseBackupAt(backups []catalog.Backup, histories map[wal.Timeline][]wal.HistoryEntry, target Target, tt TimelineTarget, record wal.LSN) (catalog.Backup, error) {
	if err := target.Validate(); err != nil {
		return catalog.Backup{}, err
	}
	var done []catalog.Backup
	for _, b := range backups {
		if b.Status == catalog.StatusDone {
			done = append(done, b)
		}
	}
	slices.SortStableFunc(done, func(a, b catalog.Backup) int { return catalog.CompareBackupIDs(b.ID, a.ID) })

	timeline := tt.Mode
	targetTLI := tt.Timeline
	if timeline == TimelineLatest {
		targetTLI = latestTimeline(done, histories)
	}
	tliName := tt.String()
	if timeline != TimelineCurrent {
		tliName = fmt.Sprintf("%d", targetTLI)
		if tt.Mode == TimelineLatest {
			tliName += " (latest)"
		}
	}
	nb := &NoBackupError{Target: target, Timeline: tliName, Backups: len(backups)}
	for _, b := range done {
		reason := rejectBackup(b, histories, target, timeline, targetTLI, record)
		if reason == "" {
			return b, nil
		}
		nb.Candidates = append(nb.Candidates, Candidate{
			ID: b.ID, StopLSN: b.StopLSN, StopTimeline: b.StopTimeline, StopTime: b.StopTime, Reason: reason,
		})
	}
	return catalog.Backup{}, nb
}

// latestTimeline is what recovery_target_timeline = 'latest' resolves to
// for this archive: the highest timeline with a history file, or that a
// backup stopped on (timeline 1 has no history file).
func latestTimeline(done []catalog.Backup, histories map[wal.Timeline][]wal.HistoryEntry) wal.Timeline {
	latest := wal.Timeline(1)
	for tli := range histories {
		latest = max(latest, tli)
	}
	for _, b := range done {
		latest = max(latest, b.StopTimeline)
	}
	return latest
}

// rejectBackup returns why b cannot serve target on the target timeline,
// or "" when it can.
func rejectBackup(b catalog.Backup, histories map[wal.Timeline][]wal.HistoryEntry, target Target, mode TimelineMode, tli wal.Timeline, record wal.LSN) string {
	stop := b.StopLSN
	if stop == wal.InvalidLSN {
		return "its stop LSN is not recorded"
	}
	if b.StopTimeline == 0 {
		return "its stop timeline is not recorded"
	}
	switch target.Kind {
	case TargetTime:
		if !b.StopTime.Before(target.Time) {
			return "it finished at or after the target time"
		}
	case TargetLSN:
		if stop > target.LSN {
			return "it stopped after the target LSN"
		}
	case TargetName, TargetXID:
		if record != wal.InvalidLSN && stop > record {
			return fmt.Sprintf("it stopped after the target's record at %s", record)
		}
	}
	if mode == TimelineCurrent || b.StopTimeline == tli {
		return ""
	}
	if b.StopTimeline > tli {
		return fmt.Sprintf("its timeline %d is newer than the target timeline %d", b.StopTimeline, tli)
	}
	h, ok := histories[tli]
	if !ok {
		return fmt.Sprintf("the history file of timeline %d is not in the archive, so whether timeline %d is its ancestor is unknown", tli, b.StopTimeline)
	}
	sp, ok := wal.SwitchPoint(h, b.StopTimeline)
	if !ok {
		return fmt.Sprintf("timeline %d is not an ancestor of timeline %d", b.StopTimeline, tli)
	}
	if stop > sp {
		return fmt.Sprintf("it stopped after timeline %d branched off timeline %d at %s", tli, b.StopTimeline, sp)
	}
	return ""
}

// OutsideWindowError says that a target lies outside every recoverable
// window of its timeline; it lists every window and gap so the user can
// pick another target. errors.Is(err, ErrOutsideWindow) is true.
type OutsideWindowError struct {
	Target   Target
	Timeline string
	Reason   string
	Windows  []catalog.Window
	Gaps     []catalog.Gap
}

// Error names the reason and lists every window and gap.
func (e *OutsideWindowError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "restore: target %s on timeline %s is not recoverable: %s; recoverable windows:", e.Target, e.Timeline, e.Reason)
	if len(e.Windows) == 0 {
		b.WriteString(" none")
	}
	for i, w := range e.Windows {
		if i > 0 {
			b.WriteString(";")
		}
		b.WriteString(" " + w.String())
	}
	if len(e.Gaps) > 0 {
		b.WriteString("; recorded WAL gaps:")
		for i, g := range e.Gaps {
			if i > 0 {
				b.WriteString(";")
			}
			fmt.Fprintf(&b, " timeline %d: %s to %s", g.Timeline, g.StartLSN, g.EndLSN)
		}
	}
	return b.String()
}

// Is makes errors.Is(err, ErrOutsideWindow) true.
func (e *OutsideWindowError) Is(target error) bool { return target == ErrOutsideWindow }

// CheckTarget checks a time or LSN target against the recoverable windows
// and the recorded gaps: the target must lie in a window of the target
// timeline (latest: the highest timeline among the windows; current: any
// window), after its start and not after its end, and for an LSN target no
// gap on that timeline may lie between the window's start and the target
// (a gap cuts a window short). An LSN before the start of the target
// timeline's window is checked against the older timelines' windows, whose
// WAL that timeline's history includes. Other kinds of target cannot be placed in
// WAL and always pass. It is pure; a target outside is an
// *OutsideWindowError, an invalid target or gap another error.
func CheckTarget(target Target, tt TimelineTarget, windows []catalog.Window, gaps []catalog.Gap) error {
	if err := target.Validate(); err != nil {
		return err
	}
	if target.Kind != TargetTime && target.Kind != TargetLSN {
		return nil
	}
	tli := tt.Timeline
	if tt.Mode == TimelineLatest {
		tli = 0
		for _, w := range windows {
			tli = max(tli, w.Timeline)
		}
	}
	tliName := tt.String()
	if tt.Mode != TimelineCurrent {
		tliName = fmt.Sprintf("%d", tli)
	}
	type gapRange struct {
		tli        wal.Timeline
		start, end wal.LSN
	}
	var gr []gapRange
	for _, g := range gaps {
		if g.StartLSN == wal.InvalidLSN || g.EndLSN == wal.InvalidLSN {
			return fmt.Errorf("restore: check target: gap on timeline %d has no start or end LSN", g.Timeline)
		}
		gr = append(gr, gapRange{g.Timeline, g.StartLSN, g.EndLSN})
	}
	// A target timeline's window without a start time begins at the
	// point where it branched off (catalog.RecoverableWindows); an LSN before that
	// lies in an ancestor's part of its history, in an older timeline's
	// window that reaches the branch point.
	branchStart := wal.LSN(0)
	for _, w := range windows {
		if w.Timeline == tli && w.FromTime.IsZero() {
			branchStart = w.FromLSN
		}
	}
	reason := "no window on that timeline"
	for _, w := range windows {
		ancestorPart := w.Timeline < tli && target.Kind == TargetLSN && target.LSN < branchStart && w.ToLSN >= branchStart
		if tt.Mode != TimelineCurrent && w.Timeline != tli && !ancestorPart {
			continue
		}
		to := w.ToLSN
		empty := false
		for _, g := range gr {
			if g.tli != w.Timeline || g.start >= to || g.end <= w.FromLSN {
				continue
			}
			if g.start <= w.FromLSN {
				empty = true
			} else {
				to = g.start
			}
		}
		if empty {
			reason = "its window starts inside a WAL gap"
			continue
		}
		switch target.Kind {
		case TargetTime:
			if !target.Time.After(w.FromTime) {
				reason = "it is not after the stop time of the oldest backup"
				continue
			}
			if !w.ToTime.IsZero() && target.Time.After(w.ToTime) {
				reason = "it is after the last archived commit"
				continue
			}
		case TargetLSN:
			if target.LSN < w.FromLSN {
				reason = "it is before the stop LSN of the oldest backup"
				continue
			}
			if target.LSN > to {
				if to < w.ToLSN {
					reason = fmt.Sprintf("a WAL gap starting at %s lies between the backup and the target", to)
				} else {
					reason = "it is after the end of the archived WAL"
					// catalog.RecoverableWindows ends a window where a recorded gap
					// starts (and the gap may end on a later timeline, as
					// after a failover): then the gap is the reason.
					for _, g := range gr {
						if g.tli > w.Timeline || g.start > target.LSN || g.end <= to {
							continue
						}
						if target.LSN < g.end {
							reason = fmt.Sprintf("it is inside the recorded WAL gap %s..%s (timeline %d): that WAL is lost", g.start, g.end, g.tli)
						} else {
							reason = fmt.Sprintf("the recorded WAL gap %s..%s (timeline %d) lies between the backup and the target", g.start, g.end, g.tli)
						}
					}
				}
				continue
			}
		}
		return nil
	}
	return &OutsideWindowError{Target: target, Timeline: tliName, Reason: reason, Windows: windows, Gaps: gaps}
}
