// Package instrument wraps a storage.Backend so that every archive operation
// is timed and its errors counted in Prometheus metrics, by backend (the URL
// scheme) and operation, keeping the optional interfaces (Appender,
// SpaceReporter, Cleaner) exactly when the wrapped backend has them.
//
// Other modules may import this package, but its API is not stable.
package instrument

import (
	"context"
	"errors"
	"io"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/barnacle-pg/barnacle/pkg/metrics"
	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// Storage operation names, the values of the "operation" label.
const (
	OpPut       = "put"
	OpGet       = "get"
	OpStat      = "stat"
	OpList      = "list"
	OpDelete    = "delete"
	OpAppend    = "append"
	OpCleanup   = "cleanup"
	OpFreeSpace = "free_space"
)

// Metrics are the archive backend's operation latency and errors,
// by backend (the URL scheme: "file", "s3") and operation. Create them once
// per registry with NewMetrics and wrap every backend with Wrap.
type Metrics struct {
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
}

// NewMetrics registers barnacle_storage_operation_duration_seconds
// and barnacle_storage_operation_errors_total on reg. It panics if they are
// registered already, like prometheus.MustRegister.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Subsystem: "storage", Name: "operation_duration_seconds",
			Help: "Time archive storage operations took; for get, until the object is open, not read.",
			// From a local fsync (milliseconds) to a slow object store put
			// of a 16 MiB segment (tens of seconds).
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"backend", "operation"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "storage", Name: "operation_errors_total",
			Help: "Archive storage operations that failed; a missing object, and an existing one for a write-if-absent put, are answers, not errors.",
		}, []string{"backend", "operation"}),
	}
	reg.MustRegister(m.duration, m.errors)
	return m
}

// Wrap returns b with every operation timed and its errors counted. The
// result implements storage.Appender, storage.SpaceReporter and
// storage.Cleaner exactly when b does, so that callers that find those by
// type assertion behave as with b itself. It is safe for concurrent use
// when b is.
func (m *Metrics) Wrap(b storage.Backend) storage.Backend {
	i := &instrumented{Backend: b, m: m, backend: scheme(b.URL())}
	ap, isAp := b.(storage.Appender)
	sr, isSR := b.(storage.SpaceReporter)
	cl, isCl := b.(storage.Cleaner)
	a, s, c := appendOp{i, ap}, spaceOp{i, sr}, cleanupOp{i, cl}
	switch {
	case isAp && isSR && isCl:
		return struct {
			*instrumented
			appendOp
			spaceOp
			cleanupOp
		}{i, a, s, c}
	case isAp && isSR:
		return struct {
			*instrumented
			appendOp
			spaceOp
		}{i, a, s}
	case isAp && isCl:
		return struct {
			*instrumented
			appendOp
			cleanupOp
		}{i, a, c}
	case isSR && isCl:
		return struct {
			*instrumented
			spaceOp
			cleanupOp
		}{i, s, c}
	case isAp:
		return struct {
			*instrumented
			appendOp
		}{i, a}
	case isSR:
		return struct {
			*instrumented
			spaceOp
		}{i, s}
	case isCl:
		return struct {
			*instrumented
			cleanupOp
		}{i, c}
	default:
		return i
	}
}

// scheme is the backend label: the URL scheme, which is low-cardinality,
// unlike the URL.
func scheme(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" {
		return u.Scheme
	}
	return "unknown"
}

// instrumented is the storage.Backend part of the wrapper. Its embedded
// Backend supplies URL.
type instrumented struct {
	storage.Backend
	m       *Metrics
	backend string
}

var _ storage.Backend = (*instrumented)(nil)

func (i *instrumented) observe(op string, start time.Time, err error) {
	i.m.duration.WithLabelValues(i.backend, op).Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, storage.ErrNotExist) && !errors.Is(err, storage.ErrExist) {
		i.m.errors.WithLabelValues(i.backend, op).Inc()
	}
}

func (i *instrumented) Put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	start := time.Now()
	err := i.Backend.Put(ctx, name, r, opts)
	i.observe(OpPut, start, err)
	return err
}

func (i *instrumented) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	start := time.Now()
	rc, err := i.Backend.Get(ctx, name)
	i.observe(OpGet, start, err)
	return rc, err
}

func (i *instrumented) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	start := time.Now()
	info, err := i.Backend.Stat(ctx, name)
	i.observe(OpStat, start, err)
	return info, err
}

func (i *instrumented) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	start := time.Now()
	objs, err := i.Backend.List(ctx, prefix)
	i.observe(OpList, start, err)
	return objs, err
}

func (i *instrumented) Delete(ctx context.Context, name string) error {
	start := time.Now()
	err := i.Backend.Delete(ctx, name)
	i.observe(OpDelete, start, err)
	return err
}

type appendOp struct {
	i *instrumented
	a storage.Appender
}

func (o appendOp) Append(ctx context.Context, name string, offset int64, data []byte, checksum string) error {
	start := time.Now()
	err := o.a.Append(ctx, name, offset, data, checksum)
	o.i.observe(OpAppend, start, err)
	return err
}

type spaceOp struct {
	i *instrumented
	s storage.SpaceReporter
}

func (o spaceOp) FreeSpace(ctx context.Context) (uint64, error) {
	start := time.Now()
	n, err := o.s.FreeSpace(ctx)
	o.i.observe(OpFreeSpace, start, err)
	return n, err
}

type cleanupOp struct {
	i *instrumented
	c storage.Cleaner
}

func (o cleanupOp) Cleanup(ctx context.Context) error {
	start := time.Now()
	err := o.c.Cleanup(ctx)
	o.i.observe(OpCleanup, start, err)
	return err
}
