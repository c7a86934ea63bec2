package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

// TestRestoreRequestTablespaceFence: a backup of a cluster with a
// tablespace outside restore-root, restored through etcd requests that
// do not map it, puts the tablespace below restore-root (beside the
// target), never at the location the backup recorded, even once that
// location is free and even when backup.json's tablespaceLocation was
// edited; a map outside restore-root is rejected. Before, the first two
// restores ended done and wrote into the recorded (or edited) location.
func TestRestoreRequestTablespaceFence(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	restoreRoot := filepath.Join(t.TempDir(), "restores")
	require.NoError(t, os.MkdirAll(restoreRoot, 0o755))
	env := newArchiveEnv(t, testenv.ClusterOptions{}, "--restore-root", restoreRoot)
	shareArchiveWithPostgres(t, env.dir)
	primary := env.pg.Primary()
	tsDir, oid := createTablespace(t, primary, "ts1")
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE ts_data TABLESPACE ts1 AS SELECT g AS id FROM generate_series(1, 5000) g"))
	env.startAgents()
	env.leaderFor(primary)
	keeper := env.stolon.KeeperUID(primary)
	store := env.store()

	bst := backupWait(t, store...)
	backupID := bst.Result.ID

	// The recorded location becomes free: what made a restore write
	// there before.
	require.NoError(t, primary.Exec(ctx, "DROP TABLE ts_data"))
	require.NoError(t, primary.Exec(ctx, "DROP TABLESPACE ts1"))
	require.Empty(t, dirListing(t, tsDir))
	require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
	env.waitArchived(primary, 60*time.Second)

	cli := env.etcd.Client(t)
	keys := coordinator.NewKeys("barnacle", cluster)
	restoreReq := func(id, value string) request.RestoreStatus {
		t.Helper()
		_, err := cli.Put(ctx, reqKeys(keys).Request(request.KindRestore, id), value)
		require.NoError(t, err)
		return waitRestoreStatus(t, cli, keys, id)
	}
	oidDir := strconv.FormatInt(oid, 10)

	// No tablespaceMap: below restore-root, beside the target, and the
	// restored server finds its rows there.
	dir := filepath.Join(restoreRoot, "r1")
	st := restoreReq("r1", fmt.Sprintf(`{"keeper":%q,"backup":%q,"targetDir":%q,"target":{"immediate":true},"targetAction":"promote"}`, keeper, backupID, dir))
	require.Equal(t, request.StateDone, st.State, st.Error)
	assert.Equal(t, dir, st.Result.TargetDir)
	assert.Empty(t, dirListing(t, tsDir), "nothing written at the recorded location")
	tsRestored := filepath.Join(restoreRoot, "r1.tablespaces", oidDir)
	assert.NotEmpty(t, dirListing(t, tsRestored))
	n := testenv.StartRestored(t, dir)
	waitFor(t, 60*time.Second, "recovery to end", func() bool {
		in, err := n.IsInRecovery(ctx)
		return err == nil && !in
	})
	rows, err := n.QueryInt64(ctx, "SELECT count(*) FROM ts_data")
	require.NoError(t, err)
	assert.Equal(t, int64(5000), rows)
	loc, err := n.QueryString(ctx, "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'")
	require.NoError(t, err)
	assert.Equal(t, tsRestored, loc)
	require.NoError(t, n.Stop())

	// backup.json's tablespaceLocation edited by someone who may write
	// into the archive: still below restore-root.
	doc, err := catalog.ReadBackup(ctx, env.backend, cluster, backupID)
	require.NoError(t, err)
	edited := filepath.Join(t.TempDir(), "edited")
	require.NoError(t, os.Mkdir(edited, 0o700))
	for i := range doc.Files {
		if doc.Files[i].TablespaceOID != 0 {
			doc.Files[i].TablespaceLocation = edited
		}
	}
	require.NoError(t, catalog.PutBackup(ctx, env.backend, cluster, doc))
	st = restoreReq("r2", fmt.Sprintf(`{"keeper":%q,"backup":%q,"targetDir":%q,"dataOnly":true}`, keeper, backupID, filepath.Join(restoreRoot, "r2")))
	require.Equal(t, request.StateDone, st.State, st.Error)
	assert.Empty(t, dirListing(t, edited), "nothing written at the edited location")
	assert.NotEmpty(t, dirListing(t, filepath.Join(restoreRoot, "r2.tablespaces", oidDir)))

	// Directories outside restore-root: by name, through "..", through a
	// symbolic link under it, or relative; each is rejected and nothing
	// is written.
	outside := t.TempDir()
	require.NoError(t, os.Symlink(outside, filepath.Join(restoreRoot, "link")))
	for _, tc := range []struct{ id, targetDir, ts, want string }{
		{"r3", filepath.Join(restoreRoot, "r3"), filepath.Join(outside, "ts"), "outside restore-root"},
		{"r4", filepath.Join(restoreRoot, "r4"), filepath.Join(restoreRoot, "link", "ts"), "outside restore-root"},
		{"r5", restoreRoot + "/../" + filepath.Base(restoreRoot) + "-escape", "", "outside restore-root"},
		{"r6", filepath.Join(restoreRoot, "link", "r6"), "", "outside restore-root"},
		{"r7", "relative/r7", "", "use an absolute path"},
	} {
		tsMap := ""
		if tc.ts != "" {
			tsMap = fmt.Sprintf(`,"tablespaceMap":{%q:%q}`, oidDir, tc.ts)
		}
		st = restoreReq(tc.id, fmt.Sprintf(`{"keeper":%q,"backup":%q,"targetDir":%q,"dataOnly":true%s}`, keeper, backupID, tc.targetDir, tsMap))
		assert.Equal(t, request.StateRejected, st.State, tc.id)
		assert.Contains(t, st.Error, tc.want, tc.id)
	}
	assert.Empty(t, dirListing(t, outside))
	assert.NoDirExists(t, restoreRoot+"-escape")
}
