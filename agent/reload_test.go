package agent

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/config"
)

func TestReloadKeysCoverConfig(t *testing.T) {
	known := map[string]bool{}
	for _, k := range reloadKeys {
		assert.False(t, known[k.name], "listed twice: %s", k.name)
		known[k.name] = true
	}
	for _, k := range config.Keys() {
		assert.True(t, known[k.Name], "config key %s is missing from reloadKeys: decide whether it is live", k.Name)
	}
	assert.Len(t, reloadKeys, len(config.Keys()))
}

func TestDiffConfig(t *testing.T) {
	load := func(t *testing.T, yaml string) config.Config {
		t.Helper()
		f := filepath.Join(t.TempDir(), "c.yaml")
		require.NoError(t, os.WriteFile(f, []byte(yaml), 0o600))
		c, err := config.Load(config.Sources{File: f, Env: func(string) (string, bool) { return "", false }}, config.Needs{})
		require.NoError(t, err)
		return c
	}
	base := "cluster-name: a\nstore-endpoints: http://127.0.0.1:1\nlog-level: info\n"
	cases := []struct {
		name             string
		next             string
		applied, restart []string
	}{
		{"unchanged", base, nil, nil},
		{"live keys", base + "backup-schedule: 5s\nretention-policy: REDUNDANCY 2\ncheck-max-lag: 1MB\n",
			[]string{"backup-schedule", "retention-policy", "check-max-lag"}, nil},
		{"log level", strings.Replace(base, "info", "debug", 1), []string{"log-level"}, nil},
		{"restart keys", strings.Replace(base, "cluster-name: a", "cluster-name: b", 1) + "slot-name: other\n",
			nil, []string{"cluster-name", "slot-name"}},
		{"both", base + "backup-from: any\nlease-ttl: 20s\n", []string{"backup-from"}, []string{"lease-ttl"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			running, loaded := load(t, base), load(t, tc.next)
			ch := diffConfig(running, loaded)
			assert.ElementsMatch(t, tc.applied, ch.applied)
			assert.ElementsMatch(t, tc.restart, ch.restart)
			// Live keys are taken, restart keys keep the running value.
			assert.Equal(t, loaded.BackupSchedule.String(), ch.next.BackupSchedule.String())
			assert.Equal(t, loaded.CheckMaxLag, ch.next.CheckMaxLag)
			assert.Equal(t, running.ClusterName, ch.next.ClusterName)
			assert.Equal(t, running.LeaseTTL, ch.next.LeaseTTL)
			assert.Equal(t, running.SlotName, ch.next.SlotName)
		})
	}
}

// TestLiveReload runs an agent (leader-policy any, so it leads without
// PostgreSQL) with a config file, then changes the file: the new log level
// and backup-schedule apply without a restart, a restart key is only
// logged, a broken file keeps the running configuration, and SIGHUP
// reloads too.
func TestLiveReload(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	archive := t.TempDir()
	file := filepath.Join(t.TempDir(), "barnacle.yaml")
	base := "cluster-name: reload\nstore-endpoints: " + etcd.Endpoints()[0] + "\nleader-policy: any\nagent-name: a1\n" +
		"archive-url: file://" + archive + "\nmetrics-listen-address: 127.0.0.1:0\nlease-ttl: 3s\n"
	write := func(extra string) {
		t.Helper()
		testenv.ReplaceFile(t, file, base+extra)
	}
	write("log-level: info\n")
	load := func() (config.Config, error) {
		return config.Load(config.Sources{File: file, Env: func(string) (string, bool) { return "", false }}, config.Needs{Agent: true})
	}
	cfg, err := load()
	require.NoError(t, err)
	var out testenv.SyncBuffer
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.LevelFromString(cfg.LogLevel), Output: &out})
	a, err := New(cfg, log, "test")
	require.NoError(t, err)
	a.EnableReload(ReloadOptions{File: file, Load: load})
	runAgent(t, a, &out)
	testenv.WaitUntil(t, 20*time.Second, "the agent to lead", func() bool { return a.coord.State().Leading })
	assert.NotContains(t, out.String(), "[DEBUG]")

	cli := etcd.Client(t)
	requests := func() int64 {
		resp, err := cli.Get(t.Context(), a.coord.Keys().Prefix+"requests/backup/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		require.NoError(t, err)
		return resp.Count
	}
	assert.Zero(t, requests(), "no schedule, no request")

	write("log-level: debug\nbackup-schedule: 5s\nslot-name: other\n")
	// Without a schedule the loop looks again every 10 s: the new one is
	// seen at the next look, which may come a full 10 s after the change.
	testenv.WaitUntil(t, 25*time.Second, "the new schedule to request a backup", func() bool { return requests() > 0 })
	testenv.WaitUntil(t, 10*time.Second, "debug lines", func() bool { return strings.Contains(out.String(), "[DEBUG]") })
	logs := out.String()
	assert.Contains(t, logs, `configuration key changed: key=log-level from=info to=debug`)
	assert.Contains(t, logs, `key=backup-schedule from="" to=5s`)
	assert.Contains(t, logs, "needs a restart")
	assert.Contains(t, logs, "key=slot-name")
	assert.Equal(t, "barnacle", a.liveConfig().SlotName)

	write("log-level: debug\nbackup-schedule: every day\n")
	testenv.WaitUntil(t, 10*time.Second, "the broken file to be reported", func() bool {
		return strings.Contains(out.String(), "reloading the configuration failed")
	})
	assert.Contains(t, out.String(), "backup-schedule")
	assert.Equal(t, "5s", a.liveConfig().BackupSchedule.String(), "a broken file keeps the running configuration")

	// SIGHUP: the file was fixed behind the watcher's back (same bytes as
	// a previous version would be skipped by the watcher, not by SIGHUP).
	require.NoError(t, os.WriteFile(file, []byte(base+"log-level: warn\nbackup-schedule: 5s\n"), 0o600))
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	testenv.WaitUntil(t, 10*time.Second, "log-level warn", func() bool { return a.liveConfig().LogLevel == "warn" })
	assert.False(t, a.log.IsInfo(), "the logger follows log-level")
}
