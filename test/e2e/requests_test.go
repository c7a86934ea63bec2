package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/agent"
	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// TestRequestsServedWhileBusy: a claimed backup runs beside the watch
// loop, so the agent running it still answers other requests; and the
// leader marks failed a restore request whose agent died while running it,
// instead of leaving it "running" forever.
func TestRequestsServedWhileBusy(t *testing.T) {
	ctx := t.Context()
	restoreRoot := filepath.Join(t.TempDir(), "restores")
	require.NoError(t, os.MkdirAll(restoreRoot, 0o755))
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1}, "--restore-root", restoreRoot)
	env.startAgents()
	primary := env.pg.Primary()
	leader := env.leaderFor(primary)
	env.waitArchived(primary, 30*time.Second)
	cli := env.etcd.Client(t)
	keys := coordinator.NewKeys("barnacle", cluster)

	// Hold the WAL archive (its directory replaced by a file): a backup is
	// done only once its WAL is archived, so the requested one runs until
	// the archive is given back.
	wals := filepath.Join(env.dir, cluster, "wals")
	require.NoError(t, os.Rename(wals, wals+".held"))
	require.NoError(t, os.WriteFile(wals, nil, 0o644))
	released := false
	release := func() {
		if !released {
			released = true
			require.NoError(t, os.Remove(wals))
			require.NoError(t, os.Rename(wals+".held", wals))
		}
	}
	t.Cleanup(release)

	_, err := cli.Put(ctx, agent.RequestKey(keys, "long"), `{"from":"master","label":"long"}`)
	require.NoError(t, err)
	var long agent.RequestStatus
	waitFor(t, 60*time.Second, "the long backup to run", func() bool {
		long = readStatus[agent.BackupResult](t, cli, agent.StatusKey(keys, "long"))
		return long.State == agent.StateRunning
	})
	assert.Equal(t, leader.name, long.Agent)

	// While it runs, the leader rejects a bad request at once.
	_, err = cli.Put(ctx, agent.RequestKey(keys, "bad"), `{"from":"nowhere"}`)
	require.NoError(t, err)
	var bad agent.RequestStatus
	waitFor(t, 30*time.Second, "the bad request to be rejected while the backup runs", func() bool {
		bad = readStatus[agent.BackupResult](t, cli, agent.StatusKey(keys, "bad"))
		return bad.FinishedAt != nil
	})
	assert.Equal(t, agent.StateRejected, bad.State)
	assert.Contains(t, bad.Error, `unknown from "nowhere"`)
	assert.Equal(t, leader.name, bad.Agent)
	long = readStatus[agent.BackupResult](t, cli, agent.StatusKey(keys, "long"))
	require.Equal(t, agent.StateRunning, long.State, "the backup was still running: %+v", long)

	// A restore request that the standby's agent claimed and was running
	// when it was killed.
	standbyAgent := env.agents[env.stolon.KeeperUID(env.pg.Standbys()[0])]
	standbyAgent.signal(syscall.SIGKILL)
	_, ok := standbyAgent.wait(10 * time.Second)
	require.True(t, ok)
	orphan, err := json.Marshal(agent.RestoreStatus{State: agent.StateRunning, Agent: standbyAgent.name, StartedAt: time.Now().UTC(),
		Progress: &agent.Progress{Done: 1 << 20, Total: 1 << 30}})
	require.NoError(t, err)
	_, err = cli.Put(ctx, agent.RestoreStatusKey(keys, "orphan"), string(orphan))
	require.NoError(t, err)
	_, err = cli.Put(ctx, agent.RestoreRequestKey(keys, "orphan"),
		`{"keeper":"`+env.stolon.KeeperUID(env.pg.Standbys()[0])+`","targetDir":"`+restoreRoot+`/orphan"}`)
	require.NoError(t, err)
	var swept agent.RestoreStatus
	took := waitFor(t, 60*time.Second, "the dead agent's restore request to be marked failed", func() bool {
		swept = readStatus[agent.RestoreResult](t, cli, agent.RestoreStatusKey(keys, "orphan"))
		return swept.FinishedAt != nil
	})
	assert.Equal(t, agent.StateFailed, swept.State)
	assert.Contains(t, swept.Error, "agent "+standbyAgent.name+" stopped before the restore finished")
	assert.Contains(t, swept.Error, "partial restore")
	t.Logf("orphaned restore request marked failed after %s: %s", took.Round(time.Second), swept.Error)

	// Given the archive back, the backup finishes.
	release()
	waitFor(t, 90*time.Second, "the long backup to finish", func() bool {
		long = readStatus[agent.BackupResult](t, cli, agent.StatusKey(keys, "long"))
		return long.FinishedAt != nil
	})
	assert.Equal(t, agent.StateDone, long.State, long.Error)
}

// readStatus reads a request's status key; the zero value when absent.
func readStatus[R any](t *testing.T, cli *clientv3.Client, key string) agent.RequestStatusOf[R] {
	t.Helper()
	var st agent.RequestStatusOf[R]
	resp, err := cli.Get(t.Context(), key)
	if err != nil || len(resp.Kvs) == 0 {
		return st
	}
	require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &st))
	return st
}
