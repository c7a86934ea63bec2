package coordinator

import (
	"context"
	"fmt"
	"net"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/pkg/stolon"
)

// Report is the cluster as `barnacle status` shows it: Stolon's view
// (master, keepers) beside barnacle's (leader, agents), and the problems an
// operator should act on.
type Report struct {
	Cluster             string         `json:"cluster"`
	ClusterDataRevision int64          `json:"clusterdataRevision"`
	Master              *ReportMaster  `json:"master,omitempty"`
	Leader              string         `json:"leader"`
	Keepers             []ReportKeeper `json:"keepers"`
	Agents              []AgentStatus  `json:"agents"`
	Problems            []string       `json:"problems"`
}

// ReportMaster is the master named in clusterdata.
type ReportMaster struct {
	KeeperUID string `json:"keeperUID"`
	DBUID     string `json:"dbUID"`
	Address   string `json:"address"`
	Timeline  uint64 `json:"timeline"`
	Healthy   bool   `json:"healthy"`
	Converged bool   `json:"converged"`
}

// ReportKeeper is one Stolon keeper and the barnacle agent beside it.
type ReportKeeper struct {
	KeeperUID string `json:"keeperUID"`
	DBUID     string `json:"dbUID,omitempty"`
	Role      string `json:"role,omitempty"`
	Address   string `json:"address,omitempty"`
	Healthy   bool   `json:"healthy"`
	Agent     string `json:"agent,omitempty"`
}

// ReadReport reads clusterdata and barnacle's keys once and combines them.
// It fails only when etcd cannot be read; a missing or unreadable
// clusterdata is reported as a problem.
func ReadReport(ctx context.Context, cli *clientv3.Client, storePrefix, cluster string, keys Keys) (Report, error) {
	r := Report{Cluster: cluster, Keepers: []ReportKeeper{}, Agents: []AgentStatus{}, Problems: []string{}}
	cdKey := stolon.ClusterDataKey(storePrefix, cluster)
	resp, err := cli.Get(ctx, cdKey)
	if err != nil {
		return r, fmt.Errorf("read clusterdata %s: %w", cdKey, err)
	}
	snap, err := ReadSnapshot(ctx, cli, keys)
	if err != nil {
		return r, err
	}
	r.Leader = snap.Leader
	for _, n := range snap.AgentNames() {
		r.Agents = append(r.Agents, snap.Agents[n])
	}
	if r.Leader == "" {
		r.Problems = append(r.Problems, "no agent leads: WAL is not being archived; check the agent beside the master (barnacle agent logs)")
	} else if l, ok := snap.Agents[r.Leader]; ok {
		if !l.Streaming {
			r.Problems = append(r.Problems, fmt.Sprintf("leader %s is not streaming WAL", r.Leader))
		}
		if l.LastError != "" {
			r.Problems = append(r.Problems, fmt.Sprintf("leader %s: %s", r.Leader, l.LastError))
		}
	}
	if len(resp.Kvs) == 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("no clusterdata at %s: check cluster-name and store-prefix", cdKey))
		return r, nil
	}
	r.ClusterDataRevision = resp.Kvs[0].ModRevision
	cd, err := stolon.Decode(resp.Kvs[0].Value)
	if err != nil {
		r.Problems = append(r.Problems, err.Error())
		return r, nil
	}
	if m, err := cd.Master(); err != nil {
		r.Problems = append(r.Problems, err.Error())
	} else {
		r.Master = &ReportMaster{
			KeeperUID: m.KeeperUID, DBUID: m.DBUID, Address: net.JoinHostPort(m.Host, strconv.Itoa(m.Port)),
			Timeline: m.Timeline, Healthy: m.Healthy, Converged: m.Converged,
		}
		if a, ok := snap.AgentOfKeeper(m.KeeperUID); !ok {
			r.Problems = append(r.Problems, fmt.Sprintf("no barnacle agent runs beside the master keeper %s", m.KeeperUID))
		} else if r.Leader != "" && r.Leader != a.Name {
			r.Problems = append(r.Problems, fmt.Sprintf("leader %s is not the master's agent %s (takeover, or a failover in progress)", r.Leader, a.Name))
		}
	}
	for _, uid := range cd.KeeperUIDs() {
		k := ReportKeeper{KeeperUID: uid, Healthy: cd.Keepers[uid].Status.Healthy}
		if db, ok := cd.DBForKeeper(uid); ok {
			k.DBUID, k.Role = db.UID, db.Spec.Role
			if h, p, err := db.Addr(); err == nil {
				k.Address = net.JoinHostPort(h, strconv.Itoa(p))
			}
		}
		if a, ok := snap.AgentOfKeeper(uid); ok {
			k.Agent = a.Name
		} else {
			r.Problems = append(r.Problems, fmt.Sprintf("keeper %s has no barnacle agent", uid))
		}
		r.Keepers = append(r.Keepers, k)
	}
	for _, n := range snap.AgentNames() {
		if a := snap.Agents[n]; a.KeeperUID == "" && a.KeeperDiscovery != "" {
			r.Problems = append(r.Problems, fmt.Sprintf("agent %s (keeper-uid auto) serves no keeper: %s", n, a.KeeperDiscovery))
		}
	}
	return r, nil
}
