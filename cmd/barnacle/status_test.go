package main

import (
	"errors"
	"fmt"
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
