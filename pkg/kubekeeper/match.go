// Package kubekeeper finds the Stolon keeper that runs on the agent's own
// Kubernetes node (keeper-uid auto): it watches the keeper pods of the node
// through the Kubernetes API and matches their pod IPs to the listen
// addresses the keepers report in clusterdata.
//
// Other modules may import this package, but its API is not stable.
package kubekeeper

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/stolon"
)

// Pod is what matching needs of a keeper pod on the node.
type Pod struct {
	Name string
	IPs  []string
	// StartTime is when the kubelet started the pod (status.startTime); zero
	// when it has not started.
	StartTime time.Time
}

// Result is the keeper an agent serves, or none.
type Result struct {
	// KeeperUID is the keeper on this node; "" when the agent serves none.
	KeeperUID string
	DBUID     string
	Pod       string
	IP        string
	// Reason says why, for the log, /readyz and the agent's record.
	Reason string
}

// Match finds the keeper on this node: the one keeper whose DB's
// status.listenAddress in clusterdata is the IP of one of the node's keeper
// pods. It serves none when no keeper matches, or when several do (two
// keepers on one node, or one IP claimed twice): serving the wrong keeper is
// worse than serving none, which leaves the agent a takeover candidate.
//
// An IP is reused: a keeper that died or moved keeps its old listenAddress in
// clusterdata until it reports again, and Kubernetes may meanwhile give that
// IP to a new pod on this node. A claim therefore only counts when the
// keeper was last healthy (keepers[uid].status.lastHealthyTime, which the
// sentinel renews while the keeper reports) after the pod started: a stale
// claim predates the pod that now holds the IP.
//
// node and selector only word the reasons. Match is pure.
func Match(node, selector string, pods []Pod, cd *stolon.ClusterData) Result {
	if len(pods) == 0 {
		return Result{Reason: fmt.Sprintf("no running pod on node %s matches the label selector %q (keeper-pod-selector)", node, selector)}
	}
	if cd == nil {
		return Result{Reason: "clusterdata not read yet"}
	}
	type claim struct {
		keeper, db, pod, ip string
	}
	var claims, stale []claim
	for _, dbUID := range sortedKeys(cd.DBs) {
		db := cd.DBs[dbUID]
		if db == nil {
			continue
		}
		addr := net.ParseIP(db.Status.ListenAddress)
		if addr == nil {
			continue
		}
		for _, p := range pods {
			for _, ip := range p.IPs {
				if !addr.Equal(net.ParseIP(ip)) {
					continue
				}
				c := claim{keeper: db.Spec.KeeperUID, db: dbUID, pod: p.Name, ip: ip}
				k := cd.Keepers[db.Spec.KeeperUID]
				if k == nil || p.StartTime.IsZero() || !k.Status.LastHealthyTime.After(p.StartTime) {
					stale = append(stale, c)
					continue
				}
				// One keeper claiming twice (two DBs, or an IPv4 and an
				// IPv6 address of its pod) is still one keeper.
				if !slices.ContainsFunc(claims, func(o claim) bool { return o.keeper == c.keeper && o.pod == c.pod }) {
					claims = append(claims, c)
				}
			}
		}
	}
	switch len(claims) {
	case 1:
		c := claims[0]
		return Result{KeeperUID: c.keeper, DBUID: c.db, Pod: c.pod, IP: c.ip, Reason: fmt.Sprintf(
			"pod %s on node %s has IP %s, the listen address of keeper %s (db %s) in clusterdata", c.pod, node, c.ip, c.keeper, c.db)}
	case 0:
		var names []string
		for _, p := range pods {
			names = append(names, fmt.Sprintf("%s (%s)", p.Name, strings.Join(p.IPs, ", ")))
		}
		why := fmt.Sprintf("no keeper in clusterdata listens on the IP of a keeper pod on node %s: %s", node, strings.Join(names, ", "))
		for _, c := range stale {
			why += fmt.Sprintf("; keeper %s claims %s but was not healthy since pod %s started (an old claim on a reused IP, or a keeper not yet healthy)", c.keeper, c.ip, c.pod)
		}
		return Result{Reason: why}
	default:
		var names []string
		for _, c := range claims {
			names = append(names, fmt.Sprintf("keeper %s (db %s) at %s of pod %s", c.keeper, c.db, c.ip, c.pod))
		}
		return Result{Reason: fmt.Sprintf("several keepers on node %s: %s; run at most one keeper per node (a pod anti-affinity)", node, strings.Join(names, ", "))}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
