package agent

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// The drill metrics come from the archive's records: the last successful
// drill's finish time, reached point and RTO, and the failures, whatever
// order the records come in and whoever ran them.
func TestDrillMetricsFromRecords(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newDrillMetrics(reg)
	t0 := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	ok1 := catalog.Drill{ID: "d1", Status: "done", StartedAt: t0, FinishedAt: t0.Add(time.Minute),
		Reached: catalog.Position{Timeline: 1, LSN: 0x3000100}, ReachedTime: t0.Add(-time.Second),
		Phases: catalog.DrillPhases{Restore: 20 * time.Second, Replay: 30 * time.Second, Check: 10 * time.Second}}
	bad := catalog.Drill{ID: "d2", Status: "failed", StartedAt: t0.Add(time.Hour), FinishedAt: t0.Add(time.Hour + time.Second), Error: "no space"}
	ok2 := catalog.Drill{ID: "d3", Status: "done", StartedAt: t0.Add(2 * time.Hour), FinishedAt: t0.Add(2*time.Hour + 90*time.Second),
		Reached: catalog.Position{Timeline: 2, LSN: 0x5000000}, ReachedTime: t0.Add(2 * time.Hour),
		Phases: catalog.DrillPhases{Restore: 40 * time.Second, Replay: 40 * time.Second, Check: 10 * time.Second}}
	m.observe([]catalog.Drill{ok2, bad, ok1}, t0.Add(3*time.Hour))
	want := `
# HELP barnacle_restore_drill_failures_total Failed restore drills recorded in the archive.
# TYPE barnacle_restore_drill_failures_total counter
barnacle_restore_drill_failures_total 1
# HELP barnacle_restore_drill_last_failure_timestamp_seconds When the last failed restore drill finished; 0 without one.
# TYPE barnacle_restore_drill_last_failure_timestamp_seconds gauge
barnacle_restore_drill_last_failure_timestamp_seconds 1.795543201e+09
# HELP barnacle_restore_drill_last_refresh_timestamp_seconds When this agent last read the drill records for these metrics.
# TYPE barnacle_restore_drill_last_refresh_timestamp_seconds gauge
barnacle_restore_drill_last_refresh_timestamp_seconds 1.7955504e+09
# HELP barnacle_restore_drill_last_success_timestamp_seconds When the last successful restore drill finished (drills/ in the archive); 0 without one.
# TYPE barnacle_restore_drill_last_success_timestamp_seconds gauge
barnacle_restore_drill_last_success_timestamp_seconds 1.79554689e+09
# HELP barnacle_restore_drill_reached_position_bytes WAL position the last successful restore drill's server reached, as an LSN in bytes; 0 without one.
# TYPE barnacle_restore_drill_reached_position_bytes gauge
barnacle_restore_drill_reached_position_bytes 8.388608e+07
# HELP barnacle_restore_drill_reached_timestamp_seconds Commit time of the last transaction the last successful restore drill replayed: the newest point proven restorable; 0 when unknown.
# TYPE barnacle_restore_drill_reached_timestamp_seconds gauge
barnacle_restore_drill_reached_timestamp_seconds 1.7955468e+09
# HELP barnacle_restore_drill_rto_seconds Measured recovery time of the last successful restore drill: restore, replay and check, as an operator would have waited.
# TYPE barnacle_restore_drill_rto_seconds gauge
barnacle_restore_drill_rto_seconds 90
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want)))

	// A drill this agent just ran shows at once: a failure counts, the
	// last success stays.
	m.observeOwn(catalog.Drill{ID: "d4", Status: "failed", StartedAt: t0.Add(4 * time.Hour), FinishedAt: t0.Add(4 * time.Hour)})
	assert.Equal(t, float64(2), m.failureCount())
	assert.Equal(t, unixSeconds(ok2.FinishedAt), testutil.ToFloat64(m.lastSuccess))
	// A newer success moves every value to it.
	ok3 := ok1
	ok3.ID, ok3.FinishedAt, ok3.Reached.LSN = "d5", t0.Add(5*time.Hour), wal.LSN(0x6000000)
	m.observeOwn(ok3)
	assert.Equal(t, unixSeconds(ok3.FinishedAt), testutil.ToFloat64(m.lastSuccess))
	assert.Equal(t, float64(0x6000000), testutil.ToFloat64(m.reachedLSN))
	assert.Equal(t, float64(60), testutil.ToFloat64(m.rto))

	// The next listing is the truth: without records, everything is 0.
	m.observe(nil, t0.Add(6*time.Hour))
	assert.Equal(t, float64(0), testutil.ToFloat64(m.lastSuccess))
	assert.Equal(t, float64(0), testutil.ToFloat64(m.rto))
	assert.Equal(t, float64(0), m.failureCount())
}

func TestDrillDue(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	every, err := config.ParseSchedule("24h")
	require.NoError(t, err)
	weekly, err := config.ParseSchedule("0 4 * * 0") // Sundays 04:00 UTC
	require.NoError(t, err)
	done := []catalog.Drill{{ID: "a", Status: "done", StartedAt: t0}}
	failed := []catalog.Drill{{ID: "a", Status: "done", StartedAt: t0.Add(-48 * time.Hour)}, {ID: "b", Status: "failed", StartedAt: t0}}
	for _, tc := range []struct {
		name      string
		sched     config.Schedule
		list      []catalog.Drill
		requested time.Time
		now       time.Time
		due       bool
	}{
		{"no drill yet: due at once", every, nil, time.Time{}, t0, true},
		{"newest drill too recent", every, done, time.Time{}, t0.Add(23 * time.Hour), false},
		{"interval passed", every, done, time.Time{}, t0.Add(24 * time.Hour), true},
		{"a failed drill is not retried at once", every, failed, time.Time{}, t0.Add(time.Hour), false},
		{"a rejected request (no record) waits an interval", every, nil, t0, t0.Add(time.Hour), false},
		{"cron: before Sunday 04:00", weekly, done, time.Time{}, time.Date(2026, 11, 29, 3, 59, 0, 0, time.UTC), false},
		{"cron: Sunday 04:00", weekly, done, time.Time{}, time.Date(2026, 11, 29, 4, 0, 0, 0, time.UTC), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.due, drillDue(tc.sched, tc.list, tc.requested, tc.now))
		})
	}
}

func TestDrillOwner(t *testing.T) {
	dir := t.TempDir()
	o, err := drillOwner(1000, dir)
	require.NoError(t, err)
	assert.Nil(t, o, "not root: the agent's own user runs the server")
	if os.Geteuid() != 0 {
		t.Skip("the root cases need root (chown)")
	}
	_, err = drillOwner(0, dir)
	require.ErrorContains(t, err, "belongs to root, and PostgreSQL does not run as root: give restore-root to the OS user PostgreSQL runs as")
	require.NoError(t, os.Chown(dir, 999, 998))
	o, err = drillOwner(0, dir)
	require.NoError(t, err)
	assert.Equal(t, 999, o.UID)
	assert.Equal(t, 998, o.GID)
}

// The schedule queues no drill behind one that waits or runs.
func TestDrillScheduleBusy(t *testing.T) {
	ctx := t.Context()
	cli := testenv.StartEtcd(t).Client(t)
	keys := request.Keys{Prefix: "barnacle/c/"}
	d := &drills{etcd: cli, keys: keys}
	assert.False(t, d.busy(ctx), "nothing requested")

	put := func(key, value string) {
		_, err := cli.Put(ctx, key, value)
		require.NoError(t, err)
	}
	put(keys.Request(request.KindDrill, "a"), `{}`)
	assert.True(t, d.busy(ctx), "a request no agent claimed yet")
	put(keys.Claim(request.KindDrill, "a"), "2026-12-06T15:00:00Z")
	put(keys.Status(request.KindDrill, "a"), `{"state":"running","agent":"x","startedAt":"2026-12-06T15:00:00Z"}`)
	assert.True(t, d.busy(ctx), "a running drill")
	put(keys.Status(request.KindDrill, "a"), `{"state":"done","agent":"x","startedAt":"2026-12-06T15:00:00Z"}`)
	assert.False(t, d.busy(ctx), "a finished drill")
	_, err := cli.Delete(ctx, keys.Status(request.KindDrill, "a"))
	require.NoError(t, err)
	assert.False(t, d.busy(ctx), "claimed, its status deleted: it never runs again")
}
