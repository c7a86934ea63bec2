package agent

import (
	"context"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
)

func TestCatalogMetricsExposition(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newArchiverMetrics(reg)
	t0 := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	// ListBackups order: newest first.
	list := []catalog.Backup{
		{ID: "20261124T200000", Status: catalog.StatusRunning, StartTime: t0.Add(3 * time.Hour)},
		{ID: "20261124T190000", Status: catalog.StatusDone, StartTime: t0.Add(2 * time.Hour), StopTime: t0.Add(2*time.Hour + 90*time.Second), StopLSN: 0x5000100},
		{ID: "20261124T180000", Status: catalog.StatusFailed, StartTime: t0.Add(time.Hour)},
		{ID: "20261124T170000", Status: catalog.StatusDone, StartTime: t0, StopTime: t0.Add(30 * time.Second), StopLSN: 0x3000100},
	}
	m.catalog.observeCatalog(list, t0.Add(4*time.Hour))
	m.catalog.retentionSucceeded(t0.Add(5 * time.Hour))
	want := `
# HELP barnacle_catalog_backups Base backups in the archive, by status (running, done, failed).
# TYPE barnacle_catalog_backups gauge
barnacle_catalog_backups{status="done"} 2
barnacle_catalog_backups{status="failed"} 1
barnacle_catalog_backups{status="running"} 1
# HELP barnacle_catalog_first_recoverable_point_position_bytes Earliest WAL position the archive can restore to: the stop LSN of the oldest done backup, in bytes; 0 without one.
# TYPE barnacle_catalog_first_recoverable_point_position_bytes gauge
barnacle_catalog_first_recoverable_point_position_bytes 5.0331904e+07
# HELP barnacle_catalog_first_recoverable_point_timestamp_seconds Earliest time the archive can restore to: the stop time of the oldest done backup; 0 without one.
# TYPE barnacle_catalog_first_recoverable_point_timestamp_seconds gauge
barnacle_catalog_first_recoverable_point_timestamp_seconds 1.79553963e+09
# HELP barnacle_catalog_last_backup_duration_seconds How long the newest done base backup took, from its start to its stop time.
# TYPE barnacle_catalog_last_backup_duration_seconds gauge
barnacle_catalog_last_backup_duration_seconds 90
# HELP barnacle_catalog_last_backup_timestamp_seconds Stop time of the newest done base backup; 0 without one.
# TYPE barnacle_catalog_last_backup_timestamp_seconds gauge
barnacle_catalog_last_backup_timestamp_seconds 1.79554689e+09
# HELP barnacle_catalog_last_refresh_timestamp_seconds When this agent, as leader, last read the catalog for these metrics.
# TYPE barnacle_catalog_last_refresh_timestamp_seconds gauge
barnacle_catalog_last_refresh_timestamp_seconds 1.795554e+09
# HELP barnacle_retention_last_success_timestamp_seconds When retention-policy was last applied without error by this agent.
# TYPE barnacle_retention_last_success_timestamp_seconds gauge
barnacle_retention_last_success_timestamp_seconds 1.7955576e+09
`
	names := []string{
		"barnacle_catalog_backups",
		"barnacle_catalog_first_recoverable_point_position_bytes",
		"barnacle_catalog_first_recoverable_point_timestamp_seconds",
		"barnacle_catalog_last_backup_duration_seconds",
		"barnacle_catalog_last_backup_timestamp_seconds",
		"barnacle_catalog_last_refresh_timestamp_seconds",
		"barnacle_retention_last_success_timestamp_seconds",
	}
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), names...))

	// An empty catalog resets everything: no stale recoverability point.
	m.catalog.observeCatalog(nil, t0)
	assert.Equal(t, float64(0), testutil.ToFloat64(m.catalog.firstPointTime))
	assert.Equal(t, float64(0), testutil.ToFloat64(m.catalog.backups.WithLabelValues("done")))
}

// Every metric the agent registers, with its type and labels: a renamed or
// dropped series breaks dashboards and alerts, so it must be deliberate.
func TestAgentMetricNames(t *testing.T) {
	got := agentMetricTypes(t)
	want := map[string]string{
		"barnacle_wal_streaming":                                     "GAUGE",
		"barnacle_wal_received_position_bytes":                       "GAUGE",
		"barnacle_wal_flushed_position_bytes":                        "GAUGE",
		"barnacle_wal_archive_lag_bytes":                             "GAUGE",
		"barnacle_wal_archive_lag_seconds":                           "GAUGE",
		"barnacle_wal_timeline":                                      "GAUGE",
		"barnacle_wal_segments_archived_total":                       "COUNTER",
		"barnacle_wal_last_archived_segment_timestamp_seconds":       "GAUGE",
		"barnacle_wal_last_flush_timestamp_seconds":                  "GAUGE",
		"barnacle_wal_archive_errors_total":                          "COUNTER",
		"barnacle_wal_gap_bytes":                                     "GAUGE",
		"barnacle_wal_gaps":                                          "GAUGE",
		"barnacle_wal_standby_slot_restart_position_bytes":           "GAUGE",
		"barnacle_wal_standby_slot_errors_total":                     "COUNTER",
		"barnacle_catalog_backups":                                   "GAUGE",
		"barnacle_catalog_first_recoverable_point_timestamp_seconds": "GAUGE",
		"barnacle_catalog_first_recoverable_point_position_bytes":    "GAUGE",
		"barnacle_catalog_last_backup_timestamp_seconds":             "GAUGE",
		"barnacle_catalog_last_backup_duration_seconds":              "GAUGE",
		"barnacle_catalog_last_refresh_timestamp_seconds":            "GAUGE",
		"barnacle_retention_last_success_timestamp_seconds":          "GAUGE",
		"barnacle_restore_drill_last_success_timestamp_seconds":      "GAUGE",
		"barnacle_restore_drill_reached_timestamp_seconds":           "GAUGE",
		"barnacle_restore_drill_reached_position_bytes":              "GAUGE",
		"barnacle_restore_drill_rto_seconds":                         "GAUGE",
		"barnacle_restore_drill_last_failure_timestamp_seconds":      "GAUGE",
		"barnacle_restore_drill_last_refresh_timestamp_seconds":      "GAUGE",
		"barnacle_restore_drill_failures_total":                      "COUNTER",
	}
	assert.Equal(t, want, got)
}

// agentMetricTypes registers the agent's own metrics (as build does) and
// returns each series name with its type.
func agentMetricTypes(t *testing.T) map[string]string {
	t.Helper()
	reg := prometheus.NewRegistry()
	newArchiverMetrics(reg)
	newDrillMetrics(reg)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]string{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf.GetType().String()
	}
	return got
}

// TestAgentMetricsDocumented: the README names every series the agent
// exports, spelled as exported, so that an operator can find what a
// dashboard shows; the drill series are also in docs/integration.md's
// table of metrics to watch.
func TestAgentMetricsDocumented(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	integration, err := os.ReadFile("../docs/integration.md")
	require.NoError(t, err)
	for name := range agentMetricTypes(t) {
		assert.True(t, strings.Contains(string(readme), "`"+name), "README.md does not name %s", name)
		if strings.HasPrefix(name, "barnacle_restore_drill_") && !strings.HasSuffix(name, "_last_refresh_timestamp_seconds") {
			assert.True(t, strings.Contains(string(integration), "`"+name+"`"), "docs/integration.md's metrics table does not name %s", name)
		}
	}
}

func TestStreamingGaugeRemembersChanges(t *testing.T) {
	m := newArchiverMetrics(prometheus.NewRegistry())
	up, since0 := m.streaming.state()
	assert.False(t, up)
	m.streaming.Set(1)
	up, since1 := m.streaming.state()
	assert.True(t, up)
	assert.False(t, since1.Before(since0))
	m.streaming.Set(1) // no change: the time stays
	_, again := m.streaming.state()
	assert.Equal(t, since1, again)
	assert.Equal(t, float64(1), testutil.ToFloat64(m.streaming))
}

// TestCatalogMetricsRefreshSoon: refreshSoon makes the refresh loop read
// the catalog at once, so a backup or retention run that just ended shows
// in barnacle_catalog_backups without waiting for catalogRefreshInterval.
func TestCatalogMetricsRefreshSoon(t *testing.T) {
	m := newArchiverMetrics(prometheus.NewRegistry()).catalog
	var mu sync.Mutex
	list := []catalog.Backup{{ID: "20261124T170000", Status: catalog.StatusDone}}
	reads := 0
	read := func(context.Context) ([]catalog.Backup, error) {
		mu.Lock()
		defer mu.Unlock()
		reads++
		return slices.Clone(list), nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.refreshLoop(ctx, hclog.NewNullLogger(), read)
	}()
	defer func() { cancel(); <-done }()
	doneCount := func() float64 { return testutil.ToFloat64(m.backups.WithLabelValues(string(catalog.StatusDone))) }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		// Far below catalogRefreshInterval: only refreshSoon can make it.
		deadline := time.Now().Add(catalogRefreshInterval / 3)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("the first read", func() bool { return doneCount() == 1 })

	mu.Lock()
	list = append([]catalog.Backup{{ID: "20261124T180000", Status: catalog.StatusDone}}, list...)
	mu.Unlock()
	m.refreshSoon()
	m.refreshSoon() // coalesced, never blocks
	waitFor("the new backup to be counted", func() bool { return doneCount() == 2 })
	mu.Lock()
	assert.LessOrEqual(t, reads, 3)
	mu.Unlock()
}
