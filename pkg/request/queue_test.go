package request

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/goleak"

	"github.com/barnacle-pg/barnacle/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestAbandoned is the sweep rule: only a live state of a gone agent, or of
// this agent's own earlier life, is abandoned.
func TestAbandoned(t *testing.T) {
	otherStarted := time.Unix(1000, 0)
	alive := func(a string, claimedAt time.Time) bool { return a == "other" && !otherStarted.After(claimedAt) }
	later, earlier := otherStarted.Add(time.Minute), otherStarted.Add(-time.Minute)
	for _, tc := range []struct {
		name    string
		state   State
		agent   string
		claimed time.Time
		current string
		want    bool
	}{
		{"claimed by a dead agent", StateClaimed, "dead", later, "", true},
		{"running on a dead agent", StateRunning, "dead", later, "", true},
		{"running on a live agent", StateRunning, "other", later, "", false},
		{"running on an earlier life of a live agent", StateRunning, "other", earlier, "", true},
		{"done by a dead agent", StateDone, "dead", later, "", false},
		{"failed on a dead agent", StateFailed, "dead", later, "", false},
		{"rejected by a dead agent", StateRejected, "dead", later, "", false},
		{"ours and running now", StateRunning, "self", later, "req", false},
		{"ours from an earlier life", StateRunning, "self", later, "", true},
		{"ours, while we run another", StateClaimed, "self", later, "other-req", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := Status[json.RawMessage]{State: tc.state, Agent: tc.agent, StartedAt: tc.claimed}
			assert.Equal(t, tc.want, abandoned(st, "req", "self", tc.current, alive))
		})
	}
}

// TestStatusBounded: a request just under etcd's size limit still gets a
// status (no full echo, a bounded error), and a status write that fails is
// logged and counted.
func TestStatusBounded(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client(t)
	var logs bytes.Buffer
	w := NewWriter(cli, hclog.New(&hclog.LoggerOptions{Output: &logs}), prometheus.NewRegistry())

	small := []byte(`{"from":"master"}`)
	e, size := echo(small)
	assert.Equal(t, json.RawMessage(small), e)
	assert.Zero(t, size)
	huge := []byte(`{"keeper":"` + strings.Repeat("k", 1400<<10) + `","targetDir":"/restore/x"}`)
	e, size = echo(huge)
	assert.Nil(t, e)
	assert.Equal(t, len(huge), size)
	e, size = echo([]byte(`{"from":`))
	assert.Nil(t, e)
	assert.Equal(t, 8, size)

	// The rejection of the huge request quotes it; the status still fits.
	q := NewQueue[RestoreResult](QueueOptions{Kind: KindRestore, Keys: Keys{Prefix: "b/c/"}, Client: cli, Agent: "a", Writer: w})
	job, ok := q.Claim(t.Context(), "huge", huge, false)
	require.True(t, ok)
	job.Reject(t.Context(), fmt.Errorf("unknown keeper %q: use a keeper UID from barnacle status", strings.Repeat("k", 1400<<10)))
	resp, err := cli.Get(t.Context(), "b/c/status/restore/huge")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	assert.Less(t, len(resp.Kvs[0].Value), 4<<10)
	var got RestoreStatus
	require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &got))
	assert.Equal(t, StateRejected, got.State)
	assert.Equal(t, len(huge), got.RequestBytes)
	assert.NotNil(t, got.FinishedAt)
	assert.True(t, strings.HasPrefix(got.Error, `unknown keeper "kkk`), got.Error)
	assert.Contains(t, got.Error, "more bytes)")
	assert.Zero(t, testutil.ToFloat64(w.errors))

	// A write that fails: logged and counted.
	dead, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: time.Second})
	require.NoError(t, err)
	require.NoError(t, dead.Close())
	w.etcd = dead
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	_, err = put(ctx, w, "status/backup/x", BackupStatus{State: StateRunning}, "")
	require.Error(t, err)
	assert.Equal(t, 1.0, testutil.ToFloat64(w.errors))
	assert.Contains(t, logs.String(), "writing a request status failed")
	assert.Contains(t, logs.String(), "key=status/backup/x")
}

func readStatus[R any](t *testing.T, cli *clientv3.Client, key string) (Status[R], int64) {
	t.Helper()
	resp, err := cli.Get(t.Context(), key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, key)
	var st Status[R]
	require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &st))
	return st, resp.Kvs[0].ModRevision
}

// TestClaimOnceAndRun: of two agents that claim one request, one wins; an
// agent running a job leaves the next valid request unclaimed but can
// still reject; the job's status goes claimed, running, progress, done;
// Serve serves only the unclaimed request, and returns only after the job
// ended.
func TestClaimOnceAndRun(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client(t)
	keys := Keys{Prefix: "barnacle/c/"}
	w := NewWriter(cli, nil, prometheus.NewRegistry())
	newQ := func(agent string) *Queue[BackupResult] {
		return NewQueue[BackupResult](QueueOptions{Kind: KindBackup, Keys: keys, Client: cli, Agent: agent, Writer: w})
	}
	qa, qb := newQ("a"), newQ("b")
	ctx := t.Context()
	value := []byte(`{"from":"master","label":"x"}`)
	for _, id := range []string{"r1", "r2"} {
		_, err := Submit(ctx, cli, keys, id, Backup{From: FromMaster, Label: "x"})
		require.NoError(t, err)
	}

	ja, okA := qa.Claim(ctx, "r1", value, true)
	_, okB := qb.Claim(ctx, "r1", value, true)
	require.True(t, okA)
	require.False(t, okB, "a request is claimed exactly once")
	assert.True(t, qb.Claimed(ctx, "r1"))
	assert.Equal(t, "", qb.current(), "a lost claim frees the slot")
	st, _ := readStatus[BackupResult](t, cli, keys.Status(KindBackup, "r1"))
	assert.Equal(t, StateClaimed, st.State)
	assert.Equal(t, "a", st.Agent)
	assert.JSONEq(t, string(value), string(st.Request))

	// a is busy with r1: a valid r2 stays unclaimed, a bad r3 is rejected.
	assert.Equal(t, "r1", qa.current())
	_, ok := qa.Claim(ctx, "r2", value, true)
	require.False(t, ok)
	assert.False(t, qa.Claimed(ctx, "r2"))
	j3, ok := qa.Claim(ctx, "r3", []byte(`{"from":"elsewhere"}`), false)
	require.True(t, ok)
	j3.Reject(ctx, fmt.Errorf("bad"))
	st3, _ := readStatus[BackupResult](t, cli, keys.Status(KindBackup, "r3"))
	assert.Equal(t, StateRejected, st3.State)

	release := make(chan struct{})
	served := make(chan struct{})
	sctx, cancel := context.WithCancel(ctx)
	var ids []string
	var mu sync.Mutex
	go func() {
		defer close(served)
		qa.Serve(sctx, func(_ context.Context, id string, _ []byte) {
			mu.Lock()
			ids = append(ids, id)
			mu.Unlock()
		})
	}()
	qa.Start(func() {
		ja.Running(ctx)
		ja.Progress(ctx, 5, 10)
		ja.Progress(ctx, 6, 10) // within a second of the last: not written
		<-release
		ja.Progress(ctx, 10, 10) // the last is always written
		ja.Done(ctx, BackupResult{ID: "b1", Bytes: 10})
	})
	require.Eventually(t, func() bool {
		st, _ := readStatus[BackupResult](t, cli, keys.Status(KindBackup, "r1"))
		return st.State == StateRunning && st.Progress != nil && st.Progress.Done == 5
	}, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(ids) > 0 }, 10*time.Second, 20*time.Millisecond)
	cancel()
	select {
	case <-served:
		t.Fatal("Serve returned while its job still ran")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-served
	st, _ = readStatus[BackupResult](t, cli, keys.Status(KindBackup, "r1"))
	assert.Equal(t, StateDone, st.State)
	require.NotNil(t, st.Result)
	assert.Equal(t, "b1", st.Result.ID)
	assert.Equal(t, &Progress{Done: 10, Total: 10}, st.Progress)
	assert.NotNil(t, st.FinishedAt)
	assert.Equal(t, "", qa.current())
	mu.Lock()
	// Served only while unclaimed: r2, never r1 (claimed by a) or r3
	// (rejected).
	assert.Contains(t, ids, "r2")
	assert.NotContains(t, ids, "r1")
	assert.NotContains(t, ids, "r3")
	mu.Unlock()
}

// campaign makes the caller leader of an election under prefix and
// returns the fence of its term.
func campaign(t *testing.T, cli *clientv3.Client, prefix, name string) (*concurrency.Election, clientv3.Cmp) {
	t.Helper()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	e := concurrency.NewElection(s, prefix)
	require.NoError(t, e.Campaign(t.Context(), name))
	return e, clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev())
}

// TestSweep: a live status of a dead agent is marked failed on the second
// look, if unchanged; not a live agent's, not one that changed between the
// looks, and nothing at all by an agent whose term has ended.
func TestSweep(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client(t)
	keys := Keys{Prefix: "barnacle/c/"}
	w := NewWriter(cli, nil, prometheus.NewRegistry())
	q := NewQueue[RestoreResult](QueueOptions{Kind: KindRestore, Keys: keys, Client: cli, Agent: "leader", Writer: w, SweepHint: "remove it and ask again"})
	ctx := t.Context()
	putStatus := func(id string, st RestoreStatus) {
		v, err := json.Marshal(st)
		require.NoError(t, err)
		_, err = cli.Put(ctx, keys.Status(KindRestore, id), string(v))
		require.NoError(t, err)
	}
	alive := func(a string, _ time.Time) bool { return a == "live" }
	result := RestoreResult{BackupID: "b1", MovedAside: map[string]string{"/r/x": "/r/x.old"}}
	putStatus("dead", RestoreStatus{State: StateRunning, Agent: "gone", Result: &result})
	putStatus("live", RestoreStatus{State: StateRunning, Agent: "live"})
	putStatus("changes", RestoreStatus{State: StateClaimed, Agent: "gone"})

	e, fence := campaign(t, cli, keys.Prefix+"leader", "leader")
	// A fence that does not hold (another term's revision): the first look
	// notes the statuses, the second writes nothing.
	stale := clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev()+1000)
	assert.Empty(t, q.Sweep(ctx, alive, stale))
	assert.Empty(t, q.Sweep(ctx, alive, stale), "an agent whose term ended swept")
	q.seen = nil

	assert.Empty(t, q.Sweep(ctx, alive, fence), "swept on the first look")
	putStatus("changes", RestoreStatus{State: StateRunning, Agent: "gone"})
	swept := q.Sweep(ctx, alive, fence)
	require.Len(t, swept, 1)
	assert.Equal(t, keys.Status(KindRestore, "dead"), swept[0].Key)
	assert.Equal(t, "dead", swept[0].ID)
	assert.Equal(t, StateFailed, swept[0].Status.State, "Sweep returns the status as it wrote it")
	st, _ := readStatus[RestoreResult](t, cli, keys.Status(KindRestore, "dead"))
	assert.Equal(t, StateFailed, st.State)
	assert.Equal(t, "agent gone stopped before the restore finished; remove it and ask again", st.Error)
	assert.NotNil(t, st.FinishedAt)
	assert.Equal(t, &result, st.Result, "the result stays as written")
	st, _ = readStatus[RestoreResult](t, cli, keys.Status(KindRestore, "live"))
	assert.Equal(t, StateRunning, st.State)
	st, _ = readStatus[RestoreResult](t, cli, keys.Status(KindRestore, "changes"))
	assert.Equal(t, StateRunning, st.State, "changed between the looks")

	// The term ends: a third look finds "changes" unchanged, but writes
	// nothing.
	require.NoError(t, e.Resign(ctx))
	assert.Empty(t, q.Sweep(ctx, alive, fence))
	st, _ = readStatus[RestoreResult](t, cli, keys.Status(KindRestore, "changes"))
	assert.Equal(t, StateRunning, st.State)
}

// TestFiftyConcurrentRequests: fifty requests written at once, served by
// three agents' queues at once, each run exactly once by one agent and
// each ending done (the security probe's "50 concurrent requests").
func TestFiftyConcurrentRequests(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client(t)
	keys := Keys{Prefix: "barnacle/c/"}
	w := NewWriter(cli, nil, prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(t.Context())

	var mu sync.Mutex
	runs := map[string][]string{} // request ID -> agents that ran it
	var serving sync.WaitGroup
	for _, agent := range []string{"a", "b", "c"} {
		q := NewQueue[BackupResult](QueueOptions{Kind: KindBackup, Keys: keys, Client: cli, Agent: agent, Writer: w})
		serving.Add(1)
		go func() {
			defer serving.Done()
			q.Serve(ctx, func(ctx context.Context, id string, value []byte) {
				if _, err := ParseBackup(value); err != nil {
					return
				}
				job, ok := q.Claim(ctx, id, value, true)
				if !ok {
					return
				}
				q.Start(func() {
					mu.Lock()
					runs[id] = append(runs[id], agent)
					mu.Unlock()
					job.Running(ctx)
					job.Done(ctx, BackupResult{ID: "backup-" + id})
				})
			})
		}()
	}
	defer func() { cancel(); serving.Wait() }()

	const n = 50
	var submit sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		submit.Add(1)
		go func() {
			defer submit.Done()
			_, err := Submit(ctx, cli, keys, fmt.Sprintf("r%02d", i), Backup{From: FromMaster})
			errs <- err
		}()
	}
	submit.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	require.Eventually(t, func() bool {
		resp, err := cli.Get(ctx, keys.Statuses(KindBackup), clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != n {
			return false
		}
		for _, kv := range resp.Kvs {
			var st Status[BackupResult]
			if json.Unmarshal(kv.Value, &st) != nil || st.State != StateDone {
				return false
			}
		}
		return true
	}, 60*time.Second, 50*time.Millisecond, "every request done")
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, runs, n)
	for id, agents := range runs {
		assert.Len(t, agents, 1, "request %s ran on %v", id, agents)
	}
	claims, err := cli.Get(ctx, keys.Claims(KindBackup), clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.EqualValues(t, n, claims.Count, "one claim marker per request")
}
