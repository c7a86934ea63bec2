// Package metrics builds barnacle's Prometheus registry and HTTP handler.
// Every component registers its own collectors on the Registerer it is
// given; nothing uses the global default registry.
//
// Other modules may import this package, but its API is not stable.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every barnacle metric.
const Namespace = "barnacle"

// NewRegistry returns a registry with the Go runtime and process collectors,
// ready for the components' own metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves reg in the Prometheus exposition format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
