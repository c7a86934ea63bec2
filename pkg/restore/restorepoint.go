package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walrecord"
)

// ErrNotInWAL is matched (errors.Is) by *NotInWALError.
var ErrNotInWAL = errors.New("restore: target record not in the archived WAL")

// NotInWALError says that the record a restore-point or xid target stops
// at (the restore point; the transaction's commit or abort) is in no
// archived WAL after a backup that could serve it: nothing was written.
// errors.Is(err, ErrNotInWAL) is true.
type NotInWALError struct {
	Target   Target
	Timeline wal.Timeline
	// From and To bound the WAL searched: from the oldest usable backup's
	// stop LSN to the end of the archived WAL.
	From, To wal.LSN
}

func (e *NotInWALError) Error() string {
	searched := fmt.Sprintf("searched %s to %s along timeline %d", e.From, e.To, e.Timeline)
	if e.Target.Kind == TargetXID {
		return fmt.Sprintf("restore: target xid %s (--target-xid; target.xid in a restore request): no commit or abort of that transaction in the archived WAL after a backup (%s); "+
			"it may not have ended before the end of the archived WAL, or it ended before the oldest backup: check the xid, "+
			"or give --backup ID with a backup taken before it ended", e.Target.XID, searched)
	}
	return fmt.Sprintf("restore: target name %q (--target-name; target.name in a restore request): no restore point of that name in the archived WAL after a backup (%s); "+
		"restore points are only in WAL: check the spelling, "+
		"or give --backup ID with a backup taken before the restore point was created", e.Target.Name, searched)
}

// Is makes errors.Is(err, ErrNotInWAL) true.
func (e *NotInWALError) Is(target error) bool { return target == ErrNotInWAL }

// targetMatcher returns whether a record is the one target stops at, as
// PostgreSQL's recoveryStopsBefore/After compare it: a restore point of
// that exact name; a commit or abort of that transaction, whose ID
// PostgreSQL 15 reads as 32 bits (an epoch-qualified value keeps its low
// 32 bits). nil for other targets.
func targetMatcher(target Target) func(walrecord.Record) bool {
	switch target.Kind {
	case TargetName:
		return func(rec walrecord.Record) bool {
			n, _, ok := rec.RestorePoint()
			return ok && n == target.Name
		}
	case TargetXID:
		v, err := strconv.ParseUint(target.XID, 10, 64)
		if err != nil {
			return nil
		}
		want := uint32(v)
		return func(rec walrecord.Record) bool {
			xid, _, ok := rec.XactEnd()
			return ok && xid == want
		}
	}
	return nil
}

// scanRange is the WAL after one backup: a restore point whose record
// starts in [from, to) is served by that backup and no newer one (to is 0
// for the end of the WAL).
type scanRange struct {
	backup   catalog.Backup
	tli      wal.Timeline // the timeline recovery follows
	from, to wal.LSN
}

// scanRanges returns, newest backup first, the WAL that ChooseBackupAt
// would serve from each done backup that can recover along tt at all.
func scanRanges(a catalog.Archive, tt TimelineTarget) []scanRange {
	var done []catalog.Backup
	for _, b := range a.Backups {
		if b.Status == catalog.StatusDone {
			done = append(done, b)
		}
	}
	slices.SortStableFunc(done, func(x, y catalog.Backup) int { return catalog.CompareBackupIDs(y.ID, x.ID) })
	tli := tt.Timeline
	if tt.Mode == TimelineLatest {
		tli = latestTimeline(done, a.Histories)
	}
	var out []scanRange
	for _, b := range done {
		if rejectBackup(b, a.Histories, Target{Kind: TargetEnd}, tt.Mode, tli, wal.InvalidLSN) != "" {
			continue
		}
		r := scanRange{backup: b, tli: tli, from: b.StopLSN}
		if tt.Mode == TimelineCurrent {
			r.tli = b.StopTimeline
		}
		// A newer backup on the same path serves what follows its stop;
		// one on another path (current mode) does not bound this one.
		for i := len(out) - 1; i >= 0; i-- {
			if out[i].tli == r.tli {
				r.to = out[i].from
				break
			}
		}
		if r.to != 0 && r.to <= r.from {
			continue // a newer backup stopped at the same place
		}
		out = append(out, r)
	}
	return out
}

// locateTarget finds the record that a restore-point or xid target stops
// at in the archived WAL, newest backup's WAL first, and returns where it
// starts. A target whose record is not there is a *NotInWALError; WAL
// that cannot be read (a damaged or missing segment before the archive's
// end, a storage failure) is an error naming the segment, never "not
// found". ok is false when no backup can serve any target, or the target
// is of another kind; ChooseBackup then decides alone.
func locateTarget(ctx context.Context, b storage.Backend, a catalog.Archive, target Target, tt TimelineTarget) (lsn wal.LSN, ok bool, err error) {
	match := targetMatcher(target)
	ranges := scanRanges(a, tt)
	if match == nil || len(ranges) == 0 {
		return wal.InvalidLSN, false, nil
	}
	if err := wal.ValidSegmentSize(a.SegmentSize); err != nil {
		return wal.InvalidLSN, false, fmt.Errorf("restore: find %s in the WAL: the archive's WAL segment size is unknown (%w); give --backup ID with a backup taken before it", target, err)
	}
	var end wal.LSN
	for _, r := range ranges {
		found, reached, err := scanFor(ctx, b, a, r, match)
		if err != nil {
			return wal.InvalidLSN, false, fmt.Errorf("restore: find %s in the WAL after backup %s: %w", target, r.backup.ID, err)
		}
		if found != wal.InvalidLSN {
			return found, true, nil
		}
		end = max(end, reached)
	}
	last := ranges[len(ranges)-1]
	return wal.InvalidLSN, false, &RejectedError{Err: &NotInWALError{Target: target, Timeline: ranges[0].tli, From: last.from, To: end}}
}

// scanFor reads the records of r and returns the start of the first that
// match accepts, or InvalidLSN and where the reading stopped.
func scanFor(ctx context.Context, b storage.Backend, a catalog.Archive, r scanRange, match func(walrecord.Record) bool) (found, reached wal.LSN, err error) {
	path := timelinePath(a.Histories[r.tli], r.tli)
	serve := func(seg wal.SegmentNo) (catalog.WALObject, bool) {
		for _, p := range path {
			if wal.SegmentOf(p.begin, a.SegmentSize) > seg {
				continue
			}
			if o, ok, _ := a.WAL.Serve(p.tli, seg); ok {
				return o, true
			}
		}
		return catalog.WALObject{}, false
	}
	rd, err := walrecord.NewReader(walrecord.Options{
		SegmentSize: a.SegmentSize,
		Open: func(seg wal.SegmentNo) (io.ReadCloser, error) {
			o, ok := serve(seg)
			if !ok {
				return nil, walrecord.ErrNoSegment
			}
			return catalog.OpenSegment(ctx, b, o.Key)
		},
		Name: func(seg wal.SegmentNo) string {
			if o, ok := serve(seg); ok {
				return o.Name
			}
			return wal.SegmentFileName(r.tli, seg, a.SegmentSize)
		},
	}, r.from)
	if err != nil {
		return wal.InvalidLSN, wal.InvalidLSN, err
	}
	reached = r.from
	for {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			end, _ := rd.EndLSN()
			return wal.InvalidLSN, max(reached, end), nil
		}
		if err != nil {
			return wal.InvalidLSN, reached, err
		}
		if r.to != 0 && rec.LSN >= r.to {
			return wal.InvalidLSN, r.to, nil
		}
		reached = rec.End
		if match(rec) {
			return rec.LSN, rec.End, nil
		}
	}
}

// pathEntry is one timeline of a recovery's path and where it begins.
type pathEntry struct {
	tli   wal.Timeline
	begin wal.LSN
}

// timelinePath returns the timelines recovery along tli reads, newest
// first, each with the LSN where it begins (PostgreSQL's expectedTLEs): a
// segment is read from the newest timeline that begins in or before it and
// has it, as XLogFileReadAnyTLI does, so the segment of a switch comes
// from the new timeline.
func timelinePath(history []wal.HistoryEntry, tli wal.Timeline) []pathEntry {
	out := []pathEntry{{tli: tli}}
	if n := len(history); n > 0 {
		out[0].begin = history[n-1].SwitchPoint
	}
	for i := len(history) - 1; i >= 0; i-- {
		e := pathEntry{tli: history[i].Timeline}
		if i > 0 {
			e.begin = history[i-1].SwitchPoint
		}
		out = append(out, e)
	}
	return out
}
