package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
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
			return rec.Streaming && rec.ArchivedLSN != "" || nudgeWAL(t, primary)
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
			return rec.Streaming && rec.ArchivedLSN != "" || nudgeWAL(t, primary)
		})
		stopAgent(t, a)
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
