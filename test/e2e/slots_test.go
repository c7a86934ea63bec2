package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func slotState(t *testing.T, n *testenv.Node, slot string) (exists, active bool) {
	t.Helper()
	s, err := n.QueryString(t.Context(), fmt.Sprintf(
		"select coalesce((select active::text from pg_replication_slots where slot_name = '%s'), 'none')", slot))
	if err != nil {
		return false, false
	}
	return s != "none", s == "true"
}

// TestStolonSlotMode: with slot-mode stolon the leader streams through the
// stolon_<name> slot that Stolon's keeper creates on every master from
// additionalMasterReplicationSlots (without reserved WAL), waiting for it,
// and follows a failover to the slot Stolon recreates on the new master.
func TestStolonSlotMode(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1}, "--slot-mode", "stolon", "--compression", "zstd")
	env.startAgents()
	primary, standby := env.pg.Primary(), env.pg.Standbys()[0]
	env.leaderFor(primary)

	// No stolon_barnacle yet: the leader waits and retries, creating
	// nothing itself (a stolon_ slot it made would be dropped by the keeper).
	time.Sleep(2 * time.Second)
	exists, _ := slotState(t, primary, "stolon_barnacle")
	require.False(t, exists, "barnacle must not create stolon_ slots itself")
	require.NoError(t, env.stolon.SetAdditionalMasterSlots(ctx, []string{"barnacle"}))
	waitFor(t, 20*time.Second, "streaming through stolon_barnacle", func() bool {
		_, active := slotState(t, primary, "stolon_barnacle")
		return active
	})
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 10000)"))
	require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
	env.waitArchived(primary, 20*time.Second)
	// The follower keeps its slot on the standby without the stolon_
	// prefix, which the keeper would drop there.
	waitFor(t, 15*time.Second, "the standby slot", func() bool {
		exists, _ := slotState(t, standby, "barnacle")
		return exists
	})

	require.NoError(t, primary.Kill())
	require.NoError(t, env.stolon.Failover(ctx, standby))
	env.leaderFor(standby)
	waitFor(t, 20*time.Second, "streaming through the new master's stolon_barnacle", func() bool {
		_, active := slotState(t, standby, "stolon_barnacle")
		return active
	})
	require.NoError(t, standby.Exec(ctx, "INSERT INTO t SELECT generate_series(1, 10000)"))
	env.waitArchived(standby, 20*time.Second)
	waitFor(t, 15*time.Second, "the old standby slot to be dropped on the new master", func() bool {
		exists, _ := slotState(t, standby, "barnacle")
		return !exists
	})
	a := listWAL(t, env.backend)
	requireContiguous(t, a, 1)
	requireContiguous(t, a, 2)
	require.True(t, a.histories["00000002.history"])
	objs, err := env.backend.List(ctx, catalog.WALPrefix(cluster))
	require.NoError(t, err)
	zst := 0
	for _, o := range objs {
		if strings.HasSuffix(o.Name, ".zst") {
			zst++
		}
	}
	require.Positive(t, zst, "complete segments are stored zstd-compressed")
	gaps, err := catalog.ReadGaps(ctx, env.backend, cluster)
	require.NoError(t, err)
	require.Empty(t, gaps)
}

// TestSynchronousMode: with synchronous on, the agent reports each write
// at once, so the master can list it (application_name barnacle) in
// synchronous_standby_names and commits wait for the archive.
func TestSynchronousMode(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{}, "--synchronous")
	primary := env.pg.Primary()
	// After the harness set the cluster up: its own commits would wait.
	require.NoError(t, primary.Exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = 'barnacle'"))
	require.NoError(t, primary.Exec(ctx, "SELECT pg_reload_conf()"))
	env.startAgents()
	env.leaderFor(primary)
	waitFor(t, 20*time.Second, "barnacle to be the synchronous standby", func() bool {
		s, err := primary.QueryString(ctx, "select coalesce((select sync_state from pg_stat_replication where application_name = 'barnacle'), '')")
		return err == nil && s == "sync"
	})
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE t (v int)"))
	start := time.Now()
	const commits = 50
	for i := range commits {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		require.NoError(t, primary.Exec(cctx, "INSERT INTO t VALUES ($1)", i), "commit %d waits for the archive", i)
		cancel()
	}
	perCommit := time.Since(start) / commits
	// A synchronous commit returned, so the archive holds its WAL now.
	cur, err := primary.CurrentLSN(ctx)
	require.NoError(t, err)
	end := archiveEnd(t, env.backend)
	require.GreaterOrEqual(t, end, wal.LSN(cur)-wal.LSN(1024), "archive end %s is behind the last synchronous commit at %s", end, wal.LSN(cur))
	t.Logf("%d synchronous commits, %s each on average; archive end %s, server at %s", commits, perCommit.Round(time.Microsecond), end, wal.LSN(cur))
}
