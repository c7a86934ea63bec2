package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/agent"
	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
)

// TestRetentionAfterBackup: with retention-policy set, the leader applies
// it as soon as a backup is done, not at its next periodic check.
func TestRetentionAfterBackup(t *testing.T) {
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{}, "--retention-policy", "REDUNDANCY 1")
	env.startAgents()
	env.leaderFor(env.pg.Primary())
	store := []string{"--cluster-name", cluster, "--store-endpoints", strings.Join(env.etcd.Endpoints(), ",")}
	backup := func() agent.RequestStatus {
		t.Helper()
		out, stderr, code := barnacle(t, append([]string{"backup", "--wait", "--json"}, store...)...)
		require.Equal(t, 0, code, "backup --wait: %s %s", out, stderr)
		var st agent.RequestStatus
		require.NoError(t, json.Unmarshal([]byte(out), &st), out)
		require.Equal(t, agent.StateDone, st.State, st.Error)
		return st
	}
	first := backup()
	second := backup()
	took := waitFor(t, 20*time.Second, "retention to delete the first backup", func() bool {
		list, err := catalog.ListBackups(ctx, env.backend, cluster)
		return err == nil && len(list) == 1 && list[0].ID == second.Result.ID
	})
	t.Logf("backup %s deleted %s after backup %s was done", first.Result.ID, took.Round(100*time.Millisecond), second.Result.ID)
}
