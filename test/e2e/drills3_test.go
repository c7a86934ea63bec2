package e2e

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// drillWatch samples, while a drill runs, what another user of the host
// could look at: the restored server's postgresql.auto.conf (its
// restore_command), its log, and the command line of every process.
type drillWatch struct {
	mu        sync.Mutex
	autoConf  string
	serverLog string
	cmdlines  map[string]bool
	stop      chan struct{}
	done      chan struct{}
}

func watchDrill(root string) *drillWatch {
	w := &drillWatch{cmdlines: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			w.sample(root)
			select {
			case <-w.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *drillWatch) sample(root string) {
	dirs, _ := filepath.Glob(filepath.Join(root, "barnacle-drill-*"))
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, d := range dirs {
		if b, err := os.ReadFile(filepath.Join(d, "data", "postgresql.auto.conf")); err == nil && len(b) > len(w.autoConf) {
			w.autoConf = string(b)
		}
		if b, err := os.ReadFile(filepath.Join(d, "postgres.log")); err == nil && len(b) > len(w.serverLog) {
			w.serverLog = string(b)
		}
	}
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 {
			continue
		}
		w.cmdlines[strings.ReplaceAll(string(b), "\x00", " ")] = true
	}
}

func (w *drillWatch) finish() {
	close(w.stop)
	<-w.done
}

// TestDrillS3: a restore drill through an agent against an s3:// archive
// (versitygw) succeeds: the restored server's restore_command, barnacle
// wal-fetch with the archive URL, gets the S3 credentials from the
// environment the agent passes on. The secret key lands nowhere visible:
// not in the drill record, its request status, the agents' logs, the CLI's
// output, the restored server's postgresql.auto.conf or log, nor on any
// process's command line while the drill runs.
func TestDrillS3(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := testenv.StartS3(t)
	env, url := newS3ArchiveEnv(t, srv, testenv.ClusterOptions{Standbys: 1})
	secret := srv.SecretKey
	require.GreaterOrEqual(t, len(secret), 8, "a secret long enough not to appear by chance")
	primary, standby := env.pg.Primary(), env.pg.Standbys()[0]
	masterKeeper, standbyKeeper := env.stolon.KeeperUID(primary), env.stolon.KeeperUID(standby)
	root := scratchRoot(t, "drills")
	env.startAgent(masterKeeper)
	driller := newAgentProc(t, "agent-"+standbyKeeper, append([]string{"--keeper-uid", standbyKeeper,
		"--restore-root", root, "--pg-bin-dir", testenv.PGBinDir(t)}, env.common...)...)
	driller.env = env.env
	driller.start(t)
	env.agents[standbyKeeper] = driller
	env.leaderFor(primary)
	store := env.store()

	out, stderr, code := barnacle(t, append([]string{"backup", "--wait"}, store...)...)
	require.Equal(t, 0, code, "backup: %s %s", out, stderr)
	// WAL after the backup: the drill replays it through wal-fetch from S3.
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE drill (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"))
	insertDrillRows(t, primary, 1, 100)
	last := env.waitArchived(primary, time.Minute)

	w := watchDrill(root)
	out, stderr, code = runBarnacle(t, 5*time.Minute, append([]string{"drill", "--wait", "--json"}, store...)...)
	w.finish()
	require.Equal(t, 0, code, "drill: %s %s", out, stderr)
	var st request.DrillStatus
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.NotNil(t, st.Result, out)
	d := *st.Result
	assert.Equal(t, driller.name, st.Agent)
	assert.Equal(t, catalog.DrillDone, d.Status)
	assert.True(t, d.Reached.LSN >= last, "replay through wal-fetch from S3 reached %s, the WAL archived after the backup ends at %s", d.Reached.LSN, last)
	assert.Positive(t, d.Checked)
	requireEmptyDir(t, root)

	// What the watch saw proves it looked at the running drill.
	require.Contains(t, w.autoConf, "wal-fetch", "postgresql.auto.conf of the restored server was read while it ran")
	base, _, _ := strings.Cut(url, "?") // the rest is %-escaped for postgresql.auto.conf
	require.Contains(t, w.autoConf, base, "restore_command names the archive URL")
	sawServer := false
	for c := range w.cmdlines {
		sawServer = sawServer || strings.Contains(c, "barnacle-drill-"+d.ID)
	}
	require.True(t, sawServer, "the restored server's command line was sampled")

	outputs := map[string]string{
		"barnacle drill --wait --json": out + stderr,
		"postgresql.auto.conf":         w.autoConf,
		"the restored server's log":    w.serverLog,
	}
	rc, err := env.backend.Get(ctx, catalog.DrillObject(cluster, d.ID))
	require.NoError(t, err)
	record, err := io.ReadAll(rc)
	_ = rc.Close()
	require.NoError(t, err)
	outputs["the drill record "+catalog.DrillObject(cluster, d.ID)] = string(record)
	keys := request.Keys{Prefix: coordinator.NewKeys("barnacle", cluster).Prefix}
	// The only drill request: its status key holds the same document.
	resp, err := env.etcd.Client(t).Get(ctx, keys.Statuses(request.KindDrill), clientv3.WithPrefix())
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	outputs["etcd "+string(resp.Kvs[0].Key)] = string(resp.Kvs[0].Value)
	for _, a := range env.list() {
		b, err := os.ReadFile(a.logPath)
		require.NoError(t, err)
		outputs["log of "+a.name] = string(b)
	}
	require.Contains(t, outputs["log of "+driller.name], "drill request finished", "the driller's log was collected")
	for c := range w.cmdlines {
		outputs["command line "+c] = c
	}
	for what, o := range outputs {
		if strings.Contains(o, secret) {
			t.Errorf("the S3 secret key appears in %s", what)
		}
	}
}
