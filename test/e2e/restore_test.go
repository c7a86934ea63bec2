package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

// pitrHistory is what the restore scenario wrote: rows 1..N committed one
// per transaction, and the moments between them that the restores target.
type pitrHistory struct {
	backupID string
	// t1 lies after row 100 (timeline 1), t2 after row 200 (timeline 2).
	t1, t2 time.Time
	// lsn1 is the WAL position right after row 100's commit; restore point
	// "after_100" is there too.
	lsn1 string
	// xid100 is the transaction that committed row 100.
	xid100 string
	// rows is the number of rows committed in all; the last ones exist
	// only in the newest .partial segment of timeline 2.
	rows int
}

// insertRows commits rows from..to, one transaction each.
func insertRows(t *testing.T, n *testenv.Node, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		require.NoError(t, n.Exec(t.Context(), "INSERT INTO pitr (id) VALUES ($1)", i))
	}
}

// markMoment returns a server timestamp strictly between the last commit
// and the next one.
func markMoment(t *testing.T, n *testenv.Node) time.Time {
	t.Helper()
	time.Sleep(30 * time.Millisecond)
	var at time.Time
	require.NoError(t, n.QueryRow(t.Context(), "SELECT clock_timestamp()").Scan(&at))
	time.Sleep(30 * time.Millisecond)
	return at
}

// countRows reads the restored server's rows: how many, and the highest id.
func countRows(t *testing.T, n *testenv.Node) (count, maxID int64) {
	t.Helper()
	require.NoError(t, n.QueryRow(t.Context(), "SELECT count(*), coalesce(max(id), 0) FROM pitr").Scan(&count, &maxID))
	return count, maxID
}

// TestRestorePITR is the restore issue end to end: rows with commit times,
// a base backup on timeline 1, a failover to timeline 2, then restores to
// points on both timelines through the CLI, through an etcd request and
// through Stolon's PITR init, each started and queried; and the requests
// that must be refused, refused with the target untouched.
func TestRestorePITR(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	restoreRoot := filepath.Join(t.TempDir(), "restores")
	require.NoError(t, os.MkdirAll(restoreRoot, 0o755))
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1}, "--compression", "zstd", "--restore-root", restoreRoot)
	shareArchiveWithPostgres(t, env.dir)
	env.startAgents()
	primary := env.pg.Primary()
	standby := env.pg.Standbys()[0]
	env.leaderFor(primary)
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE pitr (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"))

	var h pitrHistory
	insertRows(t, primary, 1, 50)
	store := env.store()
	bst := backupWait(t, store...)
	h.backupID = bst.Result.ID

	insertRows(t, primary, 51, 100)
	require.NoError(t, primary.QueryRow(ctx, "SELECT xmin::text FROM pitr WHERE id = 100").Scan(&h.xid100))
	require.NoError(t, primary.QueryRow(ctx, "SELECT pg_create_restore_point('after_100')::text").Scan(&h.lsn1))
	h.t1 = markMoment(t, primary)
	insertRows(t, primary, 101, 150)

	// Fail over once the standby and the archive have everything, so that
	// rows 1..150 all exist on timeline 2.
	end := env.waitArchived(primary, 30*time.Second)
	waitFor(t, 30*time.Second, "the standby to replay row 150", func() bool {
		n, err := standby.QueryInt64(ctx, "SELECT count(*) FROM pitr")
		return err == nil && n == 150
	})
	require.NoError(t, primary.Kill())
	require.NoError(t, env.stolon.Failover(ctx, standby))
	env.leaderFor(standby)
	insertRows(t, standby, 151, 200)
	h.t2 = markMoment(t, standby)
	insertRows(t, standby, 201, 250)
	h.rows = 250
	end = env.waitArchived(standby, 30*time.Second)
	t.Logf("backup %s on timeline 1; t1=%s lsn1=%s; failover; t2=%s; archive end %s", h.backupID, h.t1.Format(time.RFC3339Nano), h.lsn1, h.t2.Format(time.RFC3339Nano), end)

	archiveArgs := []string{"--cluster-name", cluster, "--archive-url", "file://" + env.dir}
	restoreCLI := func(t *testing.T, dir string, extra ...string) {
		t.Helper()
		args := append(append([]string{"restore", "--target-dir", dir, "--target-action", "promote"}, archiveArgs...), extra...)
		out, stderr, code := barnacle(t, args...)
		require.Equal(t, 0, code, "restore %v:\n%s\n%s", extra, out, stderr)
	}
	started := func(t *testing.T, dir string) *testenv.Node {
		t.Helper()
		n := testenv.StartRestored(t, dir)
		waitFor(t, 60*time.Second, "recovery to end", func() bool {
			in, err := n.IsInRecovery(ctx)
			return err == nil && !in
		})
		return n.Node
	}
	requireRows := func(t *testing.T, n *testenv.Node, want int64) {
		t.Helper()
		count, maxID := countRows(t, n)
		assert.Equal(t, want, count, "rows")
		assert.Equal(t, want, maxID, "highest id")
	}

	t.Run("time before the failover (timeline 1 part of timeline 2)", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "t1")
		restoreCLI(t, dir, "--target-time", h.t1.Format(time.RFC3339Nano))
		requireRows(t, started(t, dir), 100)
	})
	t.Run("time on timeline 2 from a timeline 1 backup", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "t2")
		restoreCLI(t, dir, "--target-time", h.t2.Format(time.RFC3339Nano))
		n := started(t, dir)
		requireRows(t, n, 200)
	})
	t.Run("end of the archive including the partial segment", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "end")
		restoreCLI(t, dir, "--backup", h.backupID)
		requireRows(t, started(t, dir), int64(h.rows))
	})
	t.Run("lsn", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "lsn")
		restoreCLI(t, dir, "--target-lsn", h.lsn1)
		requireRows(t, started(t, dir), 100)
	})
	t.Run("restore point", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "name")
		restoreCLI(t, dir, "--target-name", "after_100")
		requireRows(t, started(t, dir), 100)
	})

	t.Run("refused", func(t *testing.T) {
		// A directory with a running PostgreSQL: the new master's own.
		before := dirListing(t, standby.DataDir)
		out, stderr, code := barnacle(t, append([]string{"restore", "--target-dir", standby.DataDir, "--force"}, archiveArgs...)...)
		assert.Equal(t, 1, code, out)
		assert.Contains(t, stderr, "running")
		assert.Equal(t, before, dirListing(t, standby.DataDir), "the live data directory is untouched")

		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"unknown backup", []string{"--backup", "20200101T000000"}, "20200101T000000"},
			{"time in the future", []string{"--target-time", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, "after the last archived commit"},
			{"time before the first backup", []string{"--target-time", "2020-01-01T00:00:00Z"}, "before"},
		} {
			dir := filepath.Join(t.TempDir(), "refused")
			require.NoError(t, os.MkdirAll(dir, 0o700))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "keep-me"), []byte("x"), 0o600))
			out, stderr, code := barnacle(t, append(append([]string{"restore", "--target-dir", dir}, archiveArgs...), tc.args...)...)
			assert.NotEqual(t, 0, code, "%s: %s", tc.name, out)
			assert.Contains(t, stderr, tc.want, tc.name)
			assert.Equal(t, []string{"keep-me"}, dirListing(t, dir), "%s: target untouched", tc.name)
		}
	})

	t.Run("etcd request", func(t *testing.T) {
		// The agent beside the new master's keeper restores into a
		// directory under its restore-root; barnacle restore --via-etcd
		// writes the request and follows it.
		// The time in PostgreSQL's form, as the help and Stolon's
		// recoveryTargetTime write it: the agent reads it with the CLI's
		// parser.
		keeper := env.stolon.KeeperUID(standby)
		dir := filepath.Join(restoreRoot, "via-etcd")
		args := append([]string{"restore", "--via-etcd", "--keeper", keeper, "--target-dir", dir,
			"--target-time", h.t1.UTC().Format("2006-01-02 15:04:05.999999-07"), "--target-action", "promote", "--json"}, store...)
		out, stderr, code := barnacle(t, args...)
		require.Equal(t, 0, code, "restore --via-etcd:\n%s\n%s", out, stderr)
		requireRows(t, started(t, dir), 100)

		// --target-exclusive travels as targetExclusive and becomes
		// recovery_target_inclusive = off: recovery stops just before the
		// transaction of row 100.
		dir = filepath.Join(restoreRoot, "via-etcd-exclusive")
		args = append([]string{"restore", "--via-etcd", "--keeper", keeper, "--target-dir", dir,
			"--target-xid", h.xid100, "--target-exclusive", "--target-action", "promote"}, store...)
		out, stderr, code = barnacle(t, args...)
		require.Equal(t, 0, code, "restore --via-etcd --target-exclusive:\n%s\n%s", out, stderr)
		conf, err := os.ReadFile(filepath.Join(dir, "postgresql.auto.conf"))
		require.NoError(t, err)
		assert.Contains(t, string(conf), "recovery_target_xid = '"+h.xid100+"'")
		assert.Contains(t, string(conf), "recovery_target_inclusive = 'false'")
		requireRows(t, started(t, dir), 99)

		// Refusals through etcd: each gets state rejected and a message
		// saying what to change; no directory appears.
		cli := env.etcd.Client(t)
		keys := coordinator.NewKeys("barnacle", cluster)
		outside := filepath.Join(t.TempDir(), "outside")
		for _, tc := range []struct{ id, value, want string }{
			{"unknown-keeper", `{"keeper":"nosuchkeeper","targetDir":"` + restoreRoot + `/x"}`, `unknown keeper "nosuchkeeper"`},
			{"outside-root", `{"keeper":"` + keeper + `","targetDir":"` + outside + `"}`, "restore-root"},
			{"unknown-backup", `{"keeper":"` + keeper + `","backup":"20200101T000000","targetDir":"` + restoreRoot + `/y"}`, "20200101T000000"},
			{"malformed", `{"keeper":`, "malformed request"},
			{"time-without-zone", `{"keeper":"` + keeper + `","targetDir":"` + restoreRoot + `/z","target":{"time":"2026-11-25 10:00:00"}}`, `target.time "2026-11-25 10:00:00": use RFC 3339 or PostgreSQL's form, with a zone`},
			{"unknown-restore-point", `{"keeper":"` + keeper + `","targetDir":"` + restoreRoot + `/z","target":{"name":"after_10O"}}`, `target name "after_10O" (--target-name; target.name in a restore request): no restore point of that name in the archived WAL`},
			{"exclusive-restore-point", `{"keeper":"` + keeper + `","targetDir":"` + restoreRoot + `/z","target":{"name":"after_100"},"targetExclusive":true}`, "targetExclusive applies to a time, LSN or xid target"},
		} {
			_, err := cli.Put(ctx, reqKeys(keys).Request(request.KindRestore, tc.id), tc.value)
			require.NoError(t, err)
			st := waitRestoreStatus(t, cli, keys, tc.id)
			assert.Equal(t, request.StateRejected, st.State, tc.id)
			assert.Contains(t, st.Error, tc.want, tc.id)
		}
		assert.NoDirExists(t, outside)
		assert.NoDirExists(t, filepath.Join(restoreRoot, "x"))
		assert.NoDirExists(t, filepath.Join(restoreRoot, "y"))
		assert.NoDirExists(t, filepath.Join(restoreRoot, "z"))
	})

	t.Run("stolon pitr init", func(t *testing.T) {
		// Last: it replaces the cluster. The exact stolonctl init the
		// README shows, with this test's paths.
		cfg := filepath.Join(t.TempDir(), "barnacle.yaml")
		require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf("cluster-name: %s\narchive-url: file://%s\n", cluster, env.dir)), 0o644))
		testenv.PGOwn(t, cfg)
		when := h.t2.UTC().Format("2006-01-02T15:04:05.999999-07")
		spec := fmt.Sprintf(`{"initMode":"pitr","pitrConfig":{"dataRestoreCommand":"%s restore --config %s --target-dir %%d --data-only --target-time %s","archiveRecoverySettings":{"restoreCommand":"%s wal-fetch --config %s %%f %%p"},"recoveryTargetSettings":{"recoveryTargetTime":"%s"}}}`,
			binary, cfg, when, binary, cfg, when)
		for _, a := range env.list() {
			stopAgent(t, a)
		}
		ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		require.NoError(t, env.stolon.InitPITR(ictx, standby, spec, 90*time.Second))
		requireRows(t, standby, 200)
	})
}

// waitRestoreStatus waits until restore request id has finished.
func waitRestoreStatus(t *testing.T, cli *clientv3.Client, keys coordinator.Keys, id string) request.RestoreStatus {
	t.Helper()
	var st request.RestoreStatus
	waitFor(t, 60*time.Second, "restore request "+id+" to finish", func() bool {
		resp, err := cli.Get(t.Context(), reqKeys(keys).Status(request.KindRestore, id))
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &st))
		return st.FinishedAt != nil
	})
	return st
}

// dirListing lists a directory's entry names, sorted.
func dirListing(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// shareArchiveWithPostgres lets the postgres OS user (restore_command runs
// as the server's user) read the archive the agents write as root: the
// directory belongs to postgres and is setgid, so every file and directory
// created below inherits its group, and the backend's 0640/0750 modes give
// that group read access.
func shareArchiveWithPostgres(t *testing.T, dir string) {
	t.Helper()
	testenv.PGOwn(t, dir)
	st, err := os.Stat(dir)
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, st.Mode().Perm()|os.ModeSetgid|0o050))
}
