package agent

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/barnacle-pg/barnacle/pkg/metrics"
)

// TestReadOnlyListener: the metrics listener answers GET and HEAD only;
// every other method gets 405 with an Allow header and never reaches a
// handler (a POST to /metrics used to be served).
func TestReadOnlyListener(t *testing.T) {
	h := (&Agent{registry: metrics.NewRegistry()}).handler()
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		for _, path := range []string{"/healthz", "/metrics"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(m, path, nil))
			assert.Equal(t, http.StatusOK, rec.Code, "%s %s", m, path)
		}
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions, "TRACE", "PROPFIND"} {
		for _, path := range []string{"/healthz", "/metrics", "/readyz", "/status", "/nowhere"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(m, path, strings.NewReader("x")))
			assert.Equal(t, http.StatusMethodNotAllowed, rec.Code, "%s %s", m, path)
			assert.Equal(t, "GET, HEAD", rec.Header().Get("Allow"), "%s %s", m, path)
		}
	}
}

func TestNotReady(t *testing.T) {
	now := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	ok := readiness{now: now, clusterDataRevision: 7}
	leader := ok
	leader.leading, leader.leadingSince = true, now.Add(-time.Hour)
	cases := []struct {
		name string
		mod  func(r *readiness)
		base readiness
		want string // substring; "" means ready
	}{
		{"no clusterdata yet", func(r *readiness) { r.clusterDataRevision = 0 }, ok, "clusterdata not read yet"},
		{"bad clusterdata", func(r *readiness) { r.clusterDataErr = "no master" }, ok, "no master"},
		{"follower", func(*readiness) {}, ok, ""},
		{"follower ignores streaming", func(r *readiness) { r.lagBytes, r.maxLag = 100, 1 }, ok, ""},
		{"leader streaming", func(r *readiness) { r.streaming, r.streamingSince = true, now.Add(-time.Minute) }, leader, ""},
		{"leader down briefly", func(r *readiness) { r.streamingSince = now.Add(-10 * time.Second) }, leader, ""},
		{"leader down long", func(r *readiness) {
			r.streamingSince, r.lastError = now.Add(-45*time.Second), "connection refused"
		}, leader, "has not streamed WAL for 45s: connection refused"},
		{"new leader within grace", func(r *readiness) {
			r.streamingSince, r.leadingSince = now.Add(-time.Hour), now.Add(-5*time.Second)
		}, leader, ""},
		{"lag above check-max-lag", func(r *readiness) {
			r.streaming, r.lagBytes, r.maxLag = true, 2<<20, 1<<20
		}, leader, "archive lag 2097152 bytes is above check-max-lag 1048576 bytes"},
		{"lag at check-max-lag", func(r *readiness) { r.streaming, r.lagBytes, r.maxLag = true, 1<<20, 1<<20 }, leader, ""},
		{"no lag limit", func(r *readiness) { r.streaming, r.lagBytes = true, 1<<40 }, leader, ""},
		{"unresolved gap while streaming", func(r *readiness) {
			r.streaming, r.gap = true, "wal gap 0/3000000..0/9000000 on timeline 1 recorded"
		}, leader, "wal gap 0/3000000..0/9000000"},
		{"unresolved gap within the streaming grace", func(r *readiness) {
			r.streamingSince, r.gap = now.Add(-time.Second), "wal gap 0/3000000..0/9000000 on timeline 1 recorded"
		}, leader, "wal gap 0/3000000..0/9000000"},
		{"gap on a follower", func(r *readiness) { r.gap = "wal gap" }, ok, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.base
			tc.mod(&r)
			got := notReady(r)
			if tc.want == "" {
				assert.Empty(t, got)
			} else {
				assert.Contains(t, got, tc.want)
			}
		})
	}
}
