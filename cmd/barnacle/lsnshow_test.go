package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
)

// TestShowRunningBackupPositions: a running backup has no positions yet,
// and show-backup prints none (not PostgreSQL's invalid 0/0).
func TestShowRunningBackupPositions(t *testing.T) {
	var out bytes.Buffer
	b := catalog.Backup{ID: "20261206T110000Z", Status: catalog.StatusRunning, StartTime: time.Date(2026, 12, 6, 11, 0, 0, 0, time.UTC)}
	require.NoError(t, printBackup(&out, backupDetail{Backup: b}))
	assert.Contains(t, out.String(), "Start:        2026-12-06T11:00:00Z at , timeline 0\n")
	assert.NotContains(t, out.String(), "0/0")
}
