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
)

// TestArchiveHandleOpensOnce: the handle every part shares opens the
// archive once, removes a crashed writer's temporary file on that open,
// sets the gap gauges from gaps.json, and times the operations.
func TestArchiveHandleOpensOnce(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	url := "file://" + dir
	// A gap recorded by an earlier leader, written through a plain backend.
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
	assert.Equal(t, float64(1), testutil.ToFloat64(m.gaps))
	assert.Equal(t, float64(0x2000000), testutil.ToFloat64(m.gapBytes))

	list, err := h.listBackups(ctx)
	require.NoError(t, err)
	assert.Empty(t, list)
	n, err := testutil.GatherAndCount(reg, "barnacle_storage_operation_duration_seconds")
	require.NoError(t, err)
	assert.Positive(t, n, "operations through the handle are instrumented")

	_, err = newArchiveHandle("", "c1", hclog.NewNullLogger(), newArchiverMetrics(prometheus.NewRegistry())).open(ctx)
	assert.ErrorContains(t, err, "archive-url is not set")
}
