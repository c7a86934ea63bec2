package catalog

import (
	"context"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Drill is one restore drill's record, drills/<id>.json in the archive
// (docs/design.md §2): which backup was restored, how far the restored
// server got, what was checked and how long each phase took. The archive
// keeps it so that status, check and the metrics know the last proven
// point after an agent restarts, without etcd.
//
// SKELETON (drill-base branch): the drill-core helper fills in the bodies
// and may add fields; the drill-surface helper builds on these names.
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

// DrillPhases are a drill's phase durations.
type DrillPhases struct {
	Restore time.Duration `json:"restoreNs"`
	Replay  time.Duration `json:"replayNs"`
	Check   time.Duration `json:"checkNs"`
}

// DrillsPrefix is the prefix of the cluster's drill records.
func DrillsPrefix(cluster string) string { return cluster + "/drills/" }

// WriteDrill stores d as drills/<d.ID>.json (write-if-absent).
func WriteDrill(ctx context.Context, b storage.Backend, cluster string, d Drill) error {
	panic("catalog.WriteDrill: skeleton")
}

// ListDrills returns the recorded drills, oldest first.
func ListDrills(ctx context.Context, b storage.Backend, cluster string) ([]Drill, error) {
	panic("catalog.ListDrills: skeleton")
}

var _ = wal.InvalidLSN
