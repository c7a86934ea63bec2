package instrument_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/storage/instrument"
	"github.com/barnacle-pg/barnacle/pkg/storage/storagetest"
)

// The wrapper must keep the whole Backend contract.
func TestWrappedBackendConformance(t *testing.T) {
	m := instrument.NewMetrics(prometheus.NewRegistry())
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, err := fs.New(t.TempDir(), fs.Options{})
		require.NoError(t, err)
		return m.Wrap(b)
	})
}

// bare implements only storage.Backend.
type bare struct{ storage.Backend }

func TestWrapKeepsOptionalInterfaces(t *testing.T) {
	m := instrument.NewMetrics(prometheus.NewRegistry())
	b, err := fs.New(t.TempDir(), fs.Options{})
	require.NoError(t, err)
	w := m.Wrap(b)
	_, ap := w.(storage.Appender)
	_, sr := w.(storage.SpaceReporter)
	_, cl := w.(storage.Cleaner)
	assert.True(t, ap && sr && cl, "fs has all three, so must its wrapper")

	w = m.Wrap(bare{b})
	_, ap = w.(storage.Appender)
	_, sr = w.(storage.SpaceReporter)
	_, cl = w.(storage.Cleaner)
	assert.False(t, ap || sr || cl, "a backend without them must not gain them")
}

func TestMetricsExposition(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	m := instrument.NewMetrics(reg)
	b, err := fs.New(t.TempDir(), fs.Options{})
	require.NoError(t, err)
	w := m.Wrap(b)

	require.NoError(t, w.Put(ctx, "c/a", strings.NewReader("x"), storage.PutOptions{}))
	err = w.Put(ctx, "c/a", strings.NewReader("x"), storage.PutOptions{IfAbsent: true})
	require.ErrorIs(t, err, storage.ErrExist) // an answer, not an error
	_, err = w.Get(ctx, "c/missing")
	require.ErrorIs(t, err, storage.ErrNotExist)
	rc, err := w.Get(ctx, "c/a")
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, rc)
	require.NoError(t, rc.Close())
	_, err = w.List(ctx, "c/")
	require.NoError(t, err)
	err = w.Put(ctx, "c/bad", strings.NewReader("x"), storage.PutOptions{Checksum: strings.Repeat("0", 64)})
	require.True(t, errors.Is(err, storage.ErrChecksum))

	want := `
# HELP barnacle_storage_operation_errors_total Archive storage operations that failed; a missing object, and an existing one for a write-if-absent put, are answers, not errors.
# TYPE barnacle_storage_operation_errors_total counter
barnacle_storage_operation_errors_total{backend="file",operation="put"} 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "barnacle_storage_operation_errors_total"))
	for op, n := range map[string]uint64{"put": 3, "get": 2, "list": 1, "stat": 0} {
		assert.Equal(t, n, histogramCount(t, reg, op), op)
	}
}

func histogramCount(t *testing.T, reg *prometheus.Registry, op string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "barnacle_storage_operation_duration_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "operation" && l.GetValue() == op {
					return mt.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}
