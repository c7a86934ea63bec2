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
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

// TestDrillDoesNotBlockBackup: the leader, allowed to drill on the master
// (restore-drill-on-master), runs a drill and takes a backup requested
// meanwhile. The drill is held in replay deterministically: its restored
// server is stopped (SIGSTOP to its process group) as soon as it starts,
// before recovery can end, so the drill is still running for certain
// while the backup request is claimed, run and done; the server then
// continues and the drill ends done, with nothing left behind.
func TestDrillDoesNotBlockBackup(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{})
	shareArchiveWithPostgres(t, env.dir)
	primary := env.pg.Primary()
	keeper := env.stolon.KeeperUID(primary)
	root := scratchRoot(t, "drills")
	leader := startAgent(t, "agent-"+keeper, append([]string{"--keeper-uid", keeper, "--restore-root", root,
		"--pg-bin-dir", testenv.PGBinDir(t), "--restore-drill-on-master"}, env.common...)...)
	env.agents[keeper] = leader
	env.leaderFor(primary)
	store := env.store()
	cli := env.etcd.Client(t)
	keys := request.Keys{Prefix: coordinator.NewKeys("barnacle", cluster).Prefix}

	first := backupWait(t, store...)
	// WAL after the backup, so that recovery is still running when the
	// server is stopped (the stop comes within milliseconds of its start).
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE filler AS SELECT g AS id, repeat('x', 500) AS pad FROM generate_series(1, 200000) g"))
	env.waitArchived(primary, 2*time.Minute)

	held := requestHeldDrill(t, cli, keys, store, root)
	drillState := held.status
	st, ok := drillState()
	require.True(t, ok)
	require.Equal(t, request.StateRunning, st.State)

	// A backup requested now is claimed and done by the same agent.
	out, stderr, code := runBarnacle(t, 3*time.Minute, append([]string{"backup", "--wait", "--json"}, store...)...)
	require.Equal(t, 0, code, "backup during the drill: %s %s", out, stderr)
	var second request.BackupStatus
	require.NoError(t, json.Unmarshal([]byte(out), &second), out)
	require.NotNil(t, second.Result)
	assert.Equal(t, leader.name, second.Agent)
	assert.NotEqual(t, first.Result.ID, second.Result.ID)
	st, ok = drillState()
	require.True(t, ok)
	assert.Equal(t, request.StateRunning, st.State, "the drill was still running when the backup finished")

	held.resume()
	waitFor(t, 3*time.Minute, "the drill to finish", func() bool {
		st, ok = drillState()
		return ok && (st.State == request.StateDone || st.State == request.StateFailed)
	})
	require.Equal(t, request.StateDone, st.State, "drill: %s", st.Error)
	require.NotNil(t, st.Result)
	assert.Equal(t, catalog.DrillDone, st.Result.Status)
	assert.Equal(t, first.Result.ID, st.Result.BackupID, "the drill restores the newest backup when it began")
	requireEmptyDir(t, root)
	stopAgent(t, leader)
}

// heldDrill is a drill requested through etcd whose restored server was
// stopped (SIGSTOP to its process group) the moment it started, before
// recovery could end: the drill is in replay for certain until resume.
type heldDrill struct {
	id     string
	status func() (request.DrillStatus, bool) // false while there is none
	resume func()                             // idempotent; also at cleanup
}

// requestHeldDrill runs `barnacle drill` and holds the server of the drill
// it requested, which runs below root.
func requestHeldDrill(t *testing.T, cli *clientv3.Client, keys request.Keys, store []string, root string) *heldDrill {
	t.Helper()
	out, stderr, code := barnacle(t, append([]string{"drill"}, store...)...)
	require.Equal(t, 0, code, "drill: %s %s", out, stderr)
	m := regexp.MustCompile(`drill requested: (\S+)`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	h := &heldDrill{id: m[1]}
	h.status = func() (request.DrillStatus, bool) {
		resp, err := cli.Get(t.Context(), keys.Status(request.KindDrill, h.id))
		if err != nil || len(resp.Kvs) == 0 {
			return request.DrillStatus{}, false
		}
		var st request.DrillStatus
		return st, json.Unmarshal(resp.Kvs[0].Value, &st) == nil
	}
	pidFile := filepath.Join(root, "barnacle-drill-"+h.id, "data", "postmaster.pid")
	var pid int
	deadline := time.Now().Add(2 * time.Minute)
	for pid == 0 {
		require.False(t, time.Now().After(deadline), "the drill's server did not start")
		if b, err := os.ReadFile(pidFile); err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])); err == nil && p > 0 {
				pid = p
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	// The drill starts postgres in a process group of its own.
	require.NoError(t, syscall.Kill(-pid, syscall.SIGSTOP))
	resumed := false
	h.resume = func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(-pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(h.resume)
	// Held before the end of recovery: postmaster.pid says "ready" only
	// once the server promoted (hot_standby is off).
	b, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	lines := strings.Split(string(b), "\n")
	require.False(t, len(lines) >= 8 && strings.TrimSpace(lines[7]) == "ready",
		"recovery ended before the server was stopped: give the test more WAL to replay")
	return h
}
