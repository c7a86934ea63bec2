package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// runBarnacle runs the binary to completion within d (a drill outlasts
// barnacle's 30 s) and returns stdout, stderr and the exit code.
func runBarnacle(t *testing.T, d time.Duration, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	return runToExit(t, ctx, barnacleCmd(ctx, args...))
}

// drillMetric is metricValue with presence: false when the series is
// absent.
func drillMetric(text, name string) (float64, bool) {
	v := metricValue(text, name)
	return v, v >= 0
}

// requireDrillOnlyAdded is requireOnlyDrillAdded while the leader
// streams: WAL under wals/ may grow or be added (the archiver), nothing
// that was there may vanish, and everything else changes only by the
// drill's record.
func requireDrillOnlyAdded(t *testing.T, before, after map[string]string, id string) {
	t.Helper()
	assert.Contains(t, after, filepath.Join(cluster, "drills", id+".json"), "the drill is recorded")
	wals := filepath.Join(cluster, "wals") + "/"
	for name, v := range after {
		if strings.HasPrefix(name, filepath.Join(cluster, "drills")+"/") || strings.HasPrefix(name, wals) {
			continue
		}
		assert.Equal(t, before[name], v, "archive object %s changed", name)
	}
	for name, v := range before {
		assert.Contains(t, after, name, "archive object %s vanished", name)
		if strings.HasPrefix(name, wals) && !strings.HasSuffix(name, ".partial") {
			assert.Equal(t, v, after[name], "archived WAL %s changed", name)
		}
	}
}

// TestDrillRequests runs restore drills through etcd, as operators and
// the schedule do, on a primary and a standby with an agent each:
//   - only the master's agent has restore-root: barnacle drill --wait is
//     rejected by the leader, saying what to configure;
//   - so is a drill for an agent that does not run;
//   - the standby's agent with restore-root claims the next one; without a
//     backup it fails, saying why, and leaves nothing behind;
//   - after a backup the next drill is done, with the backup, the reached point past the last insert, the
//     phases and the relations checked; its scratch directory is gone and
//     the archive changed only by the record;
//   - status, check (restore-drill-max-age) and the metrics of both agents
//     (the master's after a restart, from the records) show it;
//   - with restore-drill-schedule the leader requests a drill on its own;
//     stopping the agent running it cancels it: failed, recorded, nothing
//     left behind.
func TestDrillRequests(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1})
	shareArchiveWithPostgres(t, env.dir)
	primary, standby := env.pg.Primary(), env.pg.Standbys()[0]
	masterKeeper, standbyKeeper := env.stolon.KeeperUID(primary), env.stolon.KeeperUID(standby)
	rootM, rootS := filepath.Join(t.TempDir(), "drills-m"), filepath.Join(t.TempDir(), "drills-s")
	for _, r := range []string{rootM, rootS} {
		require.NoError(t, os.MkdirAll(r, 0o755))
		testenv.PGOwn(t, r)
	}
	bin := testenv.PGBinDir(t)
	startWith := func(keeper string, extra ...string) *agentProc {
		a := startAgent(t, "agent-"+keeper, append(append([]string{"--keeper-uid", keeper}, extra...), env.common...)...)
		env.agents[keeper] = a
		return a
	}
	masterAgent := startWith(masterKeeper, "--restore-root", rootM, "--pg-bin-dir", bin)
	standbyAgent := startWith(standbyKeeper)
	env.leaderFor(primary)
	store := env.store()
	cli := env.etcd.Client(t)
	rkeys := request.Keys{Prefix: coordinator.NewKeys("barnacle", cluster).Prefix}

	require.NoError(t, primary.Exec(ctx, "CREATE TABLE drill (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"))
	insertDrillRows(t, primary, 1, 100)

	// Only the master's agent could run it: rejected, with what to do.
	out, stderr, code := runBarnacle(t, time.Minute, append([]string{"drill", "--wait", "--timeout", "50s"}, store...)...)
	assert.Equal(t, 1, code, "drill without an eligible agent: %s %s", out, stderr)
	assert.Contains(t, stderr, "rejects it unless such an agent starts first")
	assert.Contains(t, stderr, "rejected by "+masterAgent.name)
	assert.Contains(t, stderr, masterAgent.name+" has restore-root but runs beside the master: set restore-drill-on-master: true there to allow it")
	requireEmptyDir(t, rootM)
	// A drill for an agent that does not run: rejected too.
	out, stderr, code = runBarnacle(t, time.Minute, append([]string{"drill", "--wait", "--timeout", "50s", "--agent", "agent-keeper9"}, store...)...)
	assert.Equal(t, 1, code, "drill for a missing agent: %s %s", out, stderr)
	assert.Contains(t, stderr, `agent "agent-keeper9" is not running: name a live agent`)

	// The standby's agent gets restore-root and takes the next drill.
	stopAgent(t, standbyAgent)
	standbyAgent = startWith(standbyKeeper, "--restore-root", rootS, "--pg-bin-dir", bin)
	waitFor(t, 20*time.Second, standbyAgent.name+"'s record to offer drills", func() bool {
		snap, err := coordinator.ReadSnapshot(ctx, cli, coordinator.NewKeys("barnacle", cluster))
		return err == nil && snap.Agents[standbyAgent.name].Drills
	})
	// Without a backup the drill fails at once, says why and what next,
	// and leaves nothing behind.
	out, stderr, code = runBarnacle(t, 2*time.Minute, append([]string{"drill", "--wait"}, store...)...)
	assert.Equal(t, 1, code, "drill without a backup: %s %s", out, stderr)
	assert.Contains(t, stderr, "failed on "+standbyAgent.name+": ")
	assert.Contains(t, stderr, "no done backup to restore")
	assert.Contains(t, stderr, "then run barnacle drill again")
	requireEmptyDir(t, rootS)

	bst := backupWait(t, store...)
	// Rows after the backup: only replay of archived WAL brings them back.
	insertDrillRows(t, primary, 101, 200)
	var lastText string
	require.NoError(t, primary.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lastText))
	last, err := wal.ParseLSN(lastText)
	require.NoError(t, err)
	env.waitArchived(primary, 30*time.Second)
	before := archiveState(t, env.dir)

	started := time.Now()
	out, stderr, code = runBarnacle(t, 5*time.Minute, append([]string{"drill", "--wait", "--json"}, store...)...)
	require.Equal(t, 0, code, "drill: %s %s", out, stderr)
	t.Logf("barnacle drill --wait took %s; stderr: %s", time.Since(started).Round(time.Millisecond), stderr)
	assert.Contains(t, stderr, "agent "+standbyAgent.name+" may run restore drills and claims it")
	var st request.DrillStatus
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.Equal(t, request.StateDone, st.State, "%+v", st)
	require.NotNil(t, st.Result)
	d := *st.Result
	assert.Equal(t, standbyAgent.name, st.Agent)
	assert.Equal(t, standbyAgent.name, d.Node)
	assert.Equal(t, catalog.DrillDone, d.Status)
	assert.Equal(t, bst.Result.ID, d.BackupID)
	assert.True(t, d.Reached.Reached(catalog.Position{Timeline: 1, LSN: last}), "reached %+v, last insert at %s", d.Reached, last)
	assert.Positive(t, d.Checked)
	assert.Positive(t, d.Phases.RTO())
	t.Logf("drill %s: reached %s, RTO %s (restore %s, replay %s, check %s), %d relations checked",
		d.ID, d.Reached.LSN, d.Phases.RTO(), d.Phases.Restore, d.Phases.Replay, d.Phases.Check, d.Checked)
	requireEmptyDir(t, rootS)
	requireEmptyDir(t, rootM)
	requireDrillOnlyAdded(t, before, archiveState(t, env.dir), d.ID)

	// status shows it, as the last drill and the last successful one.
	out, stderr, code = barnacle(t, append([]string{"status", "--json", "--archive-url", "file://" + env.dir}, store...)...)
	require.Contains(t, []int{0, 1}, code, stderr)
	var sst struct {
		Archive struct {
			LastDrill, LastSuccessfulDrill *struct {
				ID, Node, Status, BackupID, ReachedLSN, RTO string
			}
		}
	}
	require.NoError(t, json.Unmarshal([]byte(out), &sst), out)
	require.NotNil(t, sst.Archive.LastDrill, out)
	require.NotNil(t, sst.Archive.LastSuccessfulDrill, out)
	assert.Equal(t, d.ID, sst.Archive.LastDrill.ID)
	assert.Equal(t, d.ID, sst.Archive.LastSuccessfulDrill.ID)
	assert.Equal(t, d.Reached.LSN.String(), sst.Archive.LastSuccessfulDrill.ReachedLSN)
	text, _, _ := barnacle(t, append([]string{"status", "--archive-url", "file://" + env.dir}, store...)...)
	assert.Contains(t, text, "Last drill: "+d.ID+" on "+standbyAgent.name+", done")

	// check: within restore-drill-max-age OK, past it FAILED.
	out, _ = runCheck(t, env, "--restore-drill-max-age", "1h")
	assert.Equal(t, "restore drill: OK", checkLines(out)["restore drill"], out)
	out, _ = runCheck(t, env, "--restore-drill-max-age", "1ms")
	assert.Contains(t, checkLines(out)["restore drill"], "restore drill: FAILED (the last successful restore drill "+d.ID+" finished", out)

	// Metrics: the agent that ran it at once (the failed drill before it
	// counts); the master's agent, restarted with a schedule, from the
	// records.
	sm := scrape(t, standbyAgent)
	okAt, ok := drillMetric(sm, "barnacle_restore_drill_last_success_timestamp_seconds")
	require.True(t, ok, sm)
	assert.InDelta(t, float64(d.FinishedAt.UnixNano())/1e9, okAt, 0.001)
	rto, _ := drillMetric(sm, "barnacle_restore_drill_rto_seconds")
	assert.InDelta(t, d.Phases.RTO().Seconds(), rto, 0.001)
	reached, _ := drillMetric(sm, "barnacle_restore_drill_reached_position_bytes")
	assert.Equal(t, float64(d.Reached.LSN), reached)
	failures, _ := drillMetric(sm, "barnacle_restore_drill_failures_total")
	assert.Equal(t, float64(1), failures)

	stopAgent(t, masterAgent)
	masterAgent = startWith(masterKeeper, "--restore-root", rootM, "--pg-bin-dir", bin, "--restore-drill-schedule", "20s")
	waitFor(t, 20*time.Second, "the restarted agent's drill metrics", func() bool {
		resp, err := httpClient.Get("http://" + masterAgent.metrics + "/metrics")
		if err != nil {
			return false // not listening yet
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		v, ok := drillMetric(b.String(), "barnacle_restore_drill_last_success_timestamp_seconds")
		return ok && v == okAt
	})
	mm := scrape(t, masterAgent)
	for _, name := range []string{"barnacle_restore_drill_rto_seconds", "barnacle_restore_drill_reached_position_bytes",
		"barnacle_restore_drill_reached_timestamp_seconds", "barnacle_restore_drill_failures_total"} {
		want, _ := drillMetric(sm, name)
		got, ok := drillMetric(mm, name)
		assert.True(t, ok, name)
		assert.Equal(t, want, got, "%s on the master's agent", name)
	}

	// The leader requests a drill on its own; the standby's agent claims
	// it; stopping that agent while the drill runs cancels it.
	env.leaderFor(primary)
	var schedKey string
	waitFor(t, 90*time.Second, "a scheduled drill to run", func() bool {
		resp, err := cli.Get(ctx, rkeys.Statuses(request.KindDrill), clientv3.WithPrefix())
		if err != nil {
			return false
		}
		for _, kv := range resp.Kvs {
			var s request.DrillStatus
			if strings.Contains(string(kv.Key), "/scheduled-drill-") && json.Unmarshal(kv.Value, &s) == nil && s.State == request.StateRunning {
				schedKey = string(kv.Key)
				return true
			}
		}
		return false
	})
	sched := readStatus[catalog.Drill](t, cli, schedKey)
	assert.Equal(t, standbyAgent.name, sched.Agent)
	stopAgent(t, standbyAgent)
	sched = readStatus[catalog.Drill](t, cli, schedKey)
	require.Equal(t, request.StateFailed, sched.State, "%+v", sched)
	assert.NotEmpty(t, sched.Error)
	t.Logf("scheduled drill cancelled by stopping its agent: %s", sched.Error)
	requireEmptyDir(t, rootS)
	schedID := strings.TrimPrefix(schedKey, rkeys.Statuses(request.KindDrill))
	drills, err := catalog.ListDrills(ctx, env.backend, cluster)
	require.NoError(t, err)
	var recorded bool
	for _, r := range drills {
		if r.ID == schedID {
			recorded = true
			assert.Equal(t, catalog.DrillFailed, r.Status)
		}
	}
	assert.True(t, recorded, "the cancelled drill %s is recorded as failed", schedID)
	stopAgent(t, masterAgent)
}

// TestDrillOnMasterAndBackupHost: the master's agent runs a drill only
// with restore-drill-on-master; a leader-policy any host without a keeper
// runs drills too (and then takes them off the master's host); list-drills
// lists both.
func TestDrillOnMasterAndBackupHost(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{})
	shareArchiveWithPostgres(t, env.dir)
	primary := env.pg.Primary()
	keeper := env.stolon.KeeperUID(primary)
	rootM, rootH := filepath.Join(t.TempDir(), "drills-m"), filepath.Join(t.TempDir(), "drills-h")
	for _, r := range []string{rootM, rootH} {
		require.NoError(t, os.MkdirAll(r, 0o755))
		testenv.PGOwn(t, r)
	}
	bin := testenv.PGBinDir(t)
	store := env.store()
	cli := env.etcd.Client(t)
	master := startAgent(t, "agent-"+keeper, append([]string{"--keeper-uid", keeper, "--restore-root", rootM, "--pg-bin-dir", bin,
		"--restore-drill-on-master"}, env.common...)...)
	env.agents[keeper] = master
	env.leaderFor(primary)
	out, stderr, code := barnacle(t, append([]string{"backup", "--wait"}, store...)...)
	require.Equal(t, 0, code, "backup: %s %s", out, stderr)

	drillOn := func(want string) catalog.Drill {
		t.Helper()
		out, stderr, code := runBarnacle(t, 5*time.Minute, append([]string{"drill", "--wait", "--json"}, store...)...)
		require.Equal(t, 0, code, "drill: %s %s", out, stderr)
		var st request.DrillStatus
		require.NoError(t, json.Unmarshal([]byte(out), &st), out)
		require.NotNil(t, st.Result)
		assert.Equal(t, want, st.Agent)
		assert.Equal(t, catalog.DrillDone, st.Result.Status)
		return *st.Result
	}
	first := drillOn(master.name)
	requireEmptyDir(t, rootM)

	// A backup host joins; the master's agent loses the allowance.
	host := startAgent(t, "backup-host", append([]string{"--leader-policy", "any", "--restore-root", rootH, "--pg-bin-dir", bin}, env.common...)...)
	stopAgent(t, master)
	master = startAgent(t, "agent-"+keeper, append([]string{"--keeper-uid", keeper, "--restore-root", rootM, "--pg-bin-dir", bin}, env.common...)...)
	env.agents[keeper] = master
	waitFor(t, 20*time.Second, "both agents' records", func() bool {
		snap, err := coordinator.ReadSnapshot(ctx, cli, coordinator.NewKeys("barnacle", cluster))
		if err != nil {
			return false
		}
		h, m := snap.Agents[host.name], snap.Agents[master.name]
		return h.Drills && m.Drills && !m.DrillsOnMaster && m.MasterKeeperUID == keeper
	})
	second := drillOn(host.name)
	requireEmptyDir(t, rootH)
	requireEmptyDir(t, rootM)

	out, stderr, code = barnacle(t, append([]string{"list-drills", "--archive-url", "file://" + env.dir}, store...)...)
	require.Equal(t, 0, code, stderr)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 3, out)
	assert.Regexp(t, `^`+second.ID+`\s+done\s+backup-host\s`, lines[1])
	assert.Regexp(t, `^`+first.ID+`\s+done\s+`+master.name+`\s`, lines[2])

	// Stolon's keeper may name its superuser otherwise (--pg-su-username):
	// restore-drill-superuser reaches the drill, and a role the restored
	// cluster lacks fails it with a reason naming the key.
	stopAgent(t, host)
	host = startAgent(t, "backup-host", append([]string{"--leader-policy", "any", "--restore-root", rootH, "--pg-bin-dir", bin,
		"--restore-drill-superuser", "stolon_su"}, env.common...)...)
	stopAgent(t, master)
	waitFor(t, 20*time.Second, "only the backup host may drill", func() bool {
		snap, err := coordinator.ReadSnapshot(ctx, cli, coordinator.NewKeys("barnacle", cluster))
		if err != nil {
			return false
		}
		_, masterUp := snap.Agents[master.name]
		return snap.Agents[host.name].Drills && !masterUp
	})
	out, stderr, code = runBarnacle(t, 5*time.Minute, append([]string{"drill", "--wait", "--json"}, store...)...)
	require.NotEqual(t, 0, code, "drill as a role that does not exist: %s %s", out, stderr)
	var st request.DrillStatus
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	assert.Equal(t, host.name, st.Agent)
	require.NotNil(t, st.Result, out)
	assert.Equal(t, catalog.DrillFailed, st.Result.Status)
	assert.Contains(t, st.Error, "role stolon_su (restore-drill-superuser) does not exist in it: set restore-drill-superuser to the cluster's superuser name (Stolon's keeper --pg-su-username)")
	requireEmptyDir(t, rootH)
	stopAgent(t, host)
}
