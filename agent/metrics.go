package agent

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/metrics"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

// archiverMetrics are the WAL archiving metrics of STYLE.md §10. Positions
// are LSNs as byte counts: useful for rates and differences, never labels.
type archiverMetrics struct {
	streaming        prometheus.Gauge
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
		streaming:       gauge("streaming", "1 while this agent streams WAL from the master into the archive."),
		received:        gauge("received_position_bytes", "End of the WAL received from the master, as an LSN in bytes."),
		flushed:         gauge("flushed_position_bytes", "End of the WAL durable in the archive and reported to the master, as an LSN in bytes."),
		lagBytes:        gauge("archive_lag_bytes", "WAL the master has written that is not yet durable in the archive: what a crash of the master now would lose."),
		timeline:        gauge("timeline", "Timeline being archived."),
		lastSegmentTime: gauge("last_archived_segment_timestamp_seconds", "When the last complete WAL segment was archived."),
		lastFlushTime:   gauge("last_flush_timestamp_seconds", "When WAL was last made durable in the archive (segment or .partial)."),
		gapBytes:        gauge("gap_bytes", "WAL recorded as missing for good in gaps.json; any value above 0 needs a new base backup."),
		gaps:            gauge("gaps", "Number of WAL gaps recorded in gaps.json."),
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
	return m
}

func (m *archiverMetrics) observe(p walstream.Progress, newSegment bool) {
	now := time.Now()
	m.received.Set(float64(p.Received))
	m.flushed.Set(float64(p.Flushed))
	lag := float64(0)
	if p.ServerWALEnd > p.Flushed {
		lag = float64(p.ServerWALEnd - p.Flushed)
	}
	m.lagBytes.Set(lag)
	m.timeline.Set(float64(p.Timeline))
	m.lastFlushTime.Set(float64(now.UnixNano()) / 1e9)
	if newSegment {
		m.segments.Inc()
		m.lastSegmentTime.Set(float64(now.UnixNano()) / 1e9)
	}
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

func (m *archiverMetrics) setGaps(gaps []catalog.Gap) {
	var total uint64
	for _, g := range gaps {
		total += g.Bytes
	}
	m.gapBytes.Set(float64(total))
	m.gaps.Set(float64(len(gaps)))
}
