package e2e

import (
	"io"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/drill"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/restore"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// TestDrillPromisedFromNewestBackup: with a recorded gap between an older
// backup and the newest one, the drill (which restores the newest) is
// promised the end of the WAL after the newest backup, not the start of
// the gap that ends the older backup's window.
func TestDrillPromisedFromNewestBackup(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env, _, primary := newPostgresReadableEnv(t)
	store := env.store()
	backup := func() request.BackupResult { return *backupWait(t, store...).Result }
	lsn := func() wal.LSN {
		s, err := primary.QueryString(ctx, "SELECT pg_current_wal_lsn()::text")
		require.NoError(t, err)
		l, err := wal.ParseLSN(s)
		require.NoError(t, err)
		return l
	}

	require.NoError(t, primary.Exec(ctx, "CREATE TABLE promised (id int)"))
	older := backup()
	// A gap the archive records after the older backup (the WAL is
	// there, but the catalog counts it lost, as after a lost slot).
	start := lsn()
	require.NoError(t, primary.Exec(ctx, "INSERT INTO promised SELECT generate_series(1, 1000)"))
	require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
	require.NoError(t, catalog.RecordGap(ctx, env.backend, cluster, catalog.Gap{
		Timeline: 1, StartLSN: start, EndLSN: lsn(), DetectedAt: time.Now().UTC(), Reason: "test",
	}))
	newest := backup()
	require.NotEqual(t, older.ID, newest.ID)
	require.NoError(t, primary.Exec(ctx, "INSERT INTO promised SELECT generate_series(1001, 2000)"))
	last := lsn()
	require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
	env.waitArchived(primary, 60*time.Second)
	for _, a := range env.list() {
		stopAgent(t, a)
	}

	root := scratchRoot(t, "restores")
	var owner *restore.Owner
	if cred := postgresCredential(t); cred != nil {
		owner = &restore.Owner{UID: int(cred.Uid), GID: int(cred.Gid)}
	}
	d, err := drill.Run(ctx, drill.Options{
		ID: "promised", Node: "test-node", Backend: env.backend, Cluster: cluster,
		ArchiveURL: "file://" + env.dir, Executable: binary,
		ScratchRoot: root, PGBinDir: testenv.PGBinDir(t), Owner: owner,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Debug, Output: io.Writer(testWriter{t})}),
	})
	require.NoError(t, err, "drill: %+v", d)
	assert.Equal(t, newest.ID, d.BackupID)
	assert.True(t, d.Promised.Reached(catalog.Position{Timeline: 1, LSN: last}),
		"promised %+v covers the WAL written after the newest backup (%s)", d.Promised, last)
	assert.True(t, d.Reached.Reached(d.Promised), "reached %+v, promised %+v", d.Reached, d.Promised)
	requireEmptyDir(t, root)
}
