package coordinator

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	barnaclemetrics "github.com/barnacle-pg/barnacle/pkg/metrics"
)

type metrics struct {
	isLeader            prometheus.Gauge
	clusterDataRevision prometheus.Gauge
	leaderChanges       prometheus.Counter
	leaseLapses         prometheus.Counter
	etcdErrors          *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: barnaclemetrics.Namespace, Subsystem: "coordinator", Name: "is_leader",
			Help: "1 while this agent leads (streams WAL and runs scheduled work), else 0.",
		}),
		clusterDataRevision: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: barnaclemetrics.Namespace, Subsystem: "coordinator", Name: "clusterdata_revision",
			Help: "etcd mod revision of the Stolon clusterdata this agent read last.",
		}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: barnaclemetrics.Namespace, Subsystem: "coordinator", Name: "leadership_changes_total",
			Help: "Times this agent became leader or stopped leading.",
		}),
		leaseLapses: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: barnaclemetrics.Namespace, Subsystem: "coordinator", Name: "lease_lapses_total",
			Help: "Times this agent stopped leading because its etcd lease was not renewed in time (etcd slow or out of reach); rising on a healthy cluster means etcd answers too slowly for lease-ttl.",
		}),
		etcdErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: barnaclemetrics.Namespace, Subsystem: "coordinator", Name: "etcd_errors_total",
			Help: "Failed etcd requests, by operation.",
		}, []string{"op"}),
	}
	for _, c := range []prometheus.Collector{m.isLeader, m.clusterDataRevision, m.leaderChanges, m.leaseLapses, m.etcdErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register coordinator metrics: %w", err)
		}
	}
	return m, nil
}
