package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Roles published in AgentStatus.Role.
const (
	RoleLeader   = "leader"
	RoleFollower = "follower"
)

// AgentStatus is the value of barnacle/<cluster>/agents/<agent-name>
// (DESIGN.md §3). Each agent writes its own on its session lease, so the key
// disappears when the agent dies.
type AgentStatus struct {
	Name      string `json:"name"`
	KeeperUID string `json:"keeperUID,omitempty"`
	Role      string `json:"role"`
	// LeadReason says why a leader leads: "master", "takeover" or "any".
	LeadReason string `json:"leadReason,omitempty"`
	// Candidate is true while this agent's keeper is the master and its
	// PostgreSQL is promoted: it wants to lead, and a takeover leader
	// hands leadership back to it.
	Candidate bool   `json:"candidate"`
	Version   string `json:"version"`
	// MasterKeeperUID is the master this agent sees in clusterdata.
	MasterKeeperUID     string    `json:"masterKeeperUID,omitempty"`
	ClusterDataRevision int64     `json:"clusterdataRevision,omitempty"`
	Streaming           bool      `json:"streaming"`
	Timeline            uint32    `json:"timeline,omitempty"`
	ReceivedLSN         wal.LSN   `json:"receivedLSN,omitempty"`
	FlushedLSN          wal.LSN   `json:"flushedLSN,omitempty"`
	ArchivedLSN         wal.LSN   `json:"archivedLSN,omitempty"`
	LastArchivedSegment string    `json:"lastArchivedSegment,omitempty"`
	LastError           string    `json:"lastError,omitempty"`
	StartedAt           time.Time `json:"startedAt"`
	UpdatedAt           time.Time `json:"updatedAt"`

	// KeeperDiscovery is, with keeper-uid auto, why the agent serves its
	// keeper, or serves none.
	KeeperDiscovery string `json:"keeperDiscovery,omitempty"`

	// Drills is true when the agent has restore-root and so may run
	// restore drills; DrillsOnMaster when it may also while its keeper is
	// the master (restore-drill-on-master). DrillEligible reads them.
	Drills         bool `json:"drills,omitempty"`
	DrillsOnMaster bool `json:"drillsOnMaster,omitempty"`
}

// Keys lays out barnacle's own etcd keys for one cluster (DESIGN.md §3).
type Keys struct {
	// Prefix is "<barnacle-prefix>/<cluster>/", with the trailing slash.
	Prefix string
}

// NewKeys returns the key layout under barnaclePrefix for cluster.
func NewKeys(barnaclePrefix, cluster string) Keys {
	return Keys{Prefix: strings.TrimSuffix(barnaclePrefix, "/") + "/" + cluster + "/"}
}

// Election is the concurrency.Election prefix (no trailing slash: the
// election appends "/<lease>").
func (k Keys) Election() string { return k.Prefix + "leader" }

// Agents is the prefix of the agents' status records.
func (k Keys) Agents() string { return k.Prefix + "agents/" }

// Agent is one agent's status record.
func (k Keys) Agent(name string) string { return k.Agents() + name }

// Snapshot is what etcd says about barnacle's agents at one revision: their
// records and the current leader, for `barnacle status` and for the role
// loop.
type Snapshot struct {
	Revision int64
	Agents   map[string]AgentStatus
	// Leader is the elected agent's name ("" when nobody leads), from the
	// election key with the lowest create revision, as
	// concurrency.Election.Leader finds it.
	Leader string
}

// ReadSnapshot reads the agents' records and the election in one
// transaction.
func ReadSnapshot(ctx context.Context, cli *clientv3.Client, keys Keys) (Snapshot, error) {
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(keys.Agents(), clientv3.WithPrefix()),
		clientv3.OpGet(keys.Election()+"/", clientv3.WithFirstCreate()...),
	).Commit()
	if err != nil {
		return Snapshot{}, fmt.Errorf("read agents and leader: %w", err)
	}
	s := Snapshot{Revision: resp.Header.Revision, Agents: map[string]AgentStatus{}}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		var a AgentStatus
		if err := json.Unmarshal(kv.Value, &a); err != nil {
			// A record we cannot read is shown, not hidden: another version
			// of barnacle may have written it.
			name := strings.TrimPrefix(string(kv.Key), keys.Agents())
			a = AgentStatus{Name: name, LastError: fmt.Sprintf("unreadable agent record: %v", err)}
		}
		s.Agents[a.Name] = a
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		s.Leader = string(kvs[0].Value)
	}
	return s, nil
}

// AgentNames returns the agents' names, sorted.
func (s Snapshot) AgentNames() []string {
	names := make([]string, 0, len(s.Agents))
	for n := range s.Agents {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// AgentOfKeeper returns the live agent beside keeperUID, if any.
func (s Snapshot) AgentOfKeeper(keeperUID string) (AgentStatus, bool) {
	for _, n := range s.AgentNames() {
		if a := s.Agents[n]; a.KeeperUID == keeperUID && keeperUID != "" {
			return a, true
		}
	}
	return AgentStatus{}, false
}
