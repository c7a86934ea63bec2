package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// TestArchiveHandleOpensOnce: the handle every part shares opens the
// archive once, removes a crashed writer's temporary file on that open,
// sets no gap gauge (only the leader's archiver does), and times the
// operations.
func TestArchiveHandleOpensOnce(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	url := "file://" + dir
	// A gap recorded by the leader, written through a plain backend.
	plain, err := backends.Open(ctx, url)
	require.NoError(t, err)
	require.NoError(t, catalog.RecordGap(ctx, plain, "c1", catalog.Gap{Timeline: 1, StartLSN: 0x3000000, EndLSN: 0x5000000, Reason: "test"}))
	// A temporary file a crashed writer left, older than fs's clean-up age.
	stale := filepath.Join(dir, ".tmp-crashed")
	require.NoError(t, os.WriteFile(stale, []byte("x"), 0o600))
	old := time.Now().Add(-2 * time.Hour)
	require.NoError(t, os.Chtimes(stale, old, old))

	reg := prometheus.NewRegistry()
	m := newArchiverMetrics(reg)
	h := newArchiveHandle(url, "c1", hclog.NewNullLogger(), m)
	b1, err := h.open(ctx)
	require.NoError(t, err)
	h.url = "bogus://not-opened-again" // a second open would fail on it
	b2, err := h.open(ctx)
	require.NoError(t, err, "one backend for every part: opened once")
	assert.Equal(t, b1, b2)
	assert.NoFileExists(t, stale, "the first open cleans up temporary files")
	assert.Equal(t, float64(0), testutil.ToFloat64(m.gaps), "a follower opening the archive reports no gap")
	assert.Equal(t, float64(0), testutil.ToFloat64(m.gapBytes))

	list, err := h.listBackups(ctx)
	require.NoError(t, err)
	assert.Empty(t, list)
	n, err := testutil.GatherAndCount(reg, "barnacle_storage_operation_duration_seconds")
	require.NoError(t, err)
	assert.Positive(t, n, "operations through the handle are instrumented")

	_, err = newArchiveHandle("", "c1", hclog.NewNullLogger(), newArchiverMetrics(prometheus.NewRegistry())).open(ctx)
	assert.ErrorContains(t, err, "archive-url is not set")
}

// TestGapGaugesCountUnresolvedGaps: gaps.json keeps every gap as history,
// but the gap gauges count only the gaps no done backup resolves yet (one
// that starts at or after the gap's end), so that the alert on
// barnacle_wal_gap_bytes ends once the backup after the gap is done.
func TestGapGaugesCountUnresolvedGaps(t *testing.T) {
	ctx := context.Background()
	url := "file://" + t.TempDir()
	plain, err := backends.Open(ctx, url)
	require.NoError(t, err)
	require.NoError(t, catalog.RecordGap(ctx, plain, "c1", catalog.Gap{Timeline: 1, StartLSN: 0x3000000, EndLSN: 0x5000000, Reason: "test"}))
	require.NoError(t, catalog.RecordGap(ctx, plain, "c1", catalog.Gap{Timeline: 1, StartLSN: 0x7000000, EndLSN: 0x8000000, Reason: "test"}))
	done := func(id string, start wal.LSN) {
		require.NoError(t, catalog.PutBackup(ctx, plain, "c1", catalog.Backup{ID: id, Status: catalog.StatusDone, StartTimeline: 1, StartLSN: start}))
	}
	// Done after the first gap, before the second.
	done("20261201T000000", 0x6000028)

	m := newArchiverMetrics(prometheus.NewRegistry())
	h := newArchiveHandle(url, "c1", hclog.NewNullLogger(), m)
	b, err := h.open(ctx)
	require.NoError(t, err)
	assert.Equal(t, float64(0), testutil.ToFloat64(m.gaps), "opening the archive (a follower's restore or drill) sets no gap gauge: only the leader's archiver does")
	_, _, err = h.readGaps(ctx, b)
	require.NoError(t, err)
	assert.Equal(t, float64(1), testutil.ToFloat64(m.gaps), "the first gap is resolved")
	assert.Equal(t, float64(0x1000000), testutil.ToFloat64(m.gapBytes))

	done("20261202T000000", 0x8000028)
	gaps, backups, err := h.readGaps(ctx, b)
	require.NoError(t, err)
	assert.Len(t, gaps, 2, "gaps.json keeps both as history")
	assert.Len(t, backups, 2)
	assert.Equal(t, float64(0), testutil.ToFloat64(m.gaps))
	assert.Equal(t, float64(0), testutil.ToFloat64(m.gapBytes))
}
