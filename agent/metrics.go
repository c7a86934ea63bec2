package agent

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/metrics"
	"github.com/barnacle-pg/barnacle/pkg/storage/instrument"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

// archiverMetrics are the WAL archiving metrics of STYLE.md §10. Positions
// are LSNs as byte counts: useful for rates and differences, never labels.
type archiverMetrics struct {
	streaming        *streamingGauge
	received         prometheus.Gauge
	flushed          prometheus.Gauge
	lagBytes         prometheus.Gauge
	timeline         prometheus.Gauge
	segments         prometheus.Counter
	lastSegmentTime  prometheus.Gauge
	lastFlushTime    prometheus.Gauge
	errors           prometheus.Counter
	gapBytes         prometheus.Gauge
	gaps             prometheus.Gauge
	standbySlotLSN   prometheus.Gauge
	standbySlotError prometheus.Counter

	// catalog holds the catalog-derived metrics, storage wraps the archive
	// backend (archiveHandle.open) so that every operation is timed.
	catalog *catalogMetrics
	storage *instrument.Metrics

	mu sync.Mutex
	// caughtUp is when the flushed position last reached the server's end
	// of WAL; the lag in seconds counts from there.
	caughtUp time.Time
	behind   bool
}

func newArchiverMetrics(reg prometheus.Registerer) *archiverMetrics {
	ns := metrics.Namespace
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: "wal", Name: name, Help: help})
	}
	m := &archiverMetrics{
		streaming:       &streamingGauge{Gauge: gauge("streaming", "1 while this agent streams WAL from the master into the archive."), since: time.Now()},
		received:        gauge("received_position_bytes", "End of the WAL received from the master, as an LSN in bytes."),
		flushed:         gauge("flushed_position_bytes", "End of the WAL durable in the archive and reported to the master, as an LSN in bytes."),
		lagBytes:        gauge("archive_lag_bytes", "WAL the master has written that is not yet durable in the archive: what a crash of the master now would lose."),
		timeline:        gauge("timeline", "Timeline being archived."),
		lastSegmentTime: gauge("last_archived_segment_timestamp_seconds", "When the last complete WAL segment was archived."),
		lastFlushTime:   gauge("last_flush_timestamp_seconds", "When WAL was last made durable in the archive (segment or .partial)."),
		gapBytes:        gauge("gap_bytes", "WAL recorded as missing for good in gaps.json that no done base backup after it resolves yet; any value above 0 needs a new base backup."),
		gaps:            gauge("gaps", "Number of WAL gaps recorded in gaps.json that no done base backup after them resolves yet."),
		standbySlotLSN:  gauge("standby_slot_restart_position_bytes", "restart_lsn of the slot this follower keeps on its standby, as an LSN in bytes."),
		segments: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: "wal", Name: "segments_archived_total",
			Help: "Complete WAL segments archived by this agent."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: "wal", Name: "archive_errors_total",
			Help: "Times streaming into the archive failed and was retried."}),
		standbySlotError: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: "wal", Name: "standby_slot_errors_total",
			Help: "Failures to create or advance the slot on this follower's standby."}),
	}
	lagSeconds := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: "wal", Name: "archive_lag_seconds",
		Help: "How long the archive has been behind the master's end of WAL; 0 when caught up."}, m.lagSeconds)
	reg.MustRegister(m.streaming, m.received, m.flushed, m.lagBytes, m.timeline, m.segments, m.lastSegmentTime,
		m.lastFlushTime, m.errors, m.gapBytes, m.gaps, m.standbySlotLSN, m.standbySlotError, lagSeconds)
	m.catalog = newCatalogMetrics(reg)
	m.storage = m.catalog.storage
	return m
}

func (m *archiverMetrics) observe(p walstream.Progress, newSegment bool) {
	now := time.Now()
	m.received.Set(float64(p.Received))
	m.flushed.Set(float64(p.Flushed))
	m.timeline.Set(float64(p.Timeline))
	if p.Durable {
		m.lastFlushTime.Set(float64(now.UnixNano()) / 1e9)
	}
	if newSegment {
		m.segments.Inc()
		m.lastSegmentTime.Set(float64(now.UnixNano()) / 1e9)
	}
	m.observeLag(p.ServerWALEnd, p.Flushed, now)
}

// observeLag sets the archive lag from the server's end of WAL and the
// archived end: from the stream's reports while it runs, from the master's
// position while it does not (trackMasterWhileDown).
func (m *archiverMetrics) observeLag(serverEnd, flushed wal.LSN, now time.Time) {
	lag := float64(0)
	if serverEnd > flushed {
		lag = float64(serverEnd - flushed)
	}
	m.lagBytes.Set(lag)
	m.mu.Lock()
	m.behind = lag > 0
	if !m.behind {
		m.caughtUp = now
	}
	m.mu.Unlock()
}

func (m *archiverMetrics) lagSeconds() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.behind || m.caughtUp.IsZero() {
		return 0
	}
	return time.Since(m.caughtUp).Seconds()
}

// streamingGauge is the streaming gauge, remembering when it last changed,
// so that /readyz can tell how long streaming has been down.
type streamingGauge struct {
	prometheus.Gauge

	mu    sync.Mutex
	up    bool
	since time.Time
}

// Set sets the gauge: 1 while streaming, 0 otherwise.
func (g *streamingGauge) Set(v float64) {
	g.Gauge.Set(v)
	g.mu.Lock()
	defer g.mu.Unlock()
	if up := v != 0; up != g.up {
		g.up, g.since = up, time.Now()
	}
}

// state reports whether streaming runs and since when it has been in that
// state.
func (g *streamingGauge) state() (up bool, since time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.up, g.since
}

// catalogMetrics are the STYLE.md §10 metrics that come from the archive's
// catalog rather than from this agent's work. Only the leader refreshes
// them (catalogRefreshInterval), so a follower's values are those of its
// last term, and barnacle_catalog_last_refresh_timestamp_seconds says how
// old they are.
type catalogMetrics struct {
	backups          *prometheus.GaugeVec
	firstPointTime   prometheus.Gauge
	firstPointLSN    prometheus.Gauge
	lastBackupTime   prometheus.Gauge
	lastBackupDur    prometheus.Gauge
	lastRefresh      prometheus.Gauge
	retentionSuccess prometheus.Gauge
	storage          *instrument.Metrics
	// refresh asks refreshLoop to read the catalog now (refreshSoon), so
	// that barnacle_catalog_backups counts a backup or a retention run as
	// soon as it ends, not up to catalogRefreshInterval later.
	refresh chan struct{}
}

// catalogRefreshInterval is how often the leader reads the catalog for
// catalogMetrics: cheap (one listing and a document per backup), and fresh
// enough for alerts that think in hours.
const catalogRefreshInterval = 30 * time.Second

func newCatalogMetrics(reg prometheus.Registerer) *catalogMetrics {
	ns := metrics.Namespace
	gauge := func(sub, name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	m := &catalogMetrics{
		backups: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: "catalog", Name: "backups",
			Help: "Base backups in the archive, by status (running, done, failed)."}, []string{"status"}),
		firstPointTime: gauge("catalog", "first_recoverable_point_timestamp_seconds",
			"Earliest time the archive can restore to: the stop time of the oldest done backup; 0 without one."),
		firstPointLSN: gauge("catalog", "first_recoverable_point_position_bytes",
			"Earliest WAL position the archive can restore to: the stop LSN of the oldest done backup, in bytes; 0 without one."),
		lastBackupTime: gauge("catalog", "last_backup_timestamp_seconds",
			"Stop time of the newest done base backup; 0 without one."),
		lastBackupDur: gauge("catalog", "last_backup_duration_seconds",
			"How long the newest done base backup took, from its start to its stop time."),
		lastRefresh: gauge("catalog", "last_refresh_timestamp_seconds",
			"When this agent, as leader, last read the catalog for these metrics."),
		retentionSuccess: gauge("retention", "last_success_timestamp_seconds",
			"When retention-policy was last applied without error by this agent."),
		refresh: make(chan struct{}, 1),
	}
	for _, s := range []catalog.BackupStatus{catalog.StatusRunning, catalog.StatusDone, catalog.StatusFailed} {
		m.backups.WithLabelValues(string(s))
	}
	reg.MustRegister(m.backups, m.firstPointTime, m.firstPointLSN, m.lastBackupTime, m.lastBackupDur, m.lastRefresh, m.retentionSuccess)
	m.storage = instrument.NewMetrics(reg)
	return m
}

// observeCatalog sets the catalog gauges from a listing (ListBackups
// order: newest first).
func (m *catalogMetrics) observeCatalog(list []catalog.Backup, now time.Time) {
	counts := map[string]float64{}
	var oldest, newest *catalog.Backup
	for i := range list {
		d := &list[i]
		counts[string(d.Status)]++
		if d.Status != catalog.StatusDone {
			continue
		}
		if newest == nil {
			newest = d
		}
		oldest = d
	}
	m.backups.Reset()
	for _, s := range []catalog.BackupStatus{catalog.StatusRunning, catalog.StatusDone, catalog.StatusFailed} {
		m.backups.WithLabelValues(string(s)).Set(counts[string(s)])
		delete(counts, string(s))
	}
	for s, n := range counts { // a status from a newer barnacle
		m.backups.WithLabelValues(s).Set(n)
	}
	m.firstPointTime.Set(0)
	m.firstPointLSN.Set(0)
	m.lastBackupTime.Set(0)
	m.lastBackupDur.Set(0)
	if oldest != nil {
		m.firstPointTime.Set(unixSeconds(oldest.StopTime))
		m.firstPointLSN.Set(float64(oldest.StopLSN)) // 0 while unknown, as before

	}
	if newest != nil {
		m.lastBackupTime.Set(unixSeconds(newest.StopTime))
		if d := newest.StopTime.Sub(newest.StartTime); d > 0 {
			m.lastBackupDur.Set(d.Seconds())
		}
	}
	m.lastRefresh.Set(unixSeconds(now))
}

// refreshSoon makes a running refreshLoop read the catalog now. It never
// blocks; requests made while one is pending are one.
func (m *catalogMetrics) refreshSoon() {
	select {
	case m.refresh <- struct{}{}:
	default:
	}
}

// retentionSucceeded records a retention run that ended without error.
func (m *catalogMetrics) retentionSucceeded(at time.Time) { m.retentionSuccess.Set(unixSeconds(at)) }

func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

// refreshCatalogMetrics is leader work: read the catalog now and every
// catalogRefreshInterval until ctx ends. It never fails; a failed read
// leaves the previous values and is retried at the next tick.
func (a *Agent) refreshCatalogMetrics(ctx context.Context) error {
	a.archive.catalog.refreshLoop(ctx, a.log.Named("metrics"), a.archive.listBackups)
	return nil
}

// refreshLoop observes list's answer now, then every
// catalogRefreshInterval and whenever refreshSoon asks, until ctx ends.
func (m *catalogMetrics) refreshLoop(ctx context.Context, log hclog.Logger, list func(context.Context) ([]catalog.Backup, error)) {
	refreshEvery(ctx, log, "the catalog", catalogRefreshInterval, m.refresh, list, m.observeCatalog)
}

// refreshEvery observes list's answer now, then every interval and
// whenever soon delivers (a nil soon never does), until ctx ends. A failed
// read keeps the previous values until the next tick.
func refreshEvery[T any](ctx context.Context, log hclog.Logger, what string, interval time.Duration, soon <-chan struct{},
	list func(context.Context) (T, error), observe func(T, time.Time)) {
	for {
		v, err := list(ctx)
		switch {
		case err == nil:
			observe(v, time.Now())
		case ctx.Err() == nil:
			log.Debug("reading the archive for metrics failed", "what", what, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-soon:
		case <-time.After(interval):
		}
	}
}
