package agent

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/metrics"
)

// drillMetrics are the restore drill metrics. They come from the
// archive's drill records (drills/<id>.json), which every agent reads at
// start and every drillRefreshInterval, so that every agent shows the same
// values, also after a restart; the agent that ran a drill sets them at
// once when it ends (observeOwn).
type drillMetrics struct {
	lastSuccess prometheus.Gauge
	reachedTime prometheus.Gauge
	reachedLSN  prometheus.Gauge
	rto         prometheus.Gauge
	lastFailure prometheus.Gauge
	lastRefresh prometheus.Gauge

	mu       sync.Mutex
	failures float64
	// lastOK and lastBad are the finish times of the last successful and
	// the last failed drill observed.
	lastOK, lastBad time.Time
}

// drillRefreshInterval is how often every agent reads the drill records:
// drills run daily or weekly, and an alert on their age thinks in hours,
// so this is fresh enough while keeping the archive's reads small.
const drillRefreshInterval = 5 * time.Minute

func newDrillMetrics(reg prometheus.Registerer) *drillMetrics {
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Subsystem: "restore_drill", Name: name, Help: help})
	}
	m := &drillMetrics{
		lastSuccess: gauge("last_success_timestamp_seconds", "When the last successful restore drill finished (drills/ in the archive); 0 without one."),
		reachedTime: gauge("reached_timestamp_seconds", "Commit time of the last transaction the last successful restore drill replayed: the newest point proven restorable; 0 when unknown."),
		reachedLSN:  gauge("reached_position_bytes", "WAL position the last successful restore drill's server reached, as an LSN in bytes; 0 without one."),
		rto:         gauge("rto_seconds", "Measured recovery time of the last successful restore drill: restore, replay and check, as an operator would have waited."),
		lastFailure: gauge("last_failure_timestamp_seconds", "When the last failed restore drill finished; 0 without one."),
		lastRefresh: gauge("last_refresh_timestamp_seconds", "When this agent last read the drill records for these metrics."),
	}
	failures := prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "restore_drill", Name: "failures_total",
		Help: "Failed restore drills recorded in the archive."}, m.failureCount)
	reg.MustRegister(m.lastSuccess, m.reachedTime, m.reachedLSN, m.rto, m.lastFailure, m.lastRefresh, failures)
	return m
}

func (m *drillMetrics) failureCount() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.failures
}

// observe sets the gauges from the archive's drill records.
func (m *drillMetrics) observe(list []catalog.Drill, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.set(list)
	m.lastRefresh.Set(unixSeconds(now))
}

// observeOwn folds in a drill this agent just ran, so that its metrics
// show it at once; the next listing recomputes everything from the
// records (a drill whose record could not be written then drops out, as
// it does on every other agent).
func (m *drillMetrics) observeOwn(d catalog.Drill) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.apply(d)
}

// set recomputes every value from all records; called with mu held.
func (m *drillMetrics) set(all []catalog.Drill) {
	m.failures = 0
	for _, g := range []prometheus.Gauge{m.lastSuccess, m.reachedTime, m.reachedLSN, m.rto, m.lastFailure} {
		g.Set(0)
	}
	m.lastOK, m.lastBad = time.Time{}, time.Time{}
	for _, d := range all {
		m.apply(d)
	}
}

// apply folds one record into the values; called with mu held.
func (m *drillMetrics) apply(d catalog.Drill) {
	switch d.Status {
	case catalog.DrillDone:
		if d.FinishedAt.Before(m.lastOK) {
			return
		}
		m.lastOK = d.FinishedAt
		m.lastSuccess.Set(unixSeconds(d.FinishedAt))
		m.reachedTime.Set(unixSeconds(d.ReachedTime))
		m.reachedLSN.Set(float64(d.Reached.LSN))
		m.rto.Set(d.Phases.RTO().Seconds())
	default:
		m.failures++
		if d.FinishedAt.After(m.lastBad) {
			m.lastBad = d.FinishedAt
			m.lastFailure.Set(unixSeconds(d.FinishedAt))
		}
	}
}

// refreshLoop reads the drill records now and every drillRefreshInterval
// until ctx ends; a failed read keeps the previous values.
func (m *drillMetrics) refreshLoop(ctx context.Context, log hclog.Logger, list func(context.Context) ([]catalog.Drill, error)) {
	refreshEvery(ctx, log, "the drill records", drillRefreshInterval, nil, list, m.observe)
}

// refreshDrillMetrics runs on every agent: read the drill records now and
// every drillRefreshInterval until ctx ends. It never fails.
func (a *Agent) refreshDrillMetrics(ctx context.Context) error {
	a.drills.metrics.refreshLoop(ctx, a.log.Named("metrics"), func(ctx context.Context) ([]catalog.Drill, error) {
		b, err := a.archive.open(ctx)
		if err != nil {
			return nil, err
		}
		return catalog.ListDrills(ctx, b, a.cfg.ClusterName)
	})
	return nil
}
