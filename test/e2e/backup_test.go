package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// TestLocalBackupCatalog drives the catalog commands of the built binary:
// backup --local (WAL streamed beside the backup), list-backups,
// show-backup, verify-backup (clean, then with one byte flipped on disk),
// keep, delete.
func TestLocalBackupCatalog(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pg := testenv.NewCluster(t, testenv.ClusterOptions{})
	primary := pg.Primary()
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100000) g"))
	archive := archiveDir(t)
	pw := pg.ReplPasswordFile(t)
	args := func(extra ...string) []string {
		return append(extra, "--cluster-name", cluster, "--archive-url", "file://"+archive,
			"--pg-host", "127.0.0.1", "--pg-port", fmt.Sprint(primary.Port),
			"--pg-user", testenv.ReplUser, "--pg-password-file", pw, "--compression", "zstd")
	}

	out, stderr, code := barnacle(t, args("backup", "--local", "--fast", "--label", "e2e", "--json")...)
	require.Equal(t, 0, code, "backup --local: %s", stderr)
	var doc catalog.Backup
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	assert.Equal(t, catalog.StatusDone, doc.Status)
	assert.Equal(t, "e2e", doc.Label)
	assert.Equal(t, "zstd", doc.Compression)
	sysID, err := primary.SystemID(ctx)
	require.NoError(t, err)
	assert.Equal(t, sysID, doc.SystemID)
	t.Logf("backup %s: %d bytes, stored %d, %s..%s", doc.ID, doc.Bytes, doc.StoredBytes, doc.StartLSN, doc.StopLSN)

	out, stderr, code = barnacle(t, args("list-backups", "--json")...)
	require.Equal(t, 0, code, stderr)
	var list []catalog.Backup
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Len(t, list, 1)
	assert.Equal(t, doc.ID, list[0].ID)

	out, stderr, code = barnacle(t, args("show-backup", "latest", "--json")...)
	require.Equal(t, 0, code, stderr)
	var detail struct {
		Backup     catalog.Backup   `json:"backup"`
		WAL        catalog.WALCheck `json:"wal"`
		Restorable bool             `json:"restorable"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &detail), out)
	assert.True(t, detail.Restorable, "the WAL the backup needs is archived: %+v", detail.WAL)
	assert.Empty(t, detail.WAL.Missing)

	out, stderr, code = barnacle(t, args("verify-backup", "latest")...)
	require.Equal(t, 0, code, "verify-backup: %s%s", out, stderr)

	// One byte flipped in the archived base tar.
	var base string
	for _, f := range doc.Files {
		if strings.HasPrefix(f.Name, "base.tar") {
			base = f.Name
		}
	}
	require.NotEmpty(t, base)
	path := filepath.Join(archive, catalog.BackupPrefix(cluster, doc.ID), base)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	data[len(data)/2] ^= 0xff
	require.NoError(t, os.WriteFile(path, data, 0o644))
	out, stderr, code = barnacle(t, args("verify-backup", doc.ID)...)
	assert.Equal(t, 1, code)
	assert.Contains(t, out+stderr, base, "the failing file is named")

	// keep protects from delete; --release lifts it.
	_, _, code = barnacle(t, args("keep", doc.ID)...)
	require.Equal(t, 0, code)
	_, stderr, code = barnacle(t, args("delete", doc.ID)...)
	assert.Equal(t, 1, code, "a kept backup is not deleted")
	assert.Contains(t, stderr, "keep")
	_, _, code = barnacle(t, args("keep", "--release", doc.ID)...)
	require.Equal(t, 0, code)
	_, stderr, code = barnacle(t, args("delete", doc.ID)...)
	require.Equal(t, 0, code, stderr)
	out, _, code = barnacle(t, args("list-backups")...)
	require.Equal(t, 0, code)
	assert.Contains(t, out, "No backups")

	// Without --local the backup is asked of the agents through etcd.
	_, stderr, code = barnacle(t, args("backup")...)
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "store-endpoints: required")
}

// TestBackupRequests: requests written to etcd are claimed exactly once by
// the leader and run from the master; bad ones are rejected with what to
// change; barnacle backup --wait follows one to the end.
func TestBackupRequests(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1}, "--compression", "lz4")
	env.startAgents()
	primary := env.pg.Primary()
	leader := env.leaderFor(primary)
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 50000)"))
	keys := coordinator.NewKeys("barnacle", cluster)
	cli := env.etcd.Client(t)

	status := func(id string) request.BackupStatus {
		var st request.BackupStatus
		waitFor(t, 60*time.Second, "request "+id+" to finish", func() bool {
			resp, err := cli.Get(ctx, reqKeys(keys).Status(request.KindBackup, id))
			if err != nil || len(resp.Kvs) == 0 {
				return false
			}
			require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &st))
			return st.State == request.StateDone || st.State == request.StateFailed || st.State == request.StateRejected
		})
		return st
	}
	for _, tc := range []struct{ id, value, want string }{
		{"bad-json", `{not json`, "malformed request"},
		{"bad-from", `{"from":"elsewhere"}`, `unknown from "elsewhere"`},
		{"bad-field", `{"form":"master"}`, `unknown field "form"`},
	} {
		_, err := cli.Put(ctx, reqKeys(keys).Request(request.KindBackup, tc.id), tc.value)
		require.NoError(t, err)
		st := status(tc.id)
		assert.Equal(t, request.StateRejected, st.State, tc.id)
		assert.Contains(t, st.Error, tc.want, tc.id)
	}

	store := env.store()
	st := backupWait(t, append([]string{"--label", "by-request"}, store...)...)
	assert.Equal(t, request.StateDone, st.State)
	assert.Equal(t, leader.name, st.Agent, "the leader ran it")
	require.NotNil(t, st.Result)

	list, err := catalog.ListBackups(ctx, env.backend, cluster)
	require.NoError(t, err)
	require.Len(t, list, 1, "three agents, one backup")
	doc := list[0]
	assert.Equal(t, st.Result.ID, doc.ID)
	assert.Equal(t, catalog.StatusDone, doc.Status)
	assert.Equal(t, "by-request", doc.Label)
	assert.Equal(t, "lz4", doc.Compression)
	wc, err := catalog.CheckBackupWAL(ctx, env.backend, cluster, doc)
	require.NoError(t, err)
	assert.Empty(t, wc.Missing, "a done backup has its WAL archived")
	t.Logf("backup %s by request: %d bytes (stored %d), WAL %s..%s present", doc.ID, doc.Bytes, doc.StoredBytes, wc.First, wc.Last)

	// From a standby: the agent beside the standby takes it, and it is
	// done once the leader has archived the WAL up to its stop position.
	require.NoError(t, primary.Exec(ctx, "INSERT INTO t SELECT generate_series(1, 50000)"))
	_, err = cli.Put(ctx, reqKeys(keys).Request(request.KindBackup, "from-standby"), `{"from":"standby","label":"standby"}`)
	require.NoError(t, err)
	sst := status("from-standby")
	require.Equal(t, request.StateDone, sst.State, sst.Error)
	standbyAgent := env.agents[env.stolon.KeeperUID(env.pg.Standbys()[0])].name
	assert.Equal(t, standbyAgent, sst.Agent, "the standby's agent ran it")
	sdoc, err := catalog.ReadBackup(ctx, env.backend, cluster, sst.Result.ID)
	require.NoError(t, err)
	assert.Equal(t, "standby", sdoc.From)
	assert.Equal(t, env.stolon.KeeperUID(env.pg.Standbys()[0]), sdoc.KeeperUID)
	swc, err := catalog.CheckBackupWAL(ctx, env.backend, cluster, sdoc)
	require.NoError(t, err)
	assert.Empty(t, swc.Missing)
	t.Logf("backup %s from the standby: %s..%s on timeline %d", sdoc.ID, sdoc.StartLSN, sdoc.StopLSN, sdoc.StopTimeline)
}

// TestScheduledBackups: the leader requests a backup whenever the newest
// one is older than backup-schedule.
func TestScheduledBackups(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{}, "--backup-schedule", "5s")
	env.startAgents()
	env.leaderFor(env.pg.Primary())
	var done []catalog.Backup
	waitFor(t, 60*time.Second, "two scheduled backups", func() bool {
		list, err := catalog.ListBackups(ctx, env.backend, cluster)
		if err != nil {
			return false
		}
		done = done[:0]
		for _, d := range list {
			if d.Status == catalog.StatusDone && d.Label == "scheduled" {
				done = append(done, d)
			}
		}
		return len(done) >= 2
	})
	// No standby in this cluster: a request from a standby is rejected.
	keys := coordinator.NewKeys("barnacle", cluster)
	_, err := env.etcd.Client(t).Put(ctx, reqKeys(keys).Request(request.KindBackup, "no-standby"), `{"from":"standby"}`)
	require.NoError(t, err)
	waitFor(t, 20*time.Second, "the request to be rejected", func() bool {
		resp, err := env.etcd.Client(t).Get(ctx, reqKeys(keys).Status(request.KindBackup, "no-standby"))
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		var st request.BackupStatus
		return json.Unmarshal(resp.Kvs[0].Value, &st) == nil && st.State == request.StateRejected &&
			strings.Contains(st.Error, "no eligible standby")
	})
	gap := done[0].StartTime.Sub(done[1].StartTime)
	assert.GreaterOrEqual(t, gap, 5*time.Second, "backups follow the schedule, not faster")
	t.Logf("scheduled backups %s and %s, %s apart", done[1].ID, done[0].ID, gap.Round(100*time.Millisecond))
}

// TestBackupAgentKilled: kill -9 of the agent mid-backup; the backup and
// its request end failed, and the next one succeeds.
func TestBackupAgentKilled(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{})
	env.startAgents()
	primary := env.pg.Primary()
	a := env.leaderFor(primary)
	// Big enough that the backup takes a few seconds here.
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE big (id int, v text); INSERT INTO big SELECT g, md5(g::text) || repeat('x', 300) FROM generate_series(1, 800000) g"))
	keys := coordinator.NewKeys("barnacle", cluster)
	cli := env.etcd.Client(t)
	_, err := cli.Put(ctx, reqKeys(keys).Request(request.KindBackup, "first"), `{"from":"any"}`)
	require.NoError(t, err)
	waitFor(t, 30*time.Second, "the backup to be running", func() bool {
		list, err := catalog.ListBackups(ctx, env.backend, cluster)
		return err == nil && len(list) == 1 && list[0].Status == catalog.StatusRunning
	})
	a.signal(syscall.SIGKILL)
	_, _ = a.wait(5 * time.Second)
	a.start(t)
	env.leaderFor(primary)

	var first catalog.Backup
	waitFor(t, 30*time.Second, "the interrupted backup to be marked failed", func() bool {
		list, err := catalog.ListBackups(ctx, env.backend, cluster)
		if err != nil || len(list) == 0 {
			return false
		}
		first = list[0]
		return first.Status == catalog.StatusFailed
	})
	assert.Contains(t, first.Error, "stopped before it finished")
	waitFor(t, 20*time.Second, "the request to be marked failed", func() bool {
		resp, err := cli.Get(ctx, reqKeys(keys).Status(request.KindBackup, "first"))
		var st request.BackupStatus
		return err == nil && len(resp.Kvs) == 1 && json.Unmarshal(resp.Kvs[0].Value, &st) == nil && st.State == request.StateFailed
	})

	_, err = cli.Put(ctx, reqKeys(keys).Request(request.KindBackup, "second"), `{"from":"any"}`)
	require.NoError(t, err)
	waitFor(t, 90*time.Second, "the next backup to be done", func() bool {
		resp, err := cli.Get(ctx, reqKeys(keys).Status(request.KindBackup, "second"))
		var st request.BackupStatus
		return err == nil && len(resp.Kvs) == 1 && json.Unmarshal(resp.Kvs[0].Value, &st) == nil && st.State == request.StateDone
	})
	t.Logf("interrupted backup %s: %s", first.ID, first.Error)
}
