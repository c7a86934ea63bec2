package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// TestRecoverableWindows checks the status view of catalog.RecoverableWindows
// (whose cases are in pkg/catalog): LSNs as text, a start time only where
// one is known.
func TestRecoverableWindows(t *testing.T) {
	const seg = 16 << 20
	stop := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	backup := catalog.Backup{ID: "b1", Status: catalog.StatusDone, StopTimeline: 1, StopLSN: 0x3000100, StopTime: stop}
	var objs []storage.ObjectInfo
	for _, n := range []string{"000000010000000000000003", "000000010000000000000004", "00000002.history",
		"000000020000000000000005", "000000020000000000000006.zst"} {
		objs = append(objs, storage.ObjectInfo{Name: "c/wals/" + n, Size: seg})
	}
	objs = append(objs, storage.ObjectInfo{Name: "c/wals/000000010000000000000005.partial", Size: 0x200})
	a := catalog.Archive{SegmentSize: seg, Backups: []catalog.Backup{backup}, WAL: catalog.IndexWAL(objs, "c/wals/", seg),
		Histories: map[wal.Timeline][]wal.HistoryEntry{2: {{Timeline: 1, SwitchPoint: 0x5000200}}}}
	assert.Equal(t, []timelineWindow{
		{Timeline: 1, From: "0/3000100", FromTime: &stop, To: "0/5000200"},
		{Timeline: 2, From: "0/5000200", To: "0/7000000"},
	}, recoverableWindows(a))
	assert.Equal(t, []timelineWindow{}, recoverableWindows(catalog.Archive{SegmentSize: seg, WAL: catalog.IndexWAL(objs, "c/wals/", seg)}))
}

func TestDescribeMasterError(t *testing.T) {
	cfg := config.Default()
	cfg.PGUser = "repl"
	refused := fmt.Errorf("connect: %w", &pgconn.PgError{Code: "28P01", Message: `password authentication failed for user "repl"`})
	got := describeMasterError(refused, cfg, "10.0.0.5:5432")
	assert.Contains(t, got, "refused to authenticate \"repl\"")
	assert.Contains(t, got, "--pg-password-file")
	assert.NotContains(t, got, "unreachable")

	cfg.PGUser = ""
	noHBA := &pgconn.PgError{Code: "28000", Message: `no pg_hba.conf entry for replication connection from host "10.0.0.9", user "root"`}
	assert.Contains(t, describeMasterError(noHBA, cfg, "10.0.0.5:5432"), "pg-user is not set")

	got = describeMasterError(errors.New("dial tcp 10.0.0.5:5432: connect: connection refused"), cfg, "10.0.0.5:5432")
	assert.Contains(t, got, "master at 10.0.0.5:5432 unreachable: dial tcp")
}

// status shows the newest drill and the newest successful one, each once
// when they are the same.
func TestStatusDrills(t *testing.T) {
	now := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	reached := now.Add(-3 * time.Hour)
	ok := catalog.Drill{ID: "d1", Node: "a1", Status: "done", BackupID: "b1", FinishedAt: now.Add(-2 * time.Hour),
		Reached: catalog.Position{Timeline: 1, LSN: 0x3000100}, ReachedTime: reached,
		Phases: catalog.DrillPhases{Restore: 20 * time.Second, Replay: 30 * time.Second, Check: 10 * time.Second}}
	bad := catalog.Drill{ID: "d2", Node: "a2", Status: "failed", FinishedAt: now.Add(-time.Hour), Error: "port in use"}

	last, lastOK := summarizeDrills([]catalog.Drill{bad, ok}, now)
	assert.Equal(t, &drillSummary{ID: "d2", Node: "a2", Status: "failed", FinishedAt: bad.FinishedAt, Age: "1h0m0s", RTO: "0s", Error: "port in use"}, last)
	assert.Equal(t, &drillSummary{ID: "d1", Node: "a1", Status: "done", BackupID: "b1", ReachedLSN: "0/3000100", ReachedTime: &reached,
		FinishedAt: ok.FinishedAt, Age: "2h0m0s", RTO: "1m0s"}, lastOK)

	var b strings.Builder
	assert.NoError(t, printArchiveStatus(&b, archiveStatus{LastDrill: last, LastSuccessfulDrill: lastOK}))
	assert.Contains(t, b.String(), "Last drill: d2 on a2, failed, 1h0m0s ago: port in use\n")
	assert.Contains(t, b.String(), "Last successful drill: d1 on a1, done, 2h0m0s ago: backup b1 restored to 0/3000100 (2026-11-24T14:00:00Z), RTO 1m0s\n")

	last, lastOK = summarizeDrills([]catalog.Drill{ok}, now)
	b.Reset()
	assert.NoError(t, printArchiveStatus(&b, archiveStatus{LastDrill: last, LastSuccessfulDrill: lastOK}))
	assert.Contains(t, b.String(), "Last drill: d1 on a1, done")
	assert.NotContains(t, b.String(), "Last successful drill")

	last, lastOK = summarizeDrills(nil, now)
	assert.Nil(t, last)
	assert.Nil(t, lastOK)
	b.Reset()
	assert.NoError(t, printArchiveStatus(&b, archiveStatus{}))
	assert.Contains(t, b.String(), "Last drill: none\nLast successful drill: none\n")
}
