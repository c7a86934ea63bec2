package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// leaderSampler asks every running agent every 100 ms whether it believes
// it leads, and remembers the worst moment. The agents are asked one after
// another, so two "leading" answers of one round are not proof of an
// overlap: the first may have stopped before the second began, and on a
// busy machine a status call can take longer than a handover. An overlap
// counts when an agent answered later that it had been leading without a
// break since before the earlier agent was asked (/status's leadingSince;
// both read this machine's clock).
type leaderSampler struct {
	agents []*agentProc
	mu     sync.Mutex
	max    int
	worst  string
	stop   func()
}

// leadingAnswer is one agent's "I lead" of a sampling round: asked at
// asked, leading without a break since since.
type leadingAnswer struct {
	name         string
	asked, since time.Time
}

func sampleLeaders(agents []*agentProc) *leaderSampler {
	s := &leaderSampler{agents: agents}
	s.stop = everyTick(100*time.Millisecond, func() {
		var round []leadingAnswer
		for _, a := range s.agents {
			asked := time.Now()
			if st, ok := a.status(); ok && st.Leading {
				ans := leadingAnswer{name: a.name, asked: asked}
				if st.LeadingSince != nil {
					ans.since = *st.LeadingSince
				}
				round = append(round, ans)
			}
		}
		n, names := concurrentLeaders(round)
		s.mu.Lock()
		if n > s.max {
			s.max, s.worst = n, names
		}
		s.mu.Unlock()
	})
	return s
}

// concurrentLeaders returns the largest number of agents of one round
// that certainly led at one moment, and their names: an earlier answer's
// agent and every later one that had led since before it was asked.
func concurrentLeaders(round []leadingAnswer) (int, string) {
	most, names := 0, ""
	for i, first := range round {
		at := []string{first.name}
		for _, later := range round[i+1:] {
			if !later.since.After(first.asked) {
				at = append(at, later.name)
			}
		}
		if len(at) > most {
			most, names = len(at), strings.Join(at, ",")
		}
	}
	return most, names
}

// everyTick calls sample every period in a goroutine of its own until
// stop is called; stop returns once that goroutine has ended.
func everyTick(period time.Duration, sample func()) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(period)
		defer tk.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tk.C:
			}
			sample()
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

func (s *leaderSampler) Stop() (int, string) {
	s.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max, s.worst
}

// leaderIs reports whether exactly `want` believes it leads among the
// running agents and every running agent sees `want` as the leader.
func leaderIs(agents []*agentProc, want string) bool {
	for _, a := range agents {
		if !a.running() {
			continue
		}
		st, ok := a.status()
		if !ok || st.Leader != want || st.Leading != (a.name == want) {
			return false
		}
	}
	return true
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", within, what)
	return 0
}

// TestAgentsFollowTheMaster runs three agents as processes beside a primary
// and two standbys and checks the election of DESIGN.md §1 through a
// failover, a killed leader, and an etcd restart, sampling every 100 ms that
// never more than one agent believes it leads.
func TestAgentsFollowTheMaster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	etcd := testenv.StartEtcd(t)
	cluster := testenv.NewCluster(t, testenv.ClusterOptions{Standbys: 2})
	st := testenv.NewStolon(t, etcd, cluster, testenv.StolonOptions{})

	pw := cluster.ReplPasswordFile(t)
	const leaseTTL, takeover = 3 * time.Second, 3 * time.Second
	common := []string{
		"--cluster-name", "stolon-cluster",
		"--store-endpoints", strings.Join(etcd.Endpoints(), ","),
		"--pg-user", testenv.ReplUser, "--pg-password-file", pw,
		"--lease-ttl", leaseTTL.String(), "--leader-takeover-delay", takeover.String(),
		"--log-level", "debug",
		"--archive-url", "file://" + archiveDir(t),
	}
	var agents []*agentProc
	for _, n := range cluster.Nodes {
		keeper := st.KeeperUID(n)
		agents = append(agents, startAgent(t, "agent-"+keeper, append([]string{"--keeper-uid", keeper}, common...)...))
	}
	byKeeper := func(keeper string) *agentProc {
		for _, a := range agents {
			if a.name == "agent-"+keeper {
				return a
			}
		}
		t.Fatalf("no agent for %s", keeper)
		return nil
	}
	sampler := sampleLeaders(agents)

	// 1. The master's agent leads.
	first := st.MasterKeeper()
	waitFor(t, 20*time.Second, "the master's agent to lead", func() bool { return leaderIs(agents, "agent-"+first) })

	// barnacle status --json on the live cluster.
	out, stderr, code := barnacle(t, append([]string{"status", "--json"}, common[:4]...)...)
	require.Equal(t, 0, code, stderr)
	var report coordinator.Report
	require.NoError(t, json.Unmarshal([]byte(out), &report), out)
	require.Equal(t, "agent-"+first, report.Leader)
	require.NotNil(t, report.Master)
	require.Equal(t, first, report.Master.KeeperUID)
	require.Len(t, report.Agents, 3)
	require.Len(t, report.Keepers, 3)
	require.Empty(t, report.Problems)
	for _, k := range report.Keepers {
		require.Equal(t, "agent-"+k.KeeperUID, k.Agent)
	}

	// 2. Failover: the master dies, Stolon elects a standby; its agent
	// leads without waiting for a lease to expire.
	oldPrimary := cluster.Primary()
	newPrimary := cluster.Standbys()[0]
	require.NoError(t, oldPrimary.Kill())
	promoted := make(chan time.Time, 1)
	go func() {
		for ctx.Err() == nil {
			if in, err := newPrimary.IsInRecovery(ctx); err == nil && !in {
				promoted <- time.Now()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	require.NoError(t, st.Failover(ctx, newPrimary))
	second := st.KeeperUID(newPrimary)
	waitFor(t, 15*time.Second, "the new master's agent to lead", func() bool { return leaderIs(agents, "agent-"+second) })
	led := time.Now()
	promotedAt := <-promoted
	t.Logf("new master's agent leads %s after promotion", led.Sub(promotedAt).Round(10*time.Millisecond))
	// The old leader hands back as soon as it sees the new master's agent
	// a candidate (about 1 s here on a quiet machine, logged above). The
	// bound tells that apart from a handover that waited for a lease to
	// expire and the takeover delay, not how fast the machine is.
	require.Less(t, led.Sub(promotedAt), takeover+leaseTTL, "the new master's agent led only after a lease expiry and the takeover delay: the old leader did not hand back")

	// 3. kill -9 of the leader: another agent leads within takeover + TTL;
	// the master's agent takes back over when it is restarted.
	leader := byKeeper(second)
	leader.signal(syscall.SIGKILL)
	_, _ = leader.wait(5 * time.Second)
	killed := time.Now()
	took := waitFor(t, takeover+leaseTTL+10*time.Second, "another agent to take over", func() bool {
		for _, a := range agents {
			if s, ok := a.status(); ok && s.Leading {
				return true
			}
		}
		return false
	})
	t.Logf("takeover %s after kill -9 of the leader (takeover delay %s, lease TTL %s)", time.Since(killed).Round(10*time.Millisecond), takeover, leaseTTL)
	// The slack is for a busy machine's election round trips, not part
	// of the design: a takeover that waited for a second lease expiry or
	// takeover delay would exceed it.
	require.Less(t, took, takeover+leaseTTL+min(takeover, leaseTTL)-500*time.Millisecond, "the takeover waited for more than one lease expiry and takeover delay")
	leader.start(t)
	waitFor(t, 20*time.Second, "the restarted master's agent to take back over", func() bool { return leaderIs(agents, "agent-"+second) })

	// 4. etcd restart: agents reconnect and one leader remains.
	require.NoError(t, etcd.Restart(time.Second))
	waitFor(t, 30*time.Second, "one leader after the etcd restart", func() bool { return leaderIs(agents, "agent-"+second) })

	max, worst := sampler.Stop()
	require.LessOrEqual(t, max, 1, "agents %s believed they led at the same time", worst)

	// 5. SIGTERM: every agent resigns, revokes its lease and exits 0
	// within a few seconds; its record disappears at once.
	for _, a := range agents {
		start := time.Now()
		a.signal(syscall.SIGTERM)
		err, ok := a.wait(5 * time.Second)
		require.True(t, ok, "agent %s did not exit within 5s of SIGTERM", a.name)
		require.NoError(t, err, "agent %s exit status", a.name)
		t.Logf("agent %s stopped %s after SIGTERM", a.name, time.Since(start).Round(10*time.Millisecond))
	}
	// The revoke removes them at once; when etcd is too slow to answer
	// it before the agent exits, the lease expires within its TTL (3 s).
	cli := etcd.Client(t)
	var left []string
	gone := waitFor(t, 6*time.Second, "agent records and election keys to be gone after SIGTERM", func() bool {
		resp, err := cli.Get(ctx, coordinator.NewKeys("barnacle", "stolon-cluster").Prefix, clientv3.WithPrefix())
		if err != nil {
			return false
		}
		left = left[:0]
		for _, kv := range resp.Kvs {
			left = append(left, string(kv.Key))
		}
		return len(left) == 0
	})
	t.Logf("agent records and election keys gone %s after the last exit", gone.Round(10*time.Millisecond))
}

// TestConcurrentLeaders: the sampler counts an overlap only when a later
// answer's leadership began before the earlier agent was asked.
func TestConcurrentLeaders(t *testing.T) {
	t.Parallel()
	at := func(ms int) time.Time { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond) }
	for _, tc := range []struct {
		name  string
		round []leadingAnswer
		want  int
		names string
	}{
		{"none", nil, 0, ""},
		{"one", []leadingAnswer{{"a", at(100), at(0)}}, 1, "a"},
		{"handover between the two calls", []leadingAnswer{{"a", at(100), at(0)}, {"b", at(900), at(500)}}, 1, "a"},
		{"later one led before the first was asked", []leadingAnswer{{"a", at(100), at(0)}, {"b", at(900), at(50)}}, 2, "a,b"},
		{"three, two of them at once", []leadingAnswer{{"a", at(100), at(0)}, {"b", at(200), at(150)}, {"c", at(300), at(120)}}, 2, "b,c"},
	} {
		n, names := concurrentLeaders(tc.round)
		require.Equal(t, tc.want, n, tc.name)
		require.Equal(t, tc.names, names, tc.name)
	}
}
