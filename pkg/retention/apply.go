package retention

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// ReadInput gathers MakePlan's input for cluster from the archive
// (catalog.ReadArchive): the backups, the WAL listing, every history file,
// and the segment size. A history file that cannot be read or parsed is
// left out with a note, which only keeps more WAL; storage failures are
// errors.
func ReadInput(ctx context.Context, b storage.Backend, cluster string, pol Policy) (Input, error) {
	a, err := catalog.ReadArchive(ctx, b, cluster)
	if err != nil {
		return Input{}, fmt.Errorf("read retention input: %w", err)
	}
	in := Input{Policy: pol, Backups: a.Backups, Histories: a.Histories, WALSegmentSize: a.SegmentSize}
	for _, o := range a.WAL.Segments() {
		in.WAL = append(in.WAL, WALFile{Name: o.Name, Size: o.Size})
	}
	for _, list := range [][]catalog.WALObject{a.WAL.Histories(), a.WAL.Conflicts(), a.WAL.Unknown()} {
		for _, o := range list {
			in.WAL = append(in.WAL, WALFile{Name: o.Name, Size: o.Size})
		}
	}
	slices.SortFunc(in.WAL, func(x, y WALFile) int { return strings.Compare(x.Name, y.Name) })
	for _, h := range a.WAL.Histories() {
		if err := a.HistoryErrors[h.Timeline]; err != nil {
			in.Notes = append(in.Notes, fmt.Sprintf("history file %s is unreadable or invalid, so older timelines' WAL is kept: %v", h.Name, err))
		}
	}
	return in, nil
}

// Result is what Apply did.
type Result struct {
	// Deleted lists the backups deleted, oldest first; Gone those the plan
	// named that no longer existed (an earlier run, or a user, deleted
	// them).
	Deleted []Decision `json:"deleted"`
	Gone    []string   `json:"gone"`
	// Skipped lists backups the plan named that Apply left alone, with why.
	Skipped []Skip `json:"skipped"`
	// DeletedWAL counts the WAL segments deleted, DeletedWALBytes their
	// size.
	DeletedWAL      int   `json:"deletedWAL"`
	DeletedWALBytes int64 `json:"deletedWALBytes"`
	// WALSkipped says why no WAL was deleted although the plan named some.
	WALSkipped string `json:"walSkipped,omitempty"`
}

// Skip is a planned backup deletion that did not happen.
type Skip struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// Apply carries out p on cluster's archive: the backups first, oldest
// first, then the WAL, oldest first, so that a run that stops half-way
// leaves a contiguous archive and the next run finishes the work. It is
// idempotent.
//
// Just before deleting a backup it reads its backup.json again and skips
// it (in Result.Skipped) unless it still has the status the plan saw and
// is not marked keep; catalog.DeleteBackup is called without force, so it
// checks the keep mark and the running state once more. Because the plan's
// WAL cut assumed those backups gone, no WAL is deleted when a planned done
// backup was skipped or failed to delete. A failed backup deletion does not
// stop the others; the first failed WAL deletion stops the WAL, so that only
// the oldest segments are ever gone. It returns the Result of what it did
// and the errors joined (ctx's error once ctx ends).
func Apply(ctx context.Context, b storage.Backend, cluster string, p Plan) (Result, error) {
	res := Result{Deleted: []Decision{}, Gone: []string{}, Skipped: []Skip{}}
	var errs []error
	walSafe := true
	for _, d := range p.Delete {
		if ctx.Err() != nil {
			return res, errors.Join(append(errs, ctx.Err())...)
		}
		doc, err := catalog.ReadBackup(ctx, b, cluster, d.ID)
		switch {
		case errors.Is(err, catalog.ErrNoBackup):
			objs, lerr := b.List(ctx, catalog.BackupPrefix(cluster, d.ID))
			if lerr != nil {
				errs = append(errs, fmt.Errorf("apply retention: %w", lerr))
				walSafe = walSafe && d.Status != catalog.StatusDone
				continue
			}
			if len(objs) == 0 {
				res.Gone = append(res.Gone, d.ID)
				continue
			}
			// Objects without backup.json: what the listing showed as a
			// failed backup whose document is missing.
			if d.Status != catalog.StatusFailed {
				res.Skipped = append(res.Skipped, Skip{ID: d.ID, Reason: "backup.json disappeared since the plan was made"})
				walSafe = false
				continue
			}
		case err != nil:
			res.Skipped = append(res.Skipped, Skip{ID: d.ID, Reason: "backup.json is unreadable, so whether it is kept is unknown: " + err.Error()})
			walSafe = walSafe && d.Status != catalog.StatusDone
			continue
		case doc.Keep:
			res.Skipped = append(res.Skipped, Skip{ID: d.ID, Reason: "marked keep since the plan was made"})
			walSafe = walSafe && d.Status != catalog.StatusDone
			continue
		case doc.Status != d.Status:
			res.Skipped = append(res.Skipped, Skip{ID: d.ID, Reason: fmt.Sprintf("status changed from %s to %s since the plan was made", d.Status, doc.Status)})
			walSafe = walSafe && d.Status != catalog.StatusDone && doc.Status != catalog.StatusDone
			continue
		}
		if err := catalog.DeleteBackup(ctx, b, cluster, d.ID, false); err != nil {
			if errors.Is(err, catalog.ErrNoBackup) {
				res.Gone = append(res.Gone, d.ID)
				continue
			}
			errs = append(errs, fmt.Errorf("apply retention: %w", err))
			walSafe = walSafe && d.Status != catalog.StatusDone
			continue
		}
		res.Deleted = append(res.Deleted, d)
	}
	if len(p.WAL.Delete) == 0 {
		return res, errors.Join(errs...)
	}
	if !walSafe {
		res.WALSkipped = "a done backup the plan deleted is still there, and the WAL cut assumed it gone; run retention again"
		return res, errors.Join(errs...)
	}
	prefix := catalog.WALPrefix(cluster)
	for _, f := range p.WAL.Delete {
		if err := b.Delete(ctx, prefix+f.Name); err != nil {
			// Stop at the first failure so that what remains stays
			// contiguous: only the oldest segments are ever gone.
			errs = append(errs, fmt.Errorf("apply retention: delete %s: %w", f.Name, err))
			break
		}
		res.DeletedWAL++
		res.DeletedWALBytes += f.Size
	}
	return res, errors.Join(errs...)
}
