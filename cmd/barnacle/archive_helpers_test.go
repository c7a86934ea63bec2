package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// testSegSize is the WAL segment size of the test archives.
const testSegSize = 16 << 20

// newTestArchive is an empty file:// archive of cluster c1 with its
// identity written; it returns the archive's root and backend.
func newTestArchive(t *testing.T) (string, *fs.Backend) {
	t.Helper()
	root := t.TempDir()
	b, err := fs.New(root, fs.Options{})
	require.NoError(t, err)
	_, err = catalog.EnsureIdentity(t.Context(), b, catalog.Identity{Cluster: "c1", SystemID: "7711797878400204491", WALSegmentSize: testSegSize})
	require.NoError(t, err)
	return root, b
}

// testBackup is the document of a done backup named id (its start time)
// on timeline 1 that starts in segment startSeg and stops in the next.
func testBackup(t *testing.T, id string, startSeg uint64) catalog.Backup {
	t.Helper()
	start, _, err := catalog.ParseBackupID(id)
	require.NoError(t, err)
	return catalog.Backup{ID: id, Status: catalog.StatusDone, StartLSN: wal.LSN(startSeg*testSegSize + 40),
		StopLSN: wal.LSN((startSeg+1)*testSegSize + 0x100), StartTimeline: 1, StopTimeline: 1,
		StartTime: start, StopTime: start.Add(time.Minute), WALSegmentSize: testSegSize}
}

// putTestBackup writes testBackup's document with a base.tar holding id.
func putTestBackup(t *testing.T, b storage.Backend, id string, startSeg uint64) {
	t.Helper()
	ctx := t.Context()
	require.NoError(t, b.Put(ctx, catalog.BackupPrefix("c1", id)+"base.tar", strings.NewReader(id), storage.PutOptions{}))
	require.NoError(t, catalog.PutBackup(ctx, b, "c1", testBackup(t, id, startSeg)))
}

// putTestWAL archives the timeline 1 segments from to to, each holding
// its own name.
func putTestWAL(t *testing.T, b storage.Backend, from, to wal.SegmentNo) {
	t.Helper()
	for n := from; n <= to; n++ {
		name := wal.SegmentFileName(1, n, testSegSize)
		require.NoError(t, b.Put(t.Context(), catalog.WALPrefix("c1")+name, strings.NewReader(name), storage.PutOptions{}))
	}
}
