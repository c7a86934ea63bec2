package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Gap is a range of WAL that the archive lacks for good: the server had
// already removed it when barnacle asked for it. Recovery cannot cross a
// gap; only a base backup taken after it makes later points recoverable.
type Gap struct {
	Timeline   wal.Timeline `json:"timeline"`
	StartLSN   wal.LSN      `json:"startLSN"` // first missing byte
	EndLSN     wal.LSN      `json:"endLSN"`   // first byte available again
	Bytes      uint64       `json:"bytes"`
	DetectedAt time.Time    `json:"detectedAt"`
	Reason     string       `json:"reason"`
}

// gapsDoc is gaps.json.
type gapsDoc struct {
	Gaps []Gap `json:"gaps"`
}

// ReadGaps returns the recorded gaps, oldest first; none when gaps.json does
// not exist.
func ReadGaps(ctx context.Context, b storage.Backend, cluster string) ([]Gap, error) {
	name := GapsObject(cluster)
	data, err := storage.ReadAll(ctx, b, name)
	if errors.Is(err, storage.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	var doc gapsDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("decode %s: %w", name, err)
	}
	return doc.Gaps, nil
}

// RecordGap appends g to gaps.json unless the same range is already
// recorded. Only the leader calls it, so read-modify-write with an atomic
// replace is enough.
func RecordGap(ctx context.Context, b storage.Backend, cluster string, g Gap) error {
	start, end := g.StartLSN, g.EndLSN
	if start == wal.InvalidLSN {
		return errors.New("gap start: no LSN")
	}
	if end <= start {
		return fmt.Errorf("gap %s..%s is empty", g.StartLSN, g.EndLSN)
	}
	g.Bytes = uint64(end - start)
	if g.DetectedAt.IsZero() {
		g.DetectedAt = time.Now().UTC()
	}
	gaps, err := ReadGaps(ctx, b, cluster)
	if err != nil {
		return err
	}
	for _, have := range gaps {
		if have.Timeline == g.Timeline && have.StartLSN == g.StartLSN && have.EndLSN == g.EndLSN {
			return nil
		}
	}
	data, err := json.MarshalIndent(gapsDoc{Gaps: append(gaps, g)}, "", "  ")
	if err != nil {
		return err
	}
	name := GapsObject(cluster)
	if err := b.Put(ctx, name, bytes.NewReader(append(data, '\n')), storage.PutOptions{}); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// ResolvedBy returns the oldest done backup that starts at or after the
// gap's end, on its timeline or a later one: from that backup on, the
// points after the gap are recoverable, and the gap is history (it stays
// in gaps.json; only the points inside it are lost). backups may be in any
// order. A gap whose end is unknown is never resolved.
func (g Gap) ResolvedBy(backups []Backup) (Backup, bool) {
	var found Backup
	ok := false
	if g.EndLSN == wal.InvalidLSN {
		return found, false
	}
	for _, d := range backups {
		if d.Status != StatusDone || d.StartLSN == wal.InvalidLSN || d.StartTimeline < g.Timeline || d.StartLSN < g.EndLSN {
			continue
		}
		if !ok || d.StartTimeline < found.StartTimeline || (d.StartTimeline == found.StartTimeline && d.StartLSN < found.StartLSN) {
			found, ok = d, true
		}
	}
	return found, ok
}

// UnresolvedGaps returns the gaps, oldest first, that no done backup
// resolves yet (Gap.ResolvedBy): the ones that still need a new base
// backup. The gap gauges and the leader's alarm count these.
func UnresolvedGaps(gaps []Gap, backups []Backup) []Gap {
	var out []Gap
	for _, g := range gaps {
		if _, ok := g.ResolvedBy(backups); !ok {
			out = append(out, g)
		}
	}
	return out
}
