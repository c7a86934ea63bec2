package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// leaderRecord reads the leader's record from etcd.
func leaderRecord(t *testing.T, env *archiveEnv, name string) coordinator.AgentStatus {
	t.Helper()
	resp, err := env.etcd.Client(t).Get(t.Context(), coordinator.NewKeys("barnacle", cluster).Agent(name))
	require.NoError(t, err)
	var rec coordinator.AgentStatus
	if len(resp.Kvs) == 1 {
		require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &rec))
	}
	return rec
}

// TestArchiverBadInput: a broken archive or role gives a clear error in the
// agent's record and log, the agent keeps running, and it recovers by
// itself once the cause is fixed.
func TestArchiverBadInput(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{})
	primary := env.pg.Primary()
	keeper := env.stolon.KeeperUID(primary)

	t.Run("archive directory missing", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "not-mounted")
		a := startAgent(t, "agent-"+keeper, append(append([]string{"--keeper-uid", keeper}, env.common...),
			"--archive-url", "file://"+missing)...)
		var rec coordinator.AgentStatus
		waitFor(t, 20*time.Second, "the error in the agent record", func() bool {
			rec = leaderRecord(t, env, a.name)
			return strings.Contains(rec.LastError, "open archive-url")
		})
		require.Contains(t, rec.LastError, missing)
		require.True(t, a.running(), "the agent keeps running")
		// Fixed: the directory appears (a volume mounted late).
		require.NoError(t, os.MkdirAll(missing, 0o755))
		waitFor(t, 40*time.Second, "archiving to start once the directory exists", func() bool {
			rec = leaderRecord(t, env, a.name)
			return rec.Streaming && rec.ArchivedLSN != wal.InvalidLSN || nudgeWAL(t, primary)
		})
		stopAgent(t, a)
	})

	t.Run("role without REPLICATION", func(t *testing.T) {
		require.NoError(t, primary.Exec(ctx, "CREATE ROLE norepl LOGIN PASSWORD 'pw'"))
		// pg_hba lets the role try replication; the role itself lacks it.
		hba, err := os.OpenFile(filepath.Join(primary.DataDir, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = hba.WriteString("host replication norepl 127.0.0.1/32 scram-sha-256\n")
		require.NoError(t, err)
		require.NoError(t, hba.Close())
		require.NoError(t, primary.Exec(ctx, "SELECT pg_reload_conf()"))
		pw := filepath.Join(t.TempDir(), "pw")
		require.NoError(t, os.WriteFile(pw, []byte("pw\n"), 0o600))
		a := startAgent(t, "agent-"+keeper, append(append([]string{"--keeper-uid", keeper}, env.common...),
			"--pg-user", "norepl", "--pg-password-file", pw)...)
		var rec coordinator.AgentStatus
		waitFor(t, 20*time.Second, "the permission error in the agent record", func() bool {
			rec = leaderRecord(t, env, a.name)
			return strings.Contains(rec.LastError, "replication")
		})
		t.Logf("last error: %s", rec.LastError)
		require.Contains(t, rec.LastError, "ALTER ROLE norepl REPLICATION", "the error says what to do")
		log, err := os.ReadFile(a.logPath)
		require.NoError(t, err)
		require.Contains(t, string(log), "streaming failed; fix the cause, barnacle keeps retrying")
		// Fixed by the DBA: the agent picks it up without a restart.
		require.NoError(t, primary.Exec(ctx, "ALTER ROLE norepl REPLICATION"))
		waitFor(t, 40*time.Second, "archiving once the role has REPLICATION", func() bool {
			rec = leaderRecord(t, env, a.name)
			return rec.Streaming && rec.ArchivedLSN != wal.InvalidLSN || nudgeWAL(t, primary)
		})
		stopAgent(t, a)
	})
}

// TestLagWhileNotStreaming: while the leader cannot stream (another
// connection holds its slot) the master writes on, and
// barnacle_wal_archive_lag_bytes follows the master's position instead of
// keeping its last streamed value. When a failover moves the leadership,
// the former leader's lag and gap gauges drop to 0: only the leader knows
// them, and frozen at its last value an alert on any agent would fire for
// ever (as it did).
func TestLagWhileNotStreaming(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1})
	primary, standby := env.pg.Primary(), env.pg.Standbys()[0]
	a := env.startAgent(env.stolon.KeeperUID(primary))
	env.startAgent(env.stolon.KeeperUID(standby))
	env.leaderFor(primary)
	env.waitArchived(primary, 20*time.Second)

	// Take the slot away: end the agent's walsender and stream from the
	// slot ourselves before the agent reconnects.
	var holder *pgconn.PgConn
	waitFor(t, 20*time.Second, "the test to hold the slot", func() bool {
		_ = primary.Exec(ctx, "select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = 'barnacle' and active")
		conn, err := pgconn.Connect(ctx, primary.ReplConnString())
		if err != nil {
			return false
		}
		sys, err := pglogrepl.IdentifySystem(ctx, conn)
		if err == nil {
			err = pglogrepl.StartReplication(ctx, conn, "barnacle", sys.XLogPos, pglogrepl.StartReplicationOptions{Mode: pglogrepl.PhysicalReplication})
		}
		if err != nil {
			_ = conn.Close(ctx)
			return false
		}
		holder = conn
		return true
	})
	t.Cleanup(func() { _ = holder.Close(context.Background()) })
	waitFor(t, 20*time.Second, "streaming to stop", func() bool {
		return metricValue(scrape(t, a), "barnacle_wal_streaming") == 0
	})
	archived := wal.LSN(metricValue(scrape(t, a), "barnacle_wal_flushed_position_bytes"))
	require.Positive(t, archived)

	require.NoError(t, primary.Exec(ctx, "CREATE TABLE lag (v text); INSERT INTO lag SELECT repeat('x', 200) FROM generate_series(1, 20000)"))
	cur, err := primary.CurrentLSN(ctx)
	require.NoError(t, err)
	want := float64(wal.LSN(cur) - archived)
	var lag float64
	deadline := time.Now().Add(20 * time.Second)
	for lag = metricValue(scrape(t, a), "barnacle_wal_archive_lag_bytes"); lag < want; lag = metricValue(scrape(t, a), "barnacle_wal_archive_lag_bytes") {
		require.True(t, time.Now().Before(deadline), "lag %.0f bytes, want at least %.0f (master at %s, archived %s)", lag, want, wal.LSN(cur), archived)
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("not streaming: master at %s, archived %s, lag %.0f bytes", wal.LSN(cur), archived, lag)

	require.NoError(t, env.stolon.Failover(ctx, standby))
	env.leaderFor(standby)
	waitFor(t, 20*time.Second, "the former leader's lag and gap gauges to drop to 0", func() bool {
		m := scrape(t, a)
		return metricValue(m, "barnacle_wal_archive_lag_bytes") == 0 && metricValue(m, "barnacle_wal_archive_lag_seconds") == 0 &&
			metricValue(m, "barnacle_wal_gaps") == 0 && metricValue(m, "barnacle_wal_gap_bytes") == 0
	})
}

// nudgeWAL makes the WAL a test waits to see archived: an idle server may
// write none for minutes, and an agent that resumes at the end of the
// archive then has nothing to archive. A transaction with an XID writes a
// commit record. It returns false, for use in a waitFor condition.
func nudgeWAL(t *testing.T, node *testenv.Node) bool {
	t.Helper()
	_ = node.Exec(t.Context(), "SELECT txid_current()")
	return false
}

func stopAgent(t *testing.T, a *agentProc) {
	t.Helper()
	a.signal(syscall.SIGTERM)
	err, ok := a.wait(10 * time.Second)
	require.True(t, ok, "agent %s did not stop", a.name)
	require.NoError(t, err)
}
