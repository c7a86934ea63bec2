// Package coordinator is barnacle's link to etcd: the client, the watch on
// Stolon's clusterdata, the agents' status records, and the leader election
// of DESIGN.md §1. It publishes a small immutable State (who is master, who
// leads, whether this agent leads) and runs the leader-only work it is given
// under the election session, so that the work stops before another agent
// can become leader. It knows nothing about the PostgreSQL protocol or
// storage.
//
// Other modules may import this package, but its API is not stable.
package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/pkg/stolon"
)

// Options configure a Coordinator.
type Options struct {
	Client         *clientv3.Client
	ClusterName    string
	StorePrefix    string // Stolon's, default "stolon/cluster"
	BarnaclePrefix string // ours, default "barnacle"
	AgentName      string
	KeeperUID      string // "" for a dedicated backup host (policy any)
	Policy         string // PolicyFollowMaster or PolicyAny
	LeaseTTL       time.Duration
	TakeoverDelay  time.Duration
	Version        string

	// KeeperUnknown allows follow-master without KeeperUID: keeper-uid auto
	// found no keeper on the node, and the agent is a takeover candidate
	// only.
	KeeperUnknown bool

	// LocalPrimary reports whether the PostgreSQL beside this agent answers
	// pg_is_in_recovery() = false. It is called only while clusterdata names
	// this agent's keeper as master. It gets the current State so that it
	// can find the address of its keeper's DB.
	LocalPrimary func(ctx context.Context, st State) (bool, error)

	// LeaderWork runs while this agent leads. Its context ends when
	// leadership ends for any reason (resignation, lost lease, shutdown),
	// and the coordinator waits for it to return before it campaigns again,
	// so two agents never run it at once. A returned error is logged and the
	// work is started again after a backoff while leadership lasts.
	LeaderWork func(ctx context.Context, term Term) error

	// FillStatus adds the agent's own fields (streaming state, LSNs) to the
	// record the coordinator publishes. It must not block.
	FillStatus func(*AgentStatus)

	Registerer prometheus.Registerer
	Logger     hclog.Logger
}

// Term identifies one tenure of leadership, for fencing leader-only writes
// the way concurrency.Election.Proclaim does: a write is valid only while
// the key Key still has create revision Rev.
type Term struct {
	Key    string
	Rev    int64
	Reason string
}

// Fence is the comparison that holds while this term lasts: the election
// key still exists with the create revision it had when this agent won. A
// leader-only etcd write goes in one transaction with it, as
// concurrency.Election.Proclaim does, so that an agent whose leadership
// ended without its knowing (its lease expired while etcd was out of reach,
// and another agent was elected) writes nothing. Stopping the leader work
// before the lease can expire (leaseFreshFor) narrows that window; the fence closes it.
func (t Term) Fence() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(t.Key), "=", t.Rev)
}

// State is an immutable view of the cluster as this agent sees it.
type State struct {
	// ClusterDataRevision is the etcd mod revision of the clusterdata read
	// last; 0 until clusterdata was read.
	ClusterDataRevision int64
	// ClusterDataErr says why clusterdata is missing or unusable, or "".
	ClusterDataErr string
	// ClusterData is the decoded clusterdata, nil until read. Do not modify.
	ClusterData *stolon.ClusterData
	Master      stolon.Master
	HasMaster   bool
	// MineIsMaster: the master DB belongs to this agent's keeper.
	MineIsMaster bool
	// LocalPrimary: this agent's PostgreSQL was found promoted.
	LocalPrimary bool
	// Leader is the elected agent's name, "" when nobody leads.
	Leader string
	// Leading: this agent leads and its lease is fresh.
	Leading    bool
	LeadReason string
	// LeadingSince is when this agent last began to say it leads, while
	// it still does (zero otherwise): it said so without a break since.
	LeadingSince time.Time
	Agents       map[string]AgentStatus
}

// Coordinator watches clusterdata and the agents, campaigns for leadership
// according to the policy and runs LeaderWork while it leads. Create it with
// New and start it with Run.
type Coordinator struct {
	opts    Options
	cli     *clientv3.Client
	keys    Keys
	log     hclog.Logger
	metrics *metrics
	started time.Time

	wake chan struct{}
	// bg tracks the background revocations of dropped sessions; bgCtx
	// ends them at shutdown.
	bg       sync.WaitGroup
	bgCtx    context.Context
	bgCancel context.CancelFunc

	mu    sync.Mutex
	state State
	cd    *stolon.ClusterData
	cdRev int64
	cdErr string
	snap  Snapshot
	// electionKeys is every key in the election's queue at snap's
	// revision (see removeLeftoverCandidacy).
	electionKeys map[string]bool
	subscribers  []chan struct{}

	// The lease clock's shared fields (lease.go): the generation of the
	// session they belong to, when its lease was last renewed (zero: no
	// lease), and the cancellation of the leader work started on it.
	leaseGen      uint64
	leaseRenewed  time.Time
	stopFreshWork context.CancelCauseFunc
}

// New validates opts. It starts nothing.
func New(opts Options) (*Coordinator, error) {
	if opts.Client == nil {
		return nil, errors.New("coordinator: no etcd client")
	}
	if opts.ClusterName == "" || opts.AgentName == "" {
		return nil, errors.New("coordinator: cluster name and agent name are required")
	}
	if opts.Policy != PolicyFollowMaster && opts.Policy != PolicyAny {
		return nil, fmt.Errorf("coordinator: unknown leader policy %q", opts.Policy)
	}
	if opts.Policy == PolicyFollowMaster && opts.KeeperUID == "" && !opts.KeeperUnknown {
		return nil, errors.New("coordinator: policy follow-master needs the keeper UID")
	}
	if opts.LeaseTTL < 2*time.Second {
		return nil, fmt.Errorf("coordinator: lease TTL %s is below 2s", opts.LeaseTTL)
	}
	if opts.StorePrefix == "" {
		opts.StorePrefix = stolon.DefaultStorePrefix
	}
	if opts.BarnaclePrefix == "" {
		opts.BarnaclePrefix = "barnacle"
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	bgCtx, bgCancel := context.WithCancel(context.Background())
	return &Coordinator{
		bgCtx:    bgCtx,
		bgCancel: bgCancel,
		opts:     opts,
		cli:      opts.Client,
		keys:     NewKeys(opts.BarnaclePrefix, opts.ClusterName),
		log:      opts.Logger.Named("coordinator").With("agent", opts.AgentName),
		metrics:  m,
		wake:     make(chan struct{}, 1),
		// Before any request of this life can be claimed: the leader's
		// sweep takes a claim older than its agent's start for one of an
		// earlier life (request.Queue.Sweep).
		started: time.Now(),
	}, nil
}

// Keys returns the layout of barnacle's etcd keys for this cluster.
func (c *Coordinator) Keys() Keys { return c.keys }

// State returns the current view. Safe for concurrent use.
func (c *Coordinator) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Subscribe returns a channel that receives a value (without blocking the
// coordinator; updates may be coalesced) whenever State changes.
func (c *Coordinator) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	c.subscribers = append(c.subscribers, ch)
	c.mu.Unlock()
	return ch
}

// Run watches, campaigns and leads until ctx ends. On the way out it stops
// the leader work, resigns and revokes its lease (so its record and election
// key vanish at once), bounded by a few seconds. It returns nil on
// cancellation.
func (c *Coordinator) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		key := stolon.ClusterDataKey(c.opts.StorePrefix, c.opts.ClusterName)
		return c.follow(gctx, "clusterdata", key, nil, c.loadClusterData)
	})
	g.Go(func() error {
		// agents/ .. leader/ only (claimed/ sorts between them; its keys
		// are small and written once): the whole prefix would re-read
		// every request and status, with their echoed requests, at every
		// agent heartbeat.
		return c.follow(gctx, "agents", c.keys.Agents(), []clientv3.OpOption{clientv3.WithRange(c.keys.Election() + "0")}, c.loadSnapshot)
	})
	g.Go(func() error { return c.roleLoop(gctx) })
	return g.Wait()
}

func (c *Coordinator) loadClusterData(resp *clientv3.GetResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(resp.Kvs) == 0 {
		c.cd, c.cdRev = nil, 0
		c.cdErr = fmt.Sprintf("no clusterdata at %s: is stolon's cluster-name and store-prefix right, and is the cluster initialized?",
			stolon.ClusterDataKey(c.opts.StorePrefix, c.opts.ClusterName))
	} else {
		kv := resp.Kvs[0]
		cd, err := stolon.Decode(kv.Value)
		if err != nil {
			c.cdErr = err.Error()
			c.log.Error("cannot use clusterdata", "revision", kv.ModRevision, "error", err)
		} else {
			c.cd, c.cdErr = cd, ""
		}
		c.cdRev = kv.ModRevision
		c.metrics.clusterDataRevision.Set(float64(kv.ModRevision))
	}
	c.kick()
}

func (c *Coordinator) loadSnapshot(resp *clientv3.GetResponse) {
	s := Snapshot{Revision: resp.Header.Revision, Agents: map[string]AgentStatus{}}
	electionKeys := map[string]bool{}
	var leaderRev int64
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		switch {
		case len(k) > len(c.keys.Agents()) && k[:len(c.keys.Agents())] == c.keys.Agents():
			var a AgentStatus
			if err := json.Unmarshal(kv.Value, &a); err == nil {
				s.Agents[a.Name] = a
			}
		case len(k) > len(c.keys.Election())+1 && k[:len(c.keys.Election())+1] == c.keys.Election()+"/":
			if leaderRev == 0 || kv.CreateRevision < leaderRev {
				leaderRev, s.Leader = kv.CreateRevision, string(kv.Value)
			}
			electionKeys[k] = true
		}
	}
	c.mu.Lock()
	c.snap = s
	c.electionKeys = electionKeys
	c.mu.Unlock()
	c.kick()
}

// kick wakes the role loop without blocking.
func (c *Coordinator) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// publish makes st the current State and tells the subscribers. It
// returns st as published: Leading is never published for a lease that is
// not fresh at this moment, whatever the caller computed before.
func (c *Coordinator) publish(st State) State {
	c.mu.Lock()
	now := time.Now()
	if st.Leading && !c.leaseFreshLocked(now) {
		st.Leading, st.LeadReason = false, ""
	}
	switch {
	case !st.Leading:
		st.LeadingSince = time.Time{}
	case c.state.Leading:
		st.LeadingSince = c.state.LeadingSince
	default:
		st.LeadingSince = now
	}
	c.state = st
	c.mu.Unlock()
	c.notify()
	return st
}

func (c *Coordinator) notify() {
	c.mu.Lock()
	subs := c.subscribers
	c.mu.Unlock()
	for _, ch := range subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (c *Coordinator) etcdError(op string, err error) {
	c.metrics.etcdErrors.WithLabelValues(op).Inc()
	c.log.Warn("etcd request failed, retrying", "op", op, "error", err)
}

// view combines clusterdata and the agents snapshot into a State (without
// the leadership fields, which the role loop owns).
func (c *Coordinator) view() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := State{
		ClusterDataRevision: c.cdRev,
		ClusterDataErr:      c.cdErr,
		ClusterData:         c.cd,
		Leader:              c.snap.Leader,
		Agents:              c.snap.Agents,
	}
	if c.cd != nil {
		m, err := c.cd.Master()
		if err != nil {
			st.ClusterDataErr = err.Error()
		} else {
			st.Master, st.HasMaster = m, true
			st.MineIsMaster = c.opts.KeeperUID != "" && m.KeeperUID == c.opts.KeeperUID
		}
	}
	return st
}

// masterAgent finds the live agent beside the master's keeper.
func masterAgent(st State) (AgentStatus, bool) {
	if !st.HasMaster {
		return AgentStatus{}, false
	}
	return Snapshot{Agents: st.Agents}.AgentOfKeeper(st.Master.KeeperUID)
}

// newSession grants a lease and wraps it in a concurrency.Session, whose
// own keep-alive renews the lease.
func (c *Coordinator) newSession(ctx context.Context) (*concurrency.Session, error) {
	ttl := int64(c.opts.LeaseTTL / time.Second)
	lease, err := c.cli.Grant(ctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	s, err := concurrency.NewSession(c.cli, concurrency.WithLease(lease.ID))
	if err != nil {
		return nil, fmt.Errorf("new session: %w", err)
	}
	return s, nil
}

// statusRecord builds this agent's record for etcd.
func (c *Coordinator) statusRecord(st State, candidate bool) AgentStatus {
	role := RoleFollower
	if st.Leading {
		role = RoleLeader
	}
	a := AgentStatus{
		Name:                c.opts.AgentName,
		KeeperUID:           c.opts.KeeperUID,
		Role:                role,
		LeadReason:          st.LeadReason,
		Candidate:           candidate,
		Version:             c.opts.Version,
		ClusterDataRevision: st.ClusterDataRevision,
		StartedAt:           c.started.UTC(),
	}
	if st.HasMaster {
		a.MasterKeeperUID = st.Master.KeeperUID
	}
	if c.opts.FillStatus != nil {
		c.opts.FillStatus(&a)
	}
	return a
}
