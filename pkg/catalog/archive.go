package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Archive is a cluster's catalog read at one moment by ReadArchive: what
// restore, status, check and retention judge the archive by.
type Archive struct {
	Cluster string
	// SegmentSize is the archive's WAL segment size: from archive.json, or
	// without one from the newest done backup; 0 when unknown.
	SegmentSize uint64
	// Backups are as ListBackups returns them: newest first, unreadable
	// ones included.
	Backups []Backup
	// WAL indexes the WAL prefix; built for SegmentSize, so with an unknown
	// size every segment name is unknown to it.
	WAL *WALIndex
	// Histories holds the parsed history file of each timeline that has a
	// readable, valid one; HistoryErrors says, per timeline, why its
	// history file could not be read or parsed (without the file's name).
	Histories     map[wal.Timeline][]wal.HistoryEntry
	HistoryErrors map[wal.Timeline]error
	// Gaps are the recorded WAL gaps, oldest first.
	Gaps []Gap
}

// ReadArchive reads cluster's catalog from b: the backups, the listing of
// the WAL prefix, every history file, the recorded gaps and the segment
// size. A history file that cannot be read or parsed is recorded in
// HistoryErrors, not an error: each consumer decides what it means (keep
// more WAL, report it). Storage failures of the listings, archive.json and
// gaps.json are errors, as is ctx's end.
func ReadArchive(ctx context.Context, b storage.Backend, cluster string) (Archive, error) {
	a := Archive{Cluster: cluster}
	var err error
	if a.Backups, err = ListBackups(ctx, b, cluster); err != nil {
		return Archive{}, fmt.Errorf("read the archive: %w", err)
	}
	id, err := ReadIdentity(ctx, b, cluster)
	switch {
	case err == nil:
		a.SegmentSize = id.WALSegmentSize
	case errors.Is(err, storage.ErrNotExist):
		for _, d := range a.Backups {
			if d.Status == StatusDone && d.WALSegmentSize != 0 {
				a.SegmentSize = d.WALSegmentSize
				break
			}
		}
	default:
		return Archive{}, fmt.Errorf("read the archive: %w", err)
	}
	w, err := ReadWAL(ctx, b, cluster, a.SegmentSize)
	if err != nil {
		return Archive{}, err
	}
	a.WAL, a.Histories, a.HistoryErrors, a.Gaps = w.WAL, w.Histories, w.HistoryErrors, w.Gaps
	return a, nil
}

// ReadWAL is the WAL part of ReadArchive, for a caller that knows the
// segment size or reads the rest itself: it lists the WAL prefix, indexes
// it for segSize, and reads every history file and the recorded gaps. The
// Archive it returns has Cluster, SegmentSize, WAL, Histories,
// HistoryErrors and Gaps set.
func ReadWAL(ctx context.Context, b storage.Backend, cluster string, segSize uint64) (Archive, error) {
	a := Archive{Cluster: cluster, SegmentSize: segSize, Histories: map[wal.Timeline][]wal.HistoryEntry{}, HistoryErrors: map[wal.Timeline]error{}}
	prefix := WALPrefix(cluster)
	objs, err := b.List(ctx, prefix)
	if err != nil {
		return Archive{}, fmt.Errorf("read the archive: list %s: %w", prefix, err)
	}
	a.WAL = IndexWAL(objs, prefix, segSize)
	for _, h := range a.WAL.Histories() {
		data, err := storage.ReadAll(ctx, b, h.Key)
		if ctx.Err() != nil {
			return Archive{}, fmt.Errorf("read the archive: %w", ctx.Err())
		}
		if err != nil {
			a.HistoryErrors[h.Timeline] = fmt.Errorf("read: %w", err)
			continue
		}
		entries, err := wal.ParseHistory(data)
		if err != nil {
			a.HistoryErrors[h.Timeline] = err
			continue
		}
		a.Histories[h.Timeline] = entries
	}
	if a.Gaps, err = ReadGaps(ctx, b, cluster); err != nil {
		return Archive{}, fmt.Errorf("read the archive: %w", err)
	}
	return a, nil
}
