package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

// TestDrillStopsOnFailover: a drill runs beside a standby; a failover
// makes that standby the master while the drill replays (its server held
// with SIGSTOP, so it is in replay for certain). The drill stops at once,
// failed with a reason that says what to do, and leaves nothing behind.
func TestDrillStopsOnFailover(t *testing.T) {
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1})
	shareArchiveWithPostgres(t, env.dir)
	primary := env.pg.Primary()
	standby := env.pg.Nodes[1]
	require.NotEqual(t, primary, standby)
	env.startAgent(env.stolon.KeeperUID(primary))
	root := filepath.Join(t.TempDir(), "drills")
	require.NoError(t, os.MkdirAll(root, 0o755))
	testenv.PGOwn(t, root)
	sk := env.stolon.KeeperUID(standby)
	drillAgent := startAgent(t, "agent-"+sk, append([]string{"--keeper-uid", sk, "--restore-root", root,
		"--pg-bin-dir", testenv.PGBinDir(t)}, env.common...)...)
	env.agents[sk] = drillAgent
	env.leaderFor(primary)
	store := []string{"--cluster-name", cluster, "--store-endpoints", strings.Join(env.etcd.Endpoints(), ",")}
	cli := env.etcd.Client(t)
	keys := request.Keys{Prefix: coordinator.NewKeys("barnacle", cluster).Prefix}

	out, stderr, code := barnacle(t, append([]string{"backup", "--wait", "--json"}, store...)...)
	require.Equal(t, 0, code, "backup: %s %s", out, stderr)
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE filler AS SELECT g AS id, repeat('x', 500) AS pad FROM generate_series(1, 200000) g"))
	env.waitArchived(primary, 2*time.Minute)

	out, stderr, code = barnacle(t, append([]string{"drill"}, store...)...)
	require.Equal(t, 0, code, "drill: %s %s", out, stderr)
	m := regexp.MustCompile(`drill requested: (\S+)`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	id := m[1]
	drillState := func() (request.DrillStatus, bool) {
		resp, err := cli.Get(ctx, keys.Status(request.KindDrill, id))
		if err != nil || len(resp.Kvs) == 0 {
			return request.DrillStatus{}, false
		}
		var st request.DrillStatus
		return st, json.Unmarshal(resp.Kvs[0].Value, &st) == nil
	}

	pidFile := filepath.Join(root, "barnacle-drill-"+id, "data", "postmaster.pid")
	var pid int
	deadline := time.Now().Add(2 * time.Minute)
	for pid == 0 {
		require.False(t, time.Now().After(deadline), "the drill's server did not start")
		if b, err := os.ReadFile(pidFile); err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])); err == nil && p > 0 {
				pid = p
				break
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	require.NoError(t, syscall.Kill(-pid, syscall.SIGSTOP))
	t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGCONT) })
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
