package coordinator

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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
	t.Logf("cut-off leader's work ended %s after the cut, the new leader's began %s after it",
		ended.Sub(cutAt).Round(time.Millisecond), began.Sub(cutAt).Round(time.Millisecond))

	// Back in touch, the master's agent leads again.
	holdLoop.Store(false)
	releaseOne.Do(func() { close(release) })
	gate.Set(false)
	h.waitLeader("keeper1", 20*time.Second)
}
