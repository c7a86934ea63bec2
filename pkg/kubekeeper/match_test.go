package kubekeeper

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/stolon"
)

// fixture is the clusterdata Stolon wrote for three healthy keepers
// (keeper0..2, dbs 662fe529, a0fbb9cc, b715ba79), with each keeper's
// listen address and last healthy time set as the case needs.
func fixture(t *testing.T, addrs map[string]string, lastHealthy time.Time) *stolon.ClusterData {
	t.Helper()
	data, err := os.ReadFile("../stolon/testdata/clusterdata-initial.raw.json")
	require.NoError(t, err)
	cd, err := stolon.Decode(data)
	require.NoError(t, err)
	for _, db := range cd.DBs {
		db.Status.ListenAddress = addrs[db.Spec.KeeperUID]
	}
	for _, k := range cd.Keepers {
		k.Status.LastHealthyTime = lastHealthy
	}
	return cd
}

func TestMatch(t *testing.T) {
	started := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	healthy := started.Add(time.Minute) // the keepers reported after the pods started
	pod := func(name string, ips ...string) Pod { return Pod{Name: name, IPs: ips, StartTime: started} }
	three := map[string]string{"keeper0": "10.0.0.10", "keeper1": "10.0.1.11", "keeper2": "10.0.2.12"}

	for _, tc := range []struct {
		name      string
		pods      []Pod
		addrs     map[string]string
		healthyAt time.Time
		nilCD     bool
		keeper    string // "" when the agent serves none
		db        string
		reason    string
	}{
		{name: "no keeper pod on the node", pods: nil, addrs: three,
			reason: `no running pod on node n1 matches the label selector "component=stolon-keeper" (keeper-pod-selector)`},
		{name: "one keeper", pods: []Pod{pod("stolon-keeper-1", "10.0.1.11")}, addrs: three,
			keeper: "keeper1", db: "a0fbb9cc",
			reason: "pod stolon-keeper-1 on node n1 has IP 10.0.1.11, the listen address of keeper keeper1 (db a0fbb9cc) in clusterdata"},
		{name: "dual stack pod", pods: []Pod{pod("stolon-keeper-2", "fd00::12", "10.0.2.12")}, addrs: three,
			keeper: "keeper2", db: "b715ba79"},
		{name: "IPv6 written differently", pods: []Pod{pod("stolon-keeper-2", "fd00:0:0::12")},
			addrs: map[string]string{"keeper2": "fd00::12"}, keeper: "keeper2", db: "b715ba79"},
		{name: "a keeper pod whose keeper is not in clusterdata", pods: []Pod{pod("stolon-keeper-3", "10.0.3.13")}, addrs: three,
			reason: "no keeper in clusterdata listens on the IP of a keeper pod on node n1: stolon-keeper-3 (10.0.3.13)"},
		{name: "two keepers on the node", pods: []Pod{pod("stolon-keeper-0", "10.0.0.10"), pod("stolon-keeper-1", "10.0.1.11")}, addrs: three,
			reason: "several keepers on node n1: keeper keeper0 (db 662fe529) at 10.0.0.10 of pod stolon-keeper-0, keeper keeper1 (db a0fbb9cc) at 10.0.1.11 of pod stolon-keeper-1; run at most one keeper per node (a pod anti-affinity)"},
		{name: "one pod claimed by two keepers", pods: []Pod{pod("stolon-keeper-0", "10.0.0.10")},
			addrs:  map[string]string{"keeper0": "10.0.0.10", "keeper1": "10.0.0.10"},
			reason: "several keepers on node n1: keeper keeper0 (db 662fe529) at 10.0.0.10 of pod stolon-keeper-0, keeper keeper1 (db a0fbb9cc) at 10.0.0.10 of pod stolon-keeper-0; run at most one keeper per node (a pod anti-affinity)"},
		// keeper1 moved to another node: it now reports that node's pod IP,
		// and the pod left on this node (keeper2's, say) is not keeper1's.
		{name: "the keeper moved away", pods: []Pod{pod("stolon-keeper-1", "10.0.1.11")},
			addrs:  map[string]string{"keeper0": "10.0.0.10", "keeper1": "10.0.9.99", "keeper2": "10.0.2.12"},
			reason: "no keeper in clusterdata listens on the IP of a keeper pod on node n1: stolon-keeper-1 (10.0.1.11)"},
		{name: "the keeper moved here", pods: []Pod{pod("stolon-keeper-1", "10.0.9.99")},
			addrs:  map[string]string{"keeper0": "10.0.0.10", "keeper1": "10.0.9.99", "keeper2": "10.0.2.12"},
			keeper: "keeper1", db: "a0fbb9cc"},
		// The IP of a keeper that died is reused by a new keeper pod whose
		// keeper has not reported yet: clusterdata still names the dead
		// keeper at that IP, but it was last healthy before the pod started.
		{name: "an IP reused by a new pod", pods: []Pod{pod("stolon-keeper-4", "10.0.1.11")}, addrs: three,
			healthyAt: started.Add(-time.Second),
			reason:    "no keeper in clusterdata listens on the IP of a keeper pod on node n1: stolon-keeper-4 (10.0.1.11); keeper keeper1 claims 10.0.1.11 but was not healthy since pod stolon-keeper-4 started (an old claim on a reused IP, or a keeper not yet healthy)"},
		{name: "a pod not started", pods: []Pod{{Name: "stolon-keeper-1", IPs: []string{"10.0.1.11"}}}, addrs: three},
		{name: "clusterdata not read", pods: []Pod{pod("stolon-keeper-1", "10.0.1.11")}, nilCD: true,
			reason: "clusterdata not read yet"},
		{name: "a listen address that is no IP", pods: []Pod{pod("stolon-keeper-1", "10.0.1.11")},
			addrs: map[string]string{"keeper1": "stolon-keeper-1.stolon-keeper"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at := tc.healthyAt
			if at.IsZero() {
				at = healthy
			}
			var cd *stolon.ClusterData
			if !tc.nilCD {
				cd = fixture(t, tc.addrs, at)
			}
			r := Match("n1", "component=stolon-keeper", tc.pods, cd)
			assert.Equal(t, tc.keeper, r.KeeperUID, r.Reason)
			assert.Equal(t, tc.db, r.DBUID)
			if tc.reason != "" {
				assert.Equal(t, tc.reason, r.Reason)
			}
			assert.NotEmpty(t, r.Reason)
		})
	}
}
