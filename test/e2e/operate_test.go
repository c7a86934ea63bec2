package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// metricValue returns the value of the first sample of series (name and
// labels exactly as exposed), or -1 when it is absent.
func metricValue(exposition, series string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(exposition)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}

// TestOperateMetricsAndStatus: after a backup, the leader's /metrics has
// the catalog and storage series with sane values, /readyz is ready, and
// barnacle status --json shows the recoverable window, the last backup and
// the lag.
func TestOperateMetricsAndStatus(t *testing.T) {
	t.Parallel()
	env := newArchiveEnv(t, testenv.ClusterOptions{})
	env.startAgents()
	leader := env.leaderFor(env.pg.Primary())
	store := env.store()
	_, stderr, code := barnacle(t, append([]string{"backup", "--wait", "--label", "operate"}, store...)...)
	require.Equal(t, 0, code, "backup --wait: %s", stderr)
	env.waitArchived(env.pg.Primary(), 30*time.Second)

	var m string
	waitFor(t, 45*time.Second, "the catalog metrics to count the backup", func() bool {
		m = scrape(t, leader)
		return metricValue(m, `barnacle_catalog_backups{status="done"}`) == 1
	})
	now := float64(time.Now().Unix())
	first := metricValue(m, "barnacle_catalog_first_recoverable_point_timestamp_seconds")
	assert.InDelta(t, now, first, 120, "first recoverable point is the backup's stop time")
	assert.Equal(t, first, metricValue(m, "barnacle_catalog_last_backup_timestamp_seconds"), "one backup: first and last are the same")
	assert.Greater(t, metricValue(m, "barnacle_catalog_first_recoverable_point_position_bytes"), float64(0))
	dur := metricValue(m, "barnacle_catalog_last_backup_duration_seconds")
	assert.True(t, dur >= 0 && dur < 120, "backup duration %v", dur)
	assert.Greater(t, metricValue(m, `barnacle_storage_operation_duration_seconds_count{backend="file",operation="put"}`), float64(0))
	assert.Greater(t, metricValue(m, `barnacle_storage_operation_duration_seconds_count{backend="file",operation="list"}`), float64(0))
	assert.Equal(t, float64(1), metricValue(m, "barnacle_wal_streaming"))
	assert.GreaterOrEqual(t, metricValue(m, "barnacle_wal_archive_lag_bytes"), float64(0))

	resp, err := httpClient.Get("http://" + leader.metrics + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "a streaming leader is ready")

	out, stderr, code := barnacle(t, append([]string{"status", "--json"}, env.common...)...)
	require.Equal(t, 0, code, "status: %s", stderr)
	var st struct {
		Leader  string `json:"leader"`
		Archive struct {
			Error   string `json:"error"`
			Windows []struct {
				Timeline int    `json:"timeline"`
				From     string `json:"from"`
				To       string `json:"to"`
				StopsAt  string `json:"stopsAt"`
			} `json:"recoverableWindows"`
			LastBackup *struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			} `json:"lastBackup"`
			Gaps []any `json:"gaps"`
			Lag  *struct {
				Bytes  int64  `json:"bytes"`
				Source string `json:"source"`
			} `json:"lag"`
		} `json:"archive"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	assert.Equal(t, leader.name, st.Leader)
	assert.Empty(t, st.Archive.Error)
	require.Len(t, st.Archive.Windows, 1, out)
	assert.Equal(t, 1, st.Archive.Windows[0].Timeline)
	assert.Empty(t, st.Archive.Windows[0].StopsAt, out)
	assert.NotEqual(t, st.Archive.Windows[0].From, st.Archive.Windows[0].To, out)
	require.NotNil(t, st.Archive.LastBackup, out)
	assert.Equal(t, "done", st.Archive.LastBackup.Status)
	assert.Empty(t, st.Archive.Gaps)
	require.NotNil(t, st.Archive.Lag, out)
	assert.Equal(t, "master", st.Archive.Lag.Source)
	assert.GreaterOrEqual(t, st.Archive.Lag.Bytes, int64(0))

	// Without archive-url the archive part says so instead of failing.
	text, stderr, code := barnacle(t, append([]string{"status"}, store...)...)
	require.Equal(t, 0, code, "status: %s", stderr)
	assert.Contains(t, text, "archive-url is not set")
	assert.Contains(t, text, "Lag:")
	// Without the agents' credentials the master refuses the login: status
	// says so and what to pass, not that the master is unreachable.
	assert.Contains(t, text, "refused to authenticate")
	assert.Contains(t, text, "--pg-password-file")
	assert.NotContains(t, text, "unreachable")
}

// TestReloadProcess: a running agent takes a new log-level from its
// config file, keeps its configuration when the file breaks, and reloads
// on SIGHUP.
func TestReloadProcess(t *testing.T) {
	t.Parallel()
	env := newArchiveEnv(t, testenv.ClusterOptions{})
	keeper := env.stolon.KeeperUID(env.pg.Primary())
	pw := env.pg.ReplPasswordFile(t)
	file := filepath.Join(t.TempDir(), "barnacle.yaml")
	base := "cluster-name: " + cluster + "\nstore-endpoints: " + strings.Join(env.etcd.Endpoints(), ",") +
		"\npg-user: " + testenv.ReplUser + "\npg-password-file: " + pw + "\nlease-ttl: 3s\narchive-url: file://" + env.dir + "\n"
	write := func(extra string) {
		t.Helper()
		testenv.ReplaceFile(t, file, base+extra)
	}
	write("log-level: info\n")
	a := startAgent(t, "agent-reload", "--config", file, "--keeper-uid", keeper)
	waitFor(t, 20*time.Second, a.name+" to lead", func() bool { return leaderIs([]*agentProc{a}, a.name) })
	logOf := func() string { b, _ := os.ReadFile(a.logPath); return string(b) }
	assert.NotContains(t, logOf(), "[DEBUG]")

	write("log-level: debug\n")
	waitFor(t, 10*time.Second, "debug lines", func() bool { return strings.Contains(logOf(), "[DEBUG]") })

	write("log-level: loud\n")
	waitFor(t, 10*time.Second, "the broken file to be reported", func() bool {
		return strings.Contains(logOf(), "reloading the configuration failed")
	})
	assert.Contains(t, logOf(), "log-level")

	// Fixed behind the watcher's back: SIGHUP reloads.
	require.NoError(t, os.WriteFile(file, []byte(base+"log-level: info\ncompression: zstd\n"), 0o600))
	a.signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the reload after SIGHUP", func() bool {
		return strings.Contains(logOf(), `key=log-level from=debug to=info trigger=SIGHUP`)
	})
	assert.Contains(t, logOf(), "needs a restart")
	assert.True(t, a.running(), "SIGHUP does not end the agent")
}
