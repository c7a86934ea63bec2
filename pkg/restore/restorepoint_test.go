package restore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// TestLocateRestorePoint finds a restore point in WAL that PostgreSQL 15
// wrote, archived in a file archive; refuses a name that is not there with
// the range searched; and fails, naming the segment, when the WAL cannot
// be read, instead of saying "not found". It logs the scan speed.
func TestLocateRestorePoint(t *testing.T) {
	const segSize = 1 << 20
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	c := testenv.NewCluster(t, testenv.ClusterOptions{WALSegmentSizeMB: 1})
	pg := c.Primary()
	lsnOf := func(sql string) wal.LSN {
		t.Helper()
		s, err := pg.QueryString(ctx, sql)
		require.NoError(t, err, sql)
		l, err := wal.ParseLSN(s)
		require.NoError(t, err)
		return l
	}
	start := lsnOf("SELECT pg_current_wal_insert_lsn()::text")
	require.NoError(t, pg.Exec(ctx, "CREATE TABLE t (id int, pad text)"))
	require.NoError(t, pg.Exec(ctx, "INSERT INTO t SELECT i, repeat('x', 100) FROM generate_series(1, 200000) i"))
	xid, err := pg.QueryString(ctx, "SELECT xmin::text FROM t LIMIT 1")
	require.NoError(t, err)
	rpEnd := lsnOf("SELECT pg_create_restore_point('before_upgrade')::text")
	require.NoError(t, pg.Exec(ctx, "INSERT INTO t SELECT i, repeat('x', 100) FROM generate_series(1, 1000) i"))
	switchEnd := lsnOf("SELECT pg_switch_wal()::text")

	dir := t.TempDir()
	b, err := fs.New(dir, fs.Options{})
	require.NoError(t, err)
	prefix := catalog.WALPrefix("c")
	last := wal.SegmentOf(switchEnd-1, segSize)
	var stored int64
	for seg := wal.SegmentOf(start, segSize); seg <= last; seg++ {
		name := wal.SegmentFileName(1, seg, segSize)
		data, err := os.ReadFile(filepath.Join(pg.DataDir, "pg_wal", name))
		require.NoError(t, err)
		require.NoError(t, b.Put(ctx, prefix+name, bytes.NewReader(data), storage.PutOptions{}))
		stored += int64(len(data))
	}
	archive := func() catalog.Archive {
		objs, err := b.List(ctx, prefix)
		require.NoError(t, err)
		return catalog.Archive{Cluster: "c", SegmentSize: segSize, WAL: catalog.IndexWAL(objs, prefix, segSize),
			Backups: []catalog.Backup{{ID: "20261125T020000", Status: catalog.StatusDone, StopLSN: start, StopTimeline: 1}}}
	}

	began := time.Now()
	found, ok, err := locateTarget(ctx, b, archive(), Target{Kind: TargetName, Name: "before_upgrade"}, TimelineTarget{})
	require.NoError(t, err)
	require.True(t, ok)
	// pg_create_restore_point returns the record's end; the record (98
	// bytes, 104 aligned) starts just before it, a page header between
	// them at most.
	assert.True(t, found < rpEnd && rpEnd-found <= 104+24, "record at %s, pg_create_restore_point returned %s", found, rpEnd)

	// The big INSERT's commit comes before the restore point.
	commit, ok, err := locateTarget(ctx, b, archive(), Target{Kind: TargetXID, XID: xid}, TimelineTarget{})
	require.NoError(t, err)
	require.True(t, ok)
	assert.True(t, commit > start && commit < found, "commit of xid %s at %s", xid, commit)
	_, _, err = locateTarget(ctx, b, archive(), Target{Kind: TargetXID, XID: "4000000000"}, TimelineTarget{})
	require.ErrorIs(t, err, ErrNotInWAL)
	assert.Contains(t, err.Error(), "target xid 4000000000 (--target-xid; target.xid in a restore request): no commit or abort of that transaction")

	began = time.Now()
	_, _, err = locateTarget(ctx, b, archive(), Target{Kind: TargetName, Name: "before_upgrad"}, TimelineTarget{})
	took := time.Since(began)
	var nr *NotInWALError
	require.ErrorAs(t, err, &nr)
	assert.True(t, IsRejected(err))
	assert.Equal(t, start, nr.From)
	assert.Equal(t, wal.SegmentStart(last+1, segSize), nr.To)
	assert.Contains(t, err.Error(), `target name "before_upgrad" (--target-name; target.name in a restore request)`)
	t.Logf("%v", err)
	t.Logf("scanned %.1f MB of WAL from a file archive in %s: %.0f MB/s", float64(stored)/1e6, took, float64(stored)/1e6/took.Seconds())

	t.Run("damaged segment", func(t *testing.T) {
		name := wal.SegmentFileName(1, wal.SegmentOf(start, segSize)+2, segSize)
		testenv.FlipByte(t, filepath.Join(dir, prefix, name), 5000)
		_, _, err := locateTarget(ctx, b, archive(), Target{Kind: TargetName, Name: "before_upgrad"}, TimelineTarget{})
		require.Error(t, err)
		assert.False(t, errors.Is(err, ErrNotInWAL), "%v", err)
		assert.False(t, IsRejected(err), "a read error is no refusal: %v", err)
		assert.Contains(t, err.Error(), name)
		t.Logf("%v", err)
		testenv.FlipByte(t, filepath.Join(dir, prefix, name), 5000) // back
	})
	t.Run("missing segment", func(t *testing.T) {
		name := wal.SegmentFileName(1, wal.SegmentOf(start, segSize)+3, segSize)
		require.NoError(t, b.Delete(ctx, prefix+name))
		_, _, err := locateTarget(ctx, b, archive(), Target{Kind: TargetName, Name: "before_upgrade"}, TimelineTarget{})
		require.Error(t, err)
		assert.False(t, errors.Is(err, ErrNotInWAL), "%v", err)
		assert.Contains(t, err.Error(), name)
		t.Logf("%v", err)
	})
}
