package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
)

// TestLocalBackupSlots: backup --local streams through a temporary slot of
// its own unless a slot is configured, so two at once both finish and no
// slot is left to pin WAL; a configured slot that another process holds
// fails the backup before anything is copied.
func TestLocalBackupSlots(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	// No WAL kept beyond what slots hold, so that WAL the archive lacks
	// can be made to disappear from the server (the gap case below).
	pg := testenv.NewCluster(t, testenv.ClusterOptions{WALKeepSize: "0", Params: map[string]string{"min_wal_size": "'32MB'", "max_wal_size": "'64MB'"}})
	primary := pg.Primary()
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200000) g"))
	archive := archiveDir(t)
	pw := pg.ReplPasswordFile(t)
	args := func(extra ...string) []string {
		return append(extra, "--cluster-name", cluster, "--archive-url", "file://"+archive,
			"--pg-host", "127.0.0.1", "--pg-port", fmt.Sprint(primary.Port),
			"--pg-user", testenv.ReplUser, "--pg-password-file", pw)
	}
	be, err := fs.New(archive, fs.Options{})
	require.NoError(t, err)

	// Two at once, default slot settings.
	first := startBarnacle(t, args("backup", "--local", "--fast", "--json", "--label", "one")...)
	second := startBarnacle(t, args("backup", "--local", "--fast", "--json", "--label", "two")...)
	for _, p := range []*barnacleProc{first, second} {
		code := p.wait(t, 3*time.Minute)
		require.Equal(t, 0, code, "backup --local: %s", p.stderr())
		var doc catalog.Backup
		require.NoError(t, json.Unmarshal([]byte(p.stdout()), &doc), p.stdout())
		assert.Equal(t, catalog.StatusDone, doc.Status)
		wc, err := catalog.CheckBackupWAL(ctx, be, cluster, doc)
		require.NoError(t, err)
		assert.Empty(t, wc.Missing, "backup %s has its WAL archived", doc.ID)
	}
	list, err := catalog.ListBackups(ctx, be, cluster)
	require.NoError(t, err)
	require.Len(t, list, 2)
	slots, err := primary.QueryInt64(ctx, "SELECT count(*) FROM pg_replication_slots")
	require.NoError(t, err)
	assert.Zero(t, slots, "no slot is left behind to pin WAL")

	// A configured slot that another process streams from.
	holder, err := pgconn.Connect(ctx, primary.ReplConnString())
	require.NoError(t, err)
	t.Cleanup(func() { _ = holder.Close(ctx) })
	_, err = holder.Exec(ctx, "CREATE_REPLICATION_SLOT held PHYSICAL RESERVE_WAL").ReadAll()
	require.NoError(t, err)
	sys, err := pglogrepl.IdentifySystem(ctx, holder)
	require.NoError(t, err)
	require.NoError(t, pglogrepl.StartReplication(ctx, holder, "held", sys.XLogPos, pglogrepl.StartReplicationOptions{Mode: pglogrepl.PhysicalReplication}))
	start := time.Now()
	_, stderr, code := barnacle(t, args("backup", "--local", "--fast", "--slot-name", "held")...)
	took := time.Since(start)
	assert.Equal(t, 1, code, stderr)
	assert.Contains(t, stderr, "replication slot held (nothing copied)")
	assert.Contains(t, stderr, "is active")
	list, err = catalog.ListBackups(ctx, be, cluster)
	require.NoError(t, err)
	assert.Len(t, list, 2, "no backup document for the refused backup")
	t.Logf("busy slot refused in %s: %s", took.Round(time.Millisecond), stderr)

	// Nothing archived WAL since those backups, and the server has
	// recycled it: the next backup records the range as a gap and is
	// done, since it needs only WAL from its own start.
	for i := 0; i < 6; i++ {
		require.NoError(t, primary.Exec(ctx, "INSERT INTO t VALUES (0, 'x')"))
		_, err := primary.QueryString(ctx, "SELECT pg_switch_wal()::text")
		require.NoError(t, err)
	}
	require.NoError(t, primary.Exec(ctx, "CHECKPOINT"))
	require.NoError(t, primary.Exec(ctx, "CHECKPOINT"))
	out, stderr, code := barnacle(t, args("backup", "--local", "--fast", "--json")...)
	require.Equal(t, 0, code, "backup --local after recycled WAL: %s", stderr)
	var doc catalog.Backup
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	assert.Equal(t, catalog.StatusDone, doc.Status)
	gaps, err := catalog.ReadGaps(ctx, be, cluster)
	require.NoError(t, err)
	require.Len(t, gaps, 1, "the missing range is recorded")
	assert.Contains(t, gaps[0].Reason, "backup --local")
	wc, err := catalog.CheckBackupWAL(ctx, be, cluster, doc)
	require.NoError(t, err)
	assert.Empty(t, wc.Missing)
	t.Logf("gap %s..%s recorded; backup %s done", gaps[0].StartLSN, gaps[0].EndLSN, doc.ID)
}
