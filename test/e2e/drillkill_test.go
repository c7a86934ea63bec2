package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
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

// TestDrillAgentKilledAndRestarted: the agent running a drill is killed
// with -9 and its supervisor restarts it at once, under the same name.
//   - The leader marks the drill failed although an agent of that name
//     runs again: the life that claimed it is gone (its record's startedAt
//     is later than the claim). Before, a restarted agent counted as alive
//     and the drill stayed "running" for ever, with barnacle drill --wait
//     waiting on it.
//   - The leader records the failure in the archive (drills/<id>.json), so
//     list-drills, status, check and the metrics see it; before, only the
//     etcd status said so.
//   - The next drill removes what the killed one left and is done.
func TestDrillAgentKilledAndRestarted(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newDrillEnv(t)
	drillAgent, root := env.drillAgent, env.root
	store := env.store()
	cli := env.etcd.Client(t)
	rkeys := request.Keys{Prefix: coordinator.NewKeys("barnacle", cluster).Prefix}
	backupWait(t, store...)

	out, stderr, code := barnacle(t, append([]string{"drill", "--agent", drillAgent.name}, store...)...)
	require.Equal(t, 0, code, "drill: %s %s", out, stderr)
	m := regexp.MustCompile(`drill requested: (\S+)`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	id := m[1]
	statusKey := rkeys.Status(request.KindDrill, id)

	// Kill it while the drill works in its scratch directory.
	waitFor(t, 60*time.Second, "the drill to run in its scratch directory", func() bool {
		entries, _ := os.ReadDir(root)
		return readStatus[catalog.Drill](t, cli, statusKey).State == request.StateRunning && len(entries) > 0
	})
	drillAgent.signal(syscall.SIGKILL)
	_, _ = drillAgent.wait(10 * time.Second)
	killed := time.Now()
	drillAgent = env.restartDrillAgent()

	var st request.DrillStatus
	waitFor(t, 90*time.Second, "the leader to mark the killed drill failed", func() bool {
		st = readStatus[catalog.Drill](t, cli, statusKey)
		return st.State != request.StateRunning && st.State != request.StateClaimed
	})
	t.Logf("drill of a killed and restarted agent marked failed %s after the kill: %s", time.Since(killed).Round(time.Second), st.Error)
	assert.Equal(t, request.StateFailed, st.State)
	assert.Contains(t, st.Error, "agent "+drillAgent.name+" stopped before the drill finished")

	var rec catalog.Drill
	recordPath := filepath.Join(env.dir, catalog.DrillObject(cluster, id))
	waitFor(t, 30*time.Second, "the leader to record the failed drill in the archive", func() bool {
		b, err := os.ReadFile(recordPath)
		return err == nil && json.Unmarshal(b, &rec) == nil
	})
	assert.Equal(t, id, rec.ID)
	assert.Equal(t, catalog.DrillFailed, rec.Status)
	assert.Equal(t, drillAgent.name, rec.Node)
	assert.Equal(t, st.Error, rec.Error)
	assert.False(t, rec.StartedAt.IsZero(), "the record keeps when the drill began")
	assert.False(t, rec.FinishedAt.Before(rec.StartedAt), "finished %s before it began %s", rec.FinishedAt, rec.StartedAt)

	out, stderr, code = barnacle(t, append([]string{"list-drills", "--archive-url", "file://" + env.dir}, store...)...)
	require.Equal(t, 0, code, stderr)
	assert.Regexp(t, `(?m)^`+regexp.QuoteMeta(id)+`\s+failed\s+`+regexp.QuoteMeta(drillAgent.name)+`\s`, out)

	// The next drill clears the killed one's scratch directory and is done.
	waitFor(t, 20*time.Second, drillAgent.name+"'s record to offer drills again", func() bool {
		snap, err := coordinator.ReadSnapshot(ctx, cli, coordinator.NewKeys("barnacle", cluster))
		return err == nil && snap.Agents[drillAgent.name].Drills
	})
	out, stderr, code = runBarnacle(t, 5*time.Minute, append([]string{"drill", "--wait", "--json"}, store...)...)
	require.Equal(t, 0, code, "drill after the kill: %s %s", out, stderr)
	var next request.DrillStatus
	require.NoError(t, json.Unmarshal([]byte(out), &next), out)
	require.NotNil(t, next.Result, out)
	assert.Equal(t, catalog.DrillDone, next.Result.Status)
	requireEmptyDir(t, root)
}

// drillEnv is an archive environment of a master and a standby, each with
// an agent, where the standby's agent may run restore drills (restore-root
// root) and the master's agent leads.
type drillEnv struct {
	*archiveEnv
	root        string
	drillKeeper string // the standby's keeper, beside which the drill agent runs
	drillAgent  *agentProc
	drillArgs   []string // the drill agent's own flags, to start it again alike
}

func newDrillEnv(t *testing.T) *drillEnv {
	t.Helper()
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1})
	shareArchiveWithPostgres(t, env.dir)
	primary, standby := env.pg.Primary(), env.pg.Standbys()[0]
	d := &drillEnv{archiveEnv: env, root: scratchRoot(t, "drills"), drillKeeper: env.stolon.KeeperUID(standby)}
	d.drillArgs = []string{"--keeper-uid", d.drillKeeper, "--restore-root", d.root, "--pg-bin-dir", testenv.PGBinDir(t)}
	env.startAgent(env.stolon.KeeperUID(primary))
	d.restartDrillAgent()
	env.leaderFor(primary)
	return d
}

// restartDrillAgent starts the drill agent (again, after it stopped).
func (d *drillEnv) restartDrillAgent() *agentProc {
	d.drillAgent = startAgent(d.t, "agent-"+d.drillKeeper, append(d.drillArgs, d.common...)...)
	d.agents[d.drillKeeper] = d.drillAgent
	return d.drillAgent
}
