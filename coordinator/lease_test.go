package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestBusyLeaderCutOffStops: a leader cut off from etcd while its role loop
// is held up (here in pg_is_in_recovery(), as it can be in an agent record
// write timing out) still stops believing it leads, and stops its work,
// before another agent is elected once its lease expires. On a role loop
// that noticed the stale lease only in its own steps, the held-up leader
// went on leading beside the new one.
func TestBusyLeaderCutOffStops(t *testing.T) {
	h := newHarness(t)
	h.putClusterData("clusterdata-initial.raw.json") // master: keeper1
	h.primary.Store("keeper1")

	var (
		mu         sync.Mutex
		workEnded  = map[string]time.Time{}
		workBegan  = map[string]time.Time{}
		holdLoop   atomic.Bool
		held       = make(chan struct{}, 1)
		release    = make(chan struct{})
		releaseOne sync.Once
	)
	t.Cleanup(func() { releaseOne.Do(func() { close(release) }) })
	work := func(keeper string) func(context.Context, Term) error {
		return func(ctx context.Context, _ Term) error {
			mu.Lock()
			workBegan[keeper] = time.Now()
			mu.Unlock()
			<-ctx.Done()
			mu.Lock()
			workEnded[keeper] = time.Now()
			mu.Unlock()
			return nil
		}
	}

	cli, gate := h.etcd.GatedClient(t)
	h.startWith("keeper1", func(o *Options) {
		o.Client = cli
		o.LeaderWork = work("keeper1")
		o.LocalPrimary = func(context.Context, State) (bool, error) {
			if holdLoop.Load() {
				select {
				case held <- struct{}{}:
				default:
				}
				<-release // ignores its context, as a stuck call would
			}
			return h.primary.Load().(string) == "keeper1", nil
		}
	})
	h.startWith("keeper2", func(o *Options) { o.LeaderWork = work("keeper2") })
	h.waitLeader("keeper1", 10*time.Second)

	holdLoop.Store(true)
	<-held
	cutAt := time.Now()
	gate.Set(true)

	// keeper2 takes over once keeper1's lease expired and the takeover
	// delay ran out; the harness fails the test if both led at one sample.
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !workBegan["keeper2"].IsZero()
	}, 20*time.Second, 10*time.Millisecond, "keeper2 never took over")
	mu.Lock()
	ended, began := workEnded["keeper1"], workBegan["keeper2"]
	mu.Unlock()
	require.False(t, ended.IsZero(), "the cut-off leader's work still runs beside the new leader's")
	require.True(t, ended.Before(began), "the cut-off leader's work ended after the new leader's began")
	h.mu.Lock()
	cutOff := h.members["keeper1"].c.State()
	h.mu.Unlock()
	require.False(t, cutOff.Leading, "the cut-off leader still says it leads beside the new leader")
	require.True(t, cutOff.LeadingSince.IsZero(), "the cut-off leader still has a LeadingSince")
	h.mu.Lock()
	lapses := testutil.ToFloat64(h.members["keeper1"].c.metrics.leaseLapses)
	h.mu.Unlock()
	require.GreaterOrEqual(t, lapses, float64(1), "the lapse is not counted in barnacle_coordinator_lease_lapses_total")
	t.Logf("cut-off leader's work ended %s after the cut, the new leader's began %s after it",
		ended.Sub(cutAt).Round(time.Millisecond), began.Sub(cutAt).Round(time.Millisecond))

	// Back in touch, the master's agent leads again.
	holdLoop.Store(false)
	releaseOne.Do(func() { close(release) })
	gate.Set(false)
	h.waitLeader("keeper1", 20*time.Second)
}

// TestLeftoverCandidacyRemoved: a follower's key left in the election queue
// (a campaign withdrawn while its put was on its way to etcd: the client
// gave up, etcd applied it) is removed by that follower, so the master's
// agent, queued behind it, is elected. Before, the master's agent waited
// for ever: the follower neither campaigned (the master's agent was a
// candidate) nor removed a key it did not know it had.
func TestLeftoverCandidacyRemoved(t *testing.T) {
	h := newHarness(t)
	h.putClusterData("clusterdata-initial.raw.json") // master: keeper1
	h.primary.Store("keeper1")
	h.start("keeper1")
	h.start("keeper2")
	h.waitLeader("keeper1", 10*time.Second)

	// keeper2's lease, from its record, and a key of its session queued
	// behind keeper1's, as its withdrawn campaign would have left it.
	cli := h.etcd.Client(t)
	keys := NewKeys("barnacle", "stolon-cluster")
	var lease clientv3.LeaseID
	require.Eventually(t, func() bool {
		resp, err := cli.Get(t.Context(), keys.Agent("keeper2"))
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		lease = clientv3.LeaseID(resp.Kvs[0].Lease)
		return lease != 0
	}, 10*time.Second, 20*time.Millisecond)
	leftover := fmt.Sprintf("%s/%x", keys.Election(), lease)

	// keeper1 restarts; while it is away keeper2's leftover key appears,
	// so keeper1's new key queues behind it.
	h.stop("keeper1")
	_, err := cli.Put(t.Context(), leftover, "keeper2", clientv3.WithLease(lease))
	require.NoError(t, err)
	h.start("keeper1")
	h.waitLeader("keeper1", 15*time.Second)
	resp, err := cli.Get(t.Context(), leftover)
	require.NoError(t, err)
	require.Empty(t, resp.Kvs, "keeper2's leftover candidacy is still queued")
}

// TestLoneLeaderKeepsItsLease: a healthy leader whose keep-alives take a
// slow round trip (100 ms, as on a busy machine) keeps leading. etcd's
// client renews a third of the TTL after a renewal, on a 500 ms poll, so a
// renewal can take TTL/3 + 0.5 s + the round trip: 1.27 s of the harness's
// 2 s TTL. The lease clock used to lapse at half the TTL (1 s), and this
// leader stopped and restarted its work every few seconds.
func TestLoneLeaderKeepsItsLease(t *testing.T) {
	h := newHarness(t)
	h.putClusterData("clusterdata-initial.raw.json") // master: keeper1
	h.primary.Store("keeper1")

	var starts, lapses atomic.Int32
	cli, gate := h.etcd.GatedClient(t)
	gate.SetDelay(50 * time.Millisecond)
	h.startWith("keeper1", func(o *Options) {
		o.Client = cli
		o.LeaderWork = func(ctx context.Context, _ Term) error {
			starts.Add(1)
			<-ctx.Done()
			if errors.Is(context.Cause(ctx), errLeaseLapsed) {
				lapses.Add(1)
			}
			return nil
		}
	})
	h.waitLeader("keeper1", 10*time.Second)

	// Ten keep-alive cycles; at half the TTL a lapse in one of them was
	// all but certain (each cycle lapsed with a chance of about one half).
	observe := 10 * (2 * time.Second / 3)
	state := func() State {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.members["keeper1"].c.State()
	}
	since := state().LeadingSince
	require.False(t, since.IsZero(), "a leader's State has no LeadingSince")
	for end := time.Now().Add(observe); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		st := state()
		require.True(t, st.Leading, "the lone leader stopped leading (lease lapses so far: %d)", lapses.Load())
		require.Equal(t, since, st.LeadingSince, "LeadingSince moved while the leader led without a break")
	}
	require.Zero(t, lapses.Load(), "the lone leader's lease lapsed")
	h.mu.Lock()
	counted := testutil.ToFloat64(h.members["keeper1"].c.metrics.leaseLapses)
	h.mu.Unlock()
	require.Zero(t, counted, "barnacle_coordinator_lease_lapses_total counts lapses of a healthy leader")
	require.EqualValues(t, 1, starts.Load(), "the leader work restarted")
}
