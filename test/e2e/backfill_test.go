package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
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
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// TestBackfillFromStandby: the master's slot is dropped while no agent
// runs, so the master recycles WAL the archive lacks; only the standby
// still has it (its standby slot). The leader fetches that WAL from the
// standby on the same timeline, stops as soon as the archive reaches the
// master's oldest WAL and streams from the master again within seconds;
// the backfill counts in the metrics and the agent record, and a
// `backup --wait` requested meanwhile finishes. No gap is recorded.
func TestBackfillFromStandby(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1, WALKeepSize: "0",
		Params: map[string]string{"min_wal_size": "'32MB'", "max_wal_size": "'64MB'"}})
	env.startAgents()
	primary, standby := env.pg.Primary(), env.pg.Standbys()[0]
	leader := env.leaderFor(primary)
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE walgen (id int, v text)"))
	require.NoError(t, primary.Exec(ctx, "INSERT INTO walgen SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g"))
	end := env.waitArchived(primary, 20*time.Second)
	waitFor(t, 15*time.Second, "the standby slot to follow the archive", func() bool {
		s, err := standby.QueryString(ctx, "select coalesce(restart_lsn::text, '') from pg_replication_slots where slot_name = 'barnacle'")
		lsn, perr := wal.ParseLSN(s)
		return err == nil && perr == nil && lsn >= wal.SegmentStart(wal.SegmentOf(end, wal.DefaultSegmentSize), wal.DefaultSegmentSize)
	})

	// No agent runs; the master loses its slot and recycles the WAL the
	// archive lacks. The standby's slot keeps it there.
	for _, a := range env.agents {
		a.signal(syscall.SIGKILL)
		_, _ = a.wait(5 * time.Second)
	}
	waitFor(t, 10*time.Second, "the master's slot to be dropped", func() bool {
		return primary.Exec(ctx, "select pg_drop_replication_slot('barnacle')") == nil
	})
	endSeg := wal.SegmentOf(end, wal.DefaultSegmentSize)
	var oldest wal.SegmentNo
	for round := 0; ; round++ {
		require.Less(t, round, 20, "the master does not recycle its WAL")
		require.NoError(t, primary.Exec(ctx, "INSERT INTO walgen SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g"))
		require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
		// The standby streams without a slot: let it have this WAL before
		// the master's checkpoint may recycle it.
		cur, err := primary.CurrentLSN(ctx)
		require.NoError(t, err)
		waitFor(t, 30*time.Second, "the standby to receive", func() bool {
			received, err := standby.QueryInt64(ctx, "select (pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::bigint")
			return err == nil && uint64(received) >= cur
		})
		require.NoError(t, primary.Exec(ctx, "CHECKPOINT"))
		name, err := primary.OldestWALFile()
		require.NoError(t, err)
		_, seg, err := wal.ParseSegmentFileName(name, wal.DefaultSegmentSize)
		require.NoError(t, err)
		if oldest = seg; round >= 3 && oldest > endSeg+2 {
			break
		}
	}
	cur, err := primary.CurrentLSN(ctx)
	require.NoError(t, err)
	waitFor(t, 20*time.Second, "the standby to replay", func() bool {
		replayed, err := standby.QueryInt64(ctx, "select (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")
		return err == nil && uint64(replayed) >= cur
	})
	t.Logf("archive ends at %s (segment %X); the master's oldest segment is %X", end, endSeg, oldest)

	// A backup requested now waits for the agents, then for WAL archived
	// after the backfill.
	store := env.store()
	bctx, bcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer bcancel()
	backupCmd := barnacleCmd(bctx, append([]string{"backup", "--wait", "--json", "--label", "during-backfill"}, store...)...)
	var backupOut, backupErr bytes.Buffer
	backupCmd.Stdout, backupCmd.Stderr = &backupOut, &backupErr
	require.NoError(t, backupCmd.Start())
	backupDone := make(chan error, 1)
	go func() { backupDone <- backupCmd.Wait() }()
	waitFor(t, 10*time.Second, "the backup request", func() bool {
		resp, err := env.etcd.Client(t).Get(ctx, coordinator.NewKeys("barnacle", cluster).Prefix+"requests/backup/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 1
	})

	started := time.Now()
	env.startAgents()
	env.leaderFor(primary)
	// Streaming from the master again: its slot is in use by the stream
	// and the WAL written now reaches the archive.
	waitFor(t, 30*time.Second, "the stream from the master through its slot", func() bool {
		_, active := slotState(t, primary, "barnacle")
		return active
	})
	require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
	env.waitArchived(primary, 30*time.Second)
	handover := time.Since(started)

	leaderLog, err := os.ReadFile(leader.logPath)
	require.NoError(t, err)
	require.Contains(t, string(leaderLog), "fetched missing wal from another keeper", "the WAL came from the standby")
	for _, line := range strings.Split(string(leaderLog), "\n") {
		if strings.Contains(line, "another keeper") || strings.Contains(line, "streaming from the master") {
			t.Log(line)
		}
	}
	gaps, err := catalog.ReadGaps(ctx, env.backend, cluster)
	require.NoError(t, err)
	require.Empty(t, gaps, "the standby had the WAL: no gap")
	a := listWAL(t, env.backend)
	first, last := requireContiguous(t, a, 1)

	// The backfilled segments count like streamed ones.
	metrics := scrape(t, leader)
	backfilled := float64(oldest - endSeg)
	assert.GreaterOrEqual(t, metricValue(metrics, "barnacle_wal_segments_archived_total"), backfilled, "segments archived by the backfill are counted")
	assert.Equal(t, float64(1), metricValue(metrics, "barnacle_wal_timeline"))
	assert.Equal(t, float64(1), metricValue(metrics, "barnacle_wal_streaming"))
	assert.Equal(t, float64(0), metricValue(metrics, "barnacle_wal_gaps"))
	// The record carries positions at most once a second; the deadline
	// only stops a hang, on a machine loaded by parallel scenarios.
	var rec coordinator.AgentStatus
	waitFor(t, 30*time.Second, "the leader record to show the archived position", func() bool {
		rec = leaderRecord(t, env, leader.name)
		return rec.ArchivedLSN > wal.SegmentStart(oldest, wal.DefaultSegmentSize)
	})
	assert.True(t, rec.Streaming)
	assert.Equal(t, uint32(1), rec.Timeline)
	assert.Empty(t, rec.LastError)

	// barnacle status shows the archived position and the lag from the
	// master, and no problem.
	out, stderr, code := barnacle(t, append([]string{"status", "--json"}, env.common...)...)
	require.Equal(t, 0, code, "status: %s", stderr)
	var status struct {
		Problems []string `json:"problems"`
		Archive  struct {
			Lag *struct {
				Source string `json:"source"`
			} `json:"lag"`
		} `json:"archive"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &status), out)
	require.NotNil(t, status.Archive.Lag, out)
	assert.Equal(t, "master", status.Archive.Lag.Source)
	assert.Empty(t, status.Problems)

	// The backup requested before the agents started is done.
	select {
	case err := <-backupDone:
		require.NoError(t, err, "backup --wait: %s %s", backupOut.String(), backupErr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("backup --wait did not finish: %s", backupErr.String())
	}
	var st request.BackupStatus
	require.NoError(t, json.Unmarshal(backupOut.Bytes(), &st), backupOut.String())
	require.Equal(t, request.StateDone, st.State, st.Error)
	t.Logf("backfill of segments %X..%X from the standby; streaming from the master %s after the agents started; timeline 1 archived %X..%X; backup %s done",
		endSeg, oldest, handover.Round(100*time.Millisecond), first, last, st.Result.ID)
}
