package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

// TestRetentionAfterBackup: with retention-policy set, the leader applies
// it as soon as a backup is done, not at its next periodic check.
func TestRetentionAfterBackup(t *testing.T) {
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{}, "--retention-policy", "REDUNDANCY 1")
	env.startAgents()
	env.leaderFor(env.pg.Primary())
	store := []string{"--cluster-name", cluster, "--store-endpoints", strings.Join(env.etcd.Endpoints(), ",")}
	backup := func() request.BackupStatus {
		t.Helper()
		out, stderr, code := barnacle(t, append([]string{"backup", "--wait", "--json"}, store...)...)
		require.Equal(t, 0, code, "backup --wait: %s %s", out, stderr)
		var st request.BackupStatus
		require.NoError(t, json.Unmarshal([]byte(out), &st), out)
		require.Equal(t, request.StateDone, st.State, st.Error)
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
