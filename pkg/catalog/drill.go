package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// Drill is one restore drill's record, drills/<id>.json in the archive
// (docs/design.md §2): which backup was restored, how far the restored
// server got, what was checked and how long each phase took. The archive
// keeps it so that status, check and the metrics know the last proven
// point after an agent restarts, without etcd.
type Drill struct {
	ID       string `json:"id"`
	Node     string `json:"node"`               // the host (agent) that ran it
	BackupID string `json:"backupID,omitempty"` // "" when no backup could be chosen
	// Promised is where the archive said recovery can reach when the drill
	// began (the end of the newest recoverable window); Reached is where
	// the restored server's replay ended, ReachedTime the commit time of
	// the last transaction it replayed (zero when none).
	Promised    Position  `json:"promised"`
	Reached     Position  `json:"reached"`
	ReachedTime time.Time `json:"reachedTime,omitzero"`
	StartedAt   time.Time `json:"startedAt"`
	FinishedAt  time.Time `json:"finishedAt"`
	// Phases are the wall times of fetch+unpack (restore), replay and
	// check; RTO is their sum as the operator would have waited.
	Phases DrillPhases `json:"phases"`
	// Checked is what pg_amcheck verified (relations), Bytes the restored size.
	Checked int   `json:"checkedRelations"`
	Bytes   int64 `json:"bytes"`
	// Status is "done" or "failed"; Error says why a drill failed.
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
}

// Drill statuses.
const (
	DrillDone   = "done"
	DrillFailed = "failed"
)

// DrillPhases are a drill's phase durations.
type DrillPhases struct {
	Restore time.Duration `json:"restoreNs"`
	Replay  time.Duration `json:"replayNs"`
	Check   time.Duration `json:"checkNs"`
}

// RTO is the time an operator restoring this way would have waited:
// the sum of the phases.
func (p DrillPhases) RTO() time.Duration { return p.Restore + p.Replay + p.Check }

// DrillsPrefix is the prefix of the cluster's drill records.
func DrillsPrefix(cluster string) string { return cluster + "/drills/" }

// DrillObject is drill id's record.
func DrillObject(cluster, id string) string { return DrillsPrefix(cluster) + id + ".json" }

// ErrInvalidDrillID is returned for a drill ID that cannot name an object.
var ErrInvalidDrillID = errors.New("invalid drill ID")

// maxDrillIDLen bounds a drill ID: it names a directory and an object.
const maxDrillIDLen = 100

// CheckDrillID refuses an ID that could not name drills/<id>.json and a
// scratch directory safely: empty, too long, starting with '.' (the
// backends' temporary names), or with a character other than ASCII
// letters, digits, '-', '_' and '.'.
func CheckDrillID(id string) error {
	if id == "" || len(id) > maxDrillIDLen || id[0] == '.' ||
		strings.IndexFunc(id, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
		}) >= 0 {
		return fmt.Errorf("%w %q: use 1 to %d ASCII letters, digits, '-', '_' or '.', not starting with '.'", ErrInvalidDrillID, id, maxDrillIDLen)
	}
	return nil
}

// WriteDrill stores d as drills/<d.ID>.json (write-if-absent): a record,
// once written, is never replaced, so an ID used twice is an error
// (wrapping storage.ErrExist) and the first record stays.
func WriteDrill(ctx context.Context, b storage.Backend, cluster string, d Drill) error {
	if err := CheckDrillID(d.ID); err != nil {
		return fmt.Errorf("write drill: %w", err)
	}
	switch d.Status {
	case DrillDone, DrillFailed:
	default:
		return fmt.Errorf("write drill %s: invalid status %q", d.ID, d.Status)
	}
	data, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	name := DrillObject(cluster, d.ID)
	if err := b.Put(ctx, name, bytes.NewReader(append(data, '\n')), storage.PutOptions{IfAbsent: true}); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// ListDrills returns the recorded drills, oldest first (by StartedAt, then
// ID). Objects under drills/ whose name does not end in .json are ignored;
// a record that cannot be read or decoded is an error naming the object,
// as is one whose id is not its name.
func ListDrills(ctx context.Context, b storage.Backend, cluster string) ([]Drill, error) {
	prefix := DrillsPrefix(cluster)
	objs, err := b.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("list drills: %w", err)
	}
	drills := []Drill{}
	for _, o := range objs {
		id, ok := strings.CutSuffix(strings.TrimPrefix(o.Name, prefix), ".json")
		if !ok || strings.Contains(id, "/") {
			continue
		}
		data, err := storage.ReadAll(ctx, b, o.Name)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", o.Name, err)
		}
		var d Drill
		if err := json.Unmarshal(data, &d); err != nil {
			return nil, fmt.Errorf("decode %s: %w", o.Name, err)
		}
		if d.ID != id {
			return nil, fmt.Errorf("%s names drill %q", o.Name, d.ID)
		}
		drills = append(drills, d)
	}
	slices.SortFunc(drills, func(a, b Drill) int {
		if c := a.StartedAt.Compare(b.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return drills, nil
}

// LastSuccessfulDrill returns the drill with status done that finished
// last, and false when none succeeded.
func LastSuccessfulDrill(drills []Drill) (Drill, bool) {
	var last Drill
	found := false
	for _, d := range drills {
		if d.Status == DrillDone && (!found || d.FinishedAt.After(last.FinishedAt)) {
			last, found = d, true
		}
	}
	return last, found
}
