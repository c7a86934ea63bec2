package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// TestRestoreChoosesBackupForRestorePoint is the 3 a.m. restore: a restore
// point made before the newest backup. barnacle restore --target-name must
// read the archived WAL, choose the older backup that precedes the restore
// point (from the newest one PostgreSQL never meets it and refuses to
// start), choose the newest for a restore point after it, and refuse a
// name that is not in the WAL before writing anything. --target-xid is
// chosen for the same way, by the transaction's commit record.
func TestRestoreChoosesBackupForRestorePoint(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env, _, primary := newPostgresReadableEnv(t)
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE pitr (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"))

	insertRows(t, primary, 1, 50)
	first := backupWait(t, env.store()...).Result.ID
	insertRows(t, primary, 51, 100)
	var xid100 string
	require.NoError(t, primary.QueryRow(ctx, "SELECT xmin::text FROM pitr WHERE id = 100").Scan(&xid100))
	require.NoError(t, primary.Exec(ctx, "SELECT pg_create_restore_point('before_second')"))
	insertRows(t, primary, 101, 150)
	second := backupWait(t, env.store()...).Result.ID
	insertRows(t, primary, 151, 200)
	require.NoError(t, primary.Exec(ctx, "SELECT pg_create_restore_point('after_newest')"))
	insertRows(t, primary, 201, 250)
	require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
	end := env.waitArchived(primary, 60*time.Second)
	t.Logf("backups %s and %s; archive end %s", first, second, end)

	archiveArgs := []string{"--cluster-name", cluster, "--archive-url", "file://" + env.dir}
	restore := func(t *testing.T, dir string, extra ...string) (backupID string) {
		t.Helper()
		args := append(append([]string{"restore", "--target-dir", dir, "--target-action", "promote", "--json"}, archiveArgs...), extra...)
		out, stderr, code := barnacle(t, args...)
		require.Equal(t, 0, code, "restore %v:\n%s\n%s", extra, out, stderr)
		var res struct {
			BackupID string `json:"backupID"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &res), out)
		return res.BackupID
	}
	rowsAfterRecovery := func(t *testing.T, dir string) int64 {
		t.Helper()
		n := testenv.StartRestored(t, dir)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("PostgreSQL on %s:\n%s", dir, n.LogTail(15))
			}
		})
		waitFor(t, 90*time.Second, "recovery to end", func() bool {
			in, err := n.IsInRecovery(ctx)
			return err == nil && !in
		})
		count, maxID := countRows(t, n.Node)
		assert.Equal(t, count, maxID, "rows are 1..n")
		return count
	}

	t.Run("restore point before the newest backup", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "before")
		assert.Equal(t, first, restore(t, dir, "--target-name", "before_second"), "the backup that precedes the restore point")
		assert.Equal(t, int64(100), rowsAfterRecovery(t, dir))
	})
	t.Run("xid before the newest backup", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "xid")
		assert.Equal(t, first, restore(t, dir, "--target-xid", xid100), "the backup that precedes the commit")
		assert.Equal(t, int64(100), rowsAfterRecovery(t, dir))
	})
	t.Run("restore point after the newest backup", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "after")
		assert.Equal(t, second, restore(t, dir, "--target-name", "after_newest"))
		assert.Equal(t, int64(200), rowsAfterRecovery(t, dir))
	})
	t.Run("unknown name", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "unknown")
		out, stderr, code := barnacle(t, append(append([]string{"restore", "--target-dir", dir}, archiveArgs...), "--target-name", "before_secnod")...)
		assert.Equal(t, 1, code, out)
		assert.Contains(t, stderr, `target name "before_secnod" (--target-name; target.name in a restore request): no restore point of that name in the archived WAL`)
		assert.Contains(t, stderr, "check the spelling, or give --backup ID")
		_, err := os.Stat(dir)
		assert.True(t, os.IsNotExist(err), "nothing is written: %v", err)
	})
	t.Run("text output says where the record is", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "text")
		out, stderr, code := barnacle(t, append(append([]string{"restore", "--target-dir", dir}, archiveArgs...), "--target-name", "before_second")...)
		require.Equal(t, 0, code, "%s\n%s", out, stderr)
		assert.Contains(t, out, "restored backup "+first)
		assert.Contains(t, out, `note: the record of restore point "before_second" starts at `)
		assert.Contains(t, out, "after backup "+first+" stopped at ")
	})
	t.Run("named backup is not second-guessed", func(t *testing.T) {
		// The user chose: no scan, and an unknown name is PostgreSQL's to
		// judge at start-up.
		dir := filepath.Join(t.TempDir(), "named")
		assert.Equal(t, second, restore(t, dir, "--backup", second, "--target-name", "before_secnod"))
	})
}
