package e2e

import (
	"testing"
	"time"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
)

// TestRetentionAfterBackup: with retention-policy set, the leader applies
// it as soon as a backup is done, not at its next periodic check.
func TestRetentionAfterBackup(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{}, "--retention-policy", "REDUNDANCY 1")
	env.startAgents()
	env.leaderFor(env.pg.Primary())
	store := env.store()
	first := backupWait(t, store...)
	second := backupWait(t, store...)
	took := waitFor(t, 20*time.Second, "retention to delete the first backup", func() bool {
		list, err := catalog.ListBackups(ctx, env.backend, cluster)
		return err == nil && len(list) == 1 && list[0].ID == second.Result.ID
	})
	t.Logf("backup %s deleted %s after backup %s was done", first.Result.ID, took.Round(100*time.Millisecond), second.Result.ID)
}
