package agent

import (
	"context"
	"errors"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/storage/instrument"
)

// archiveHandle is the agent's one way into the archive, shared by the
// archiver, backups, restores, retention and the catalog metrics: it opens
// archive-url once, wraps it so that every operation is timed, removes the
// temporary files a crash left, and owns the gap gauges and the catalog
// metrics' "read again now". The parts never open the archive themselves.
type archiveHandle struct {
	url     string
	cluster string
	log     hclog.Logger
	storage *instrument.Metrics
	gapSize prometheus.Gauge
	gaps    prometheus.Gauge
	catalog *catalogMetrics

	mu      sync.Mutex
	backend storage.Backend
}

func newArchiveHandle(url, cluster string, log hclog.Logger, m *archiverMetrics) *archiveHandle {
	return &archiveHandle{url: url, cluster: cluster, log: log, storage: m.storage, gapSize: m.gapBytes, gaps: m.gaps, catalog: m.catalog}
}

// open returns the archive's backend, opening it on first use; a failed
// open is tried again by the next caller.
func (h *archiveHandle) open(ctx context.Context) (storage.Backend, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.backend != nil {
		return h.backend, nil
	}
	if h.url == "" {
		return nil, errors.New("archive-url is not set: barnacle cannot archive WAL without it")
	}
	b, err := backends.Open(ctx, h.url)
	if err != nil {
		return nil, err // names archive-url
	}
	b = h.storage.Wrap(b) // latency and errors per operation
	if c, ok := b.(storage.Cleaner); ok {
		if err := c.Cleanup(ctx); err != nil {
			h.log.Warn("removing temporary files left by a crash failed", "error", err)
		}
	}
	h.backend = b
	return b, nil
}

// readGaps reads gaps.json and, when it records a gap, the backups, and
// sets the gap gauges from the gaps that no done backup resolves yet
// (catalog.UnresolvedGaps): a resolved gap stays in gaps.json as history
// but needs nothing more. A failed read changes no gauge. Only the
// leader's archiver calls it: on other agents the gauges stay 0.
func (h *archiveHandle) readGaps(ctx context.Context, b storage.Backend) ([]catalog.Gap, []catalog.Backup, error) {
	gaps, err := catalog.ReadGaps(ctx, b, h.cluster)
	if err != nil {
		return nil, nil, err
	}
	var backups []catalog.Backup
	if len(gaps) > 0 {
		if backups, err = catalog.ListBackups(ctx, b, h.cluster); err != nil {
			return nil, nil, err
		}
	}
	h.setGaps(catalog.UnresolvedGaps(gaps, backups))
	return gaps, backups, nil
}

// setGaps sets the gap gauges: how many unresolved gaps, and how much WAL
// they miss.
func (h *archiveHandle) setGaps(unresolved []catalog.Gap) {
	var total uint64
	for _, g := range unresolved {
		total += g.Bytes
	}
	h.gapSize.Set(float64(total))
	h.gaps.Set(float64(len(unresolved)))
}

// listBackups lists the catalog's backups, newest first.
func (h *archiveHandle) listBackups(ctx context.Context) ([]catalog.Backup, error) {
	b, err := h.open(ctx)
	if err != nil {
		return nil, err
	}
	return catalog.ListBackups(ctx, b, h.cluster)
}

// changed tells the catalog metrics that backups came or went, so that
// they are read again now rather than at the next tick.
func (h *archiveHandle) changed() { h.catalog.refreshSoon() }
