package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

// TestDrillStopsOnFailover: a drill runs beside a standby; a failover
// makes that standby the master while the drill replays (its server held
// with SIGSTOP, so it is in replay for certain). The drill stops at once,
// failed with a reason that says what to do, and leaves nothing behind.
func TestDrillStopsOnFailover(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newDrillEnv(t)
	primary, standby, root := env.pg.Primary(), env.pg.Standbys()[0], env.root
	store := env.store()
	cli := env.etcd.Client(t)
	keys := request.Keys{Prefix: coordinator.NewKeys("barnacle", cluster).Prefix}

	backupWait(t, store...)
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE filler AS SELECT g AS id, repeat('x', 500) AS pad FROM generate_series(1, 200000) g"))
	env.waitArchived(primary, 2*time.Minute)

	drillState := requestHeldDrill(t, cli, keys, store, root).status
	st, ok := drillState()
	require.True(t, ok)
	require.Equal(t, request.StateRunning, st.State)

	require.NoError(t, env.stolon.Failover(ctx, standby))
	waitFor(t, 90*time.Second, "the drill to stop after the failover", func() bool {
		st, ok = drillState()
		return ok && st.State.Final()
	})
	require.Equal(t, request.StateFailed, st.State)
	assert.Contains(t, st.Error, "keeper became the master during the drill")
	assert.Contains(t, st.Error, "request the drill again")
	require.NotNil(t, st.Result)
	assert.Equal(t, catalog.DrillFailed, st.Result.Status)
	requireEmptyDir(t, root)
}
