package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
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
)

// TestRequestsServedWhileBusy: a claimed backup runs beside the watch
// loop, so the agent running it still answers other requests; the leader
// marks failed a restore request whose agent was killed while running it,
// instead of leaving it "running" forever; requests refused before
// anything is written end rejected; a failed forced restore says where the
// old contents went.
func TestRequestsServedWhileBusy(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	restoreRoot := filepath.Join(t.TempDir(), "restores")
	require.NoError(t, os.MkdirAll(restoreRoot, 0o755))
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1}, "--restore-root", restoreRoot)
	env.startAgents()
	primary := env.pg.Primary()
	leader := env.leaderFor(primary)
	env.waitArchived(primary, 30*time.Second)
	cli := env.etcd.Client(t)
	keys := coordinator.NewKeys("barnacle", cluster)

	// Hold the WAL archive (its directory replaced by a file): a backup is
	// done only once its WAL is archived, so the requested one runs until
	// the archive is given back.
	wals := filepath.Join(env.dir, cluster, "wals")
	require.NoError(t, os.Rename(wals, wals+".held"))
	require.NoError(t, os.WriteFile(wals, nil, 0o644))
	released := false
	release := func() {
		if !released {
			released = true
			require.NoError(t, os.Remove(wals))
			require.NoError(t, os.Rename(wals+".held", wals))
		}
	}
	t.Cleanup(release)

	_, err := cli.Put(ctx, reqKeys(keys).Request(request.KindBackup, "long"), `{"from":"master","label":"long"}`)
	require.NoError(t, err)
	var long request.BackupStatus
	waitFor(t, 60*time.Second, "the long backup to run", func() bool {
		long = readStatus[request.BackupResult](t, cli, reqKeys(keys).Status(request.KindBackup, "long"))
		return long.State == request.StateRunning
	})
	assert.Equal(t, leader.name, long.Agent)

	// While it runs, the leader rejects a bad request at once.
	_, err = cli.Put(ctx, reqKeys(keys).Request(request.KindBackup, "bad"), `{"from":"nowhere"}`)
	require.NoError(t, err)
	var bad request.BackupStatus
	waitFor(t, 30*time.Second, "the bad request to be rejected while the backup runs", func() bool {
		bad = readStatus[request.BackupResult](t, cli, reqKeys(keys).Status(request.KindBackup, "bad"))
		return bad.FinishedAt != nil
	})
	assert.Equal(t, request.StateRejected, bad.State)
	assert.Contains(t, bad.Error, `unknown from "nowhere"`)
	assert.Equal(t, leader.name, bad.Agent)
	long = readStatus[request.BackupResult](t, cli, reqKeys(keys).Status(request.KindBackup, "long"))
	require.Equal(t, request.StateRunning, long.State, "the backup was still running: %+v", long)

	// Given the archive back, the backup finishes.
	release()
	waitFor(t, 90*time.Second, "the long backup to finish", func() bool {
		long = readStatus[request.BackupResult](t, cli, reqKeys(keys).Status(request.KindBackup, "long"))
		return long.FinishedAt != nil
	})
	assert.Equal(t, request.StateDone, long.State, long.Error)
	require.NotNil(t, long.Result)
	backupID := long.Result.ID
	doc, err := catalog.ReadBackup(ctx, env.backend, cluster, backupID)
	require.NoError(t, err)
	var base string
	for _, f := range doc.Files {
		if strings.HasPrefix(f.Name, "base.tar") {
			base = filepath.Join(env.dir, catalog.BackupPrefix(cluster, backupID), f.Name)
		}
	}
	require.NotEmpty(t, base)

	// A restore request that the standby's agent claims and is running
	// when it is killed: its base archive is a FIFO nobody writes, so the
	// restore waits in it.
	require.NoError(t, os.Rename(base, base+".held"))
	require.NoError(t, syscall.Mkfifo(base, 0o644))
	standbyKeeper := env.stolon.KeeperUID(env.pg.Standbys()[0])
	standbyAgent := env.agents[standbyKeeper]
	_, err = cli.Put(ctx, reqKeys(keys).Request(request.KindRestore, "orphan"),
		`{"keeper":"`+standbyKeeper+`","backup":"`+backupID+`","targetDir":"`+restoreRoot+`/orphan"}`)
	require.NoError(t, err)
	var swept request.RestoreStatus
	waitFor(t, 60*time.Second, "the standby's agent to run the restore", func() bool {
		swept = readStatus[request.RestoreResult](t, cli, reqKeys(keys).Status(request.KindRestore, "orphan"))
		return swept.State == request.StateRunning
	})
	require.Equal(t, standbyAgent.name, swept.Agent)
	standbyAgent.signal(syscall.SIGKILL)
	_, ok := standbyAgent.wait(10 * time.Second)
	require.True(t, ok)
	took := waitFor(t, 60*time.Second, "the dead agent's restore request to be marked failed", func() bool {
		swept = readStatus[request.RestoreResult](t, cli, reqKeys(keys).Status(request.KindRestore, "orphan"))
		return swept.FinishedAt != nil
	})
	assert.Equal(t, request.StateFailed, swept.State)
	assert.Contains(t, swept.Error, "agent "+standbyAgent.name+" stopped before the restore finished")
	assert.Contains(t, swept.Error, "partial restore")
	t.Logf("restore request of a killed agent marked failed %s after the kill: %s", took.Round(time.Second), swept.Error)
	require.NoError(t, os.Remove(base))
	require.NoError(t, os.Rename(base+".held", base))

	// Refused before anything is written: rejected, not failed.
	keeper := env.stolon.KeeperUID(primary)
	for _, tc := range []struct{ id, key, value, want string }{
		{"trailing-backup", reqKeys(keys).Request(request.KindBackup, "trailing-backup"), `{"from":"master"} {"x":1}`, "trailing data after the JSON object"},
		{"trailing-restore", reqKeys(keys).Request(request.KindRestore, "trailing-restore"),
			`{"keeper":"` + keeper + `","targetDir":"` + restoreRoot + `/t"} {"x":1}`, "trailing data after the JSON object"},
		{"bad-id", reqKeys(keys).Request(request.KindRestore, "bad-id"),
			`{"keeper":"` + keeper + `","backup":"../../etc","targetDir":"` + restoreRoot + `/t"}`, `invalid backup ID "../../etc"`},
		{"unknown-oid", reqKeys(keys).Request(request.KindRestore, "unknown-oid"),
			`{"keeper":"` + keeper + `","backup":"` + backupID + `","targetDir":"` + restoreRoot + `/t","tablespaceMap":{"99999":"` + restoreRoot + `/ts"}}`,
			"tablespace map names tablespace 99999, which backup " + backupID + " does not have"},
		// Just under etcd's request size limit; the rejection quotes it.
		{"huge", reqKeys(keys).Request(request.KindRestore, "huge"),
			`{"keeper":"` + strings.Repeat("k", 1400<<10) + `","targetDir":"` + restoreRoot + `/t"}`, `unknown keeper "kkkk`},
	} {
		_, err := cli.Put(ctx, tc.key, tc.value)
		require.NoError(t, err)
		statusKey := reqKeys(keys).Status(request.KindBackup, tc.id)
		if strings.Contains(tc.key, "/requests/restore/") {
			statusKey = reqKeys(keys).Status(request.KindRestore, tc.id)
		}
		var st request.Status[json.RawMessage]
		waitFor(t, 30*time.Second, "request "+tc.id+" to be answered", func() bool {
			st = readStatus[json.RawMessage](t, cli, statusKey)
			return st.FinishedAt != nil
		})
		assert.Equal(t, request.StateRejected, st.State, tc.id)
		assert.Contains(t, st.Error, tc.want, tc.id)
		if tc.id == "huge" {
			assert.Nil(t, st.Request, "a huge request is not echoed")
			assert.Equal(t, len(tc.value), st.RequestBytes)
			assert.Less(t, len(st.Error), 4<<10)
		}
	}
	assert.NoDirExists(t, filepath.Join(restoreRoot, "t"))
	assert.NoDirExists(t, filepath.Join(restoreRoot, "ts"))

	// A forced restore that fails after moving the old contents aside
	// says where they are: the backup's base archive is damaged.
	data, err := os.ReadFile(base)
	require.NoError(t, err)
	data[len(data)/2] ^= 0xff
	require.NoError(t, os.WriteFile(base, data, 0o644))
	forced := filepath.Join(restoreRoot, "forced")
	require.NoError(t, os.MkdirAll(forced, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(forced, "keep-me"), []byte("x"), 0o644))
	_, err = cli.Put(ctx, reqKeys(keys).Request(request.KindRestore, "forced"),
		`{"keeper":"`+keeper+`","backup":"`+backupID+`","targetDir":"`+forced+`","force":true}`)
	require.NoError(t, err)
	var fst request.RestoreStatus
	waitFor(t, 60*time.Second, "the forced restore to end", func() bool {
		fst = readStatus[request.RestoreResult](t, cli, reqKeys(keys).Status(request.KindRestore, "forced"))
		return fst.FinishedAt != nil
	})
	require.Equal(t, request.StateFailed, fst.State, fst.Error)
	require.NotNil(t, fst.Result, "the failed status carries where the old contents went")
	require.Len(t, fst.Result.MovedAside, 1)
	moved := fst.Result.MovedAside[forced]
	require.NotEmpty(t, moved, "%v", fst.Result.MovedAside)
	assert.Contains(t, fst.Error, "the old contents of "+forced+" are in "+moved)
	assert.FileExists(t, filepath.Join(moved, "keep-me"))
	t.Logf("failed forced restore: %s", fst.Error)
}

// readStatus reads a request's status key; the zero value when absent.
func readStatus[R any](t *testing.T, cli *clientv3.Client, key string) request.Status[R] {
	t.Helper()
	var st request.Status[R]
	resp, err := cli.Get(t.Context(), key)
	if err != nil || len(resp.Kvs) == 0 {
		return st
	}
	require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &st))
	return st
}

// TestWaitWithoutLeader: barnacle backup --wait with no agent says so, and
// a request nobody claimed is withdrawn when the wait ends (timeout,
// Ctrl-C), so that a leader elected later does not run it; a request an
// agent claimed meanwhile is left to run.
func TestWaitWithoutLeader(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client(t)
	keys := coordinator.NewKeys("barnacle", cluster)
	store := []string{"--cluster-name", cluster, "--store-endpoints", strings.Join(etcd.Endpoints(), ",")}
	requests := func(kind string) []string {
		t.Helper()
		resp, err := cli.Get(ctx, keys.Prefix+"requests/"+kind+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		require.NoError(t, err)
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, string(kv.Key))
		}
		return out
	}

	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		_, stderr, code := barnacle(t, append([]string{"backup", "--wait", "--timeout", "2s"}, store...)...)
		assert.Equal(t, 1, code, stderr)
		assert.Contains(t, stderr, "no agent leads the cluster now")
		assert.Contains(t, stderr, "timed out after 2s before any agent claimed it; the request is withdrawn")
		assert.Empty(t, requests("backup"))
		assert.Less(t, time.Since(start), 25*time.Second)
	})

	t.Run("interrupt", func(t *testing.T) {
		p := startBarnacle(t, append([]string{"backup", "--wait"}, store...)...)
		waitFor(t, 20*time.Second, "the request to be written", func() bool {
			return strings.Contains(p.stderr(), "written to") && len(requests("backup")) == 1
		})
		require.NoError(t, p.cmd.Process.Signal(os.Interrupt))
		code := p.wait(t, 20*time.Second)
		assert.Equal(t, 1, code, p.stderr())
		assert.Contains(t, p.stderr(), "interrupted before any agent claimed it; the request is withdrawn")
		assert.Empty(t, requests("backup"))
	})

	t.Run("claimed meanwhile", func(t *testing.T) {
		// An agent claims the request (writes its status key) while the
		// command waits: the timeout must not withdraw it. The claim must
		// land before the timeout, which a loaded machine may delay by
		// seconds: 10 s leave room.
		p := startBarnacle(t, append([]string{"backup", "--wait", "--timeout", "10s"}, store...)...)
		var reqKey string
		waitFor(t, 20*time.Second, "the request to be written", func() bool {
			r := requests("backup")
			if len(r) == 1 {
				reqKey = r[0]
			}
			return reqKey != ""
		})
		id := strings.TrimPrefix(reqKey, keys.Prefix+"requests/backup/")
		st, err := json.Marshal(request.BackupStatus{State: request.StateRunning, Agent: "agent-elsewhere", StartedAt: time.Now().UTC()})
		require.NoError(t, err)
		_, err = cli.Put(ctx, reqKeys(keys).Status(request.KindBackup, id), string(st))
		require.NoError(t, err)
		code := p.wait(t, 30*time.Second)
		assert.Equal(t, 1, code, p.stderr())
		assert.Contains(t, p.stderr(), "timed out after 10s; agent agent-elsewhere claimed it and goes on")
		assert.Equal(t, []string{reqKey}, requests("backup"), "the claimed request stays")
	})

	t.Run("restore via etcd", func(t *testing.T) {
		_, stderr, code := barnacle(t, append([]string{"restore", "--via-etcd", "--keeper", "keeper9", "--target-dir", "/restore/x",
			"--target-time", "2026-11-25 10:00:00+00", "--timeout", "2s"}, store...)...)
		assert.Equal(t, 1, code, stderr)
		assert.Contains(t, stderr, "no agent runs beside keeper keeper9 and no agent leads")
		assert.Contains(t, stderr, "timed out after 2s before any agent claimed it; the request is withdrawn")
		assert.Empty(t, requests("restore"))
	})
}

// barnacleProc is a barnacle command running in the background.
type barnacleProc struct {
	cmd        *exec.Cmd
	outb, errb testenv.SyncBuffer
	done       chan error
}

func (p *barnacleProc) stdout() string { return p.outb.String() }

func (p *barnacleProc) stderr() string { return p.errb.String() }

// startBarnacle starts the binary with args; it is killed at the end of
// the test if still running.
func startBarnacle(t *testing.T, args ...string) *barnacleProc {
	t.Helper()
	p := &barnacleProc{cmd: exec.Command(binary, args...), done: make(chan error, 1)}
	p.cmd.Stderr, p.cmd.Stdout = &p.errb, &p.outb
	require.NoError(t, p.cmd.Start())
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		p.done <- nil
	})
	return p
}

// wait waits for the command to exit and returns its exit code.
func (p *barnacleProc) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		require.NoError(t, err)
		return 0
	case <-time.After(within):
		t.Fatalf("barnacle %v did not exit within %s:\n%s", p.cmd.Args, within, p.stderr())
		return -1
	}
}

// reqKeys lays out the request keys under keys' prefix.
func reqKeys(keys coordinator.Keys) request.Keys { return request.Keys{Prefix: keys.Prefix} }
