package request

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// servedCounter is a serve function that counts its calls per request,
// and claims (Queue.Claim, as the agent's serve functions do) every
// request whose ID does not start with "pending-".
type servedCounter struct {
	q  *Queue[BackupResult]
	mu sync.Mutex
	n  map[string]int
}

func (s *servedCounter) serve(ctx context.Context, id string, value []byte) {
	// Like the agent's serve functions, leave a claimed request alone: a
	// retry tick may serve a request again just before the watch delivers
	// the status its first call wrote, and only calls that would run a
	// request count.
	if s.q.Claimed(ctx, id) {
		return
	}
	// The claim is written before the call counts: a test that sees the
	// count and stops the watch must not stop it before the claim.
	if !strings.HasPrefix(id, "pending-") {
		if _, ok := s.q.Claim(ctx, id, value, false); !ok {
			return
		}
	}
	s.mu.Lock()
	s.n[id]++
	s.mu.Unlock()
}

func (s *servedCounter) calls(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[id]
}

func (s *servedCounter) callsWithPrefix(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, c := range s.n {
		if strings.HasPrefix(id, prefix) {
			n += c
		}
	}
	return n
}

// TestRequestWatch: finished requests are never read or served again (200
// of them cost an idle agent a re-read of every key every 2 s before), a
// deleted status key does not run its request again, not even after a
// restart, and a request nobody has claimed yet is served again until
// someone does. Claims made before claim markers existed (a status
// without one) get their marker.
func TestRequestWatch(t *testing.T) {
	ctx := t.Context()
	cli := testenv.StartEtcd(t).Client(t)
	keys := Keys{Prefix: "barnacle/c1/"}
	finished := fmt.Sprintf(`{"state":"done","agent":"a","finishedAt":%q}`, time.Now().UTC().Format(time.RFC3339))
	put := func(key, value string) {
		t.Helper()
		_, err := cli.Put(ctx, key, value)
		require.NoError(t, err)
	}
	for i := range 200 {
		id := fmt.Sprintf("old-%03d", i)
		put(keys.Request(KindBackup, id), `{"from":"master"}`)
		put(keys.Status(KindBackup, id), finished)
		if i%2 == 0 { // the others were claimed before claims were recorded
			put(keys.Claim(KindBackup, id), "x")
		}
	}
	q := NewQueue[BackupResult](QueueOptions{Kind: KindBackup, Keys: keys, Client: cli, Agent: "a", Writer: NewWriter(cli, nil, prometheus.NewRegistry())})
	sc := &servedCounter{q: q, n: map[string]int{}}
	var rawMu sync.Mutex
	raw := map[string]int{} // every call, claimed or not
	start := func() (stop func()) {
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			q.Serve(wctx, func(ctx context.Context, id string, value []byte) {
				rawMu.Lock()
				raw[id]++
				rawMu.Unlock()
				sc.serve(ctx, id, value)
			})
		}()
		return func() { cancel(); <-done }
	}
	served := func(id string, n int) {
		t.Helper()
		testenv.WaitUntil(t, 20*time.Second, id+" served", func() bool { return sc.calls(id) >= n })
	}
	rawOld := func() int {
		rawMu.Lock()
		defer rawMu.Unlock()
		n := 0
		for id, c := range raw {
			if strings.HasPrefix(id, "old-") {
				n += c
			}
		}
		return n
	}

	stop := start()
	put(keys.Request(KindBackup, "new-1"), `{}`)
	served("new-1", 1)
	assert.Zero(t, rawOld(), "finished requests are not served")
	testenv.WaitUntil(t, 20*time.Second, "every claim recorded", func() bool {
		resp, err := cli.Get(ctx, keys.Claims(KindBackup), clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 201
	})

	// Deleting a status key does not run the request again; the watch
	// delivers events in order, so new-2 being served means the deletion
	// was seen first.
	_, err := cli.Delete(ctx, keys.Status(KindBackup, "new-1"))
	require.NoError(t, err)
	put(keys.Request(KindBackup, "new-2"), `{}`)
	served("new-2", 1)
	assert.Equal(t, 1, sc.calls("new-1"))

	// Nor after a restart.
	stop()
	stop = start()
	defer stop()
	put(keys.Request(KindBackup, "new-3"), `{}`)
	served("new-3", 1)
	assert.Equal(t, 1, sc.calls("new-1"))
	assert.Equal(t, 1, sc.calls("new-2"))
	assert.Zero(t, sc.callsWithPrefix("old-"))
	assert.Zero(t, rawOld())

	// Unclaimed requests are served again until someone claims them.
	put(keys.Request(KindBackup, "pending-1"), `{}`)
	put(keys.Request(KindBackup, "pending-2"), `{}`)
	served("pending-1", 2)
	put(keys.Status(KindBackup, "pending-1"), finished)
	testenv.WaitUntil(t, 20*time.Second, "the claim of pending-1 recorded", func() bool {
		resp, err := cli.Get(ctx, keys.Claim(KindBackup, "pending-1"), clientv3.WithCountOnly())
		return err == nil && resp.Count == 1
	})
	after := sc.calls("pending-1")
	p2 := sc.calls("pending-2")
	served("pending-2", p2+2) // two more rounds of retries
	assert.Equal(t, after, sc.calls("pending-1"), "a claimed request is not served again")
}

// TestClaimMarker: the claim writes the claim marker with the status; a
// request whose status key was deleted cannot be claimed again, and is not
// withdrawn either.
func TestClaimMarker(t *testing.T) {
	ctx := t.Context()
	cli := testenv.StartEtcd(t).Client(t)
	keys := Keys{Prefix: "barnacle/c1/"}
	q := NewQueue[BackupResult](QueueOptions{Kind: KindBackup, Keys: keys, Client: cli, Agent: "a", Writer: NewWriter(cli, nil, prometheus.NewRegistry())})
	_, err := Submit(ctx, cli, keys, "r1", Backup{From: FromMaster})
	require.NoError(t, err)
	_, ok := q.Claim(ctx, "r1", []byte(`{"from":"master"}`), false)
	require.True(t, ok)
	resp, err := cli.Get(ctx, keys.Claim(KindBackup, "r1"))
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "the claim marker is written with the claim")

	_, err = cli.Delete(ctx, keys.Status(KindBackup, "r1"))
	require.NoError(t, err)
	assert.True(t, q.Claimed(ctx, "r1"))
	_, ok = q.Claim(ctx, "r1", []byte(`{"from":"master"}`), true)
	assert.False(t, ok, "claimed again after its status key was deleted")
	assert.Equal(t, "", q.current(), "a lost claim frees the slot")
	w, err := Withdraw(ctx, cli, keys, KindBackup, "r1")
	require.NoError(t, err)
	assert.False(t, w.Withdrawn, "a claimed request withdrawn")
}

// TestExpireRequests: finished requests older than the retention go from
// etcd (request, status and claim together) with their result in the log;
// newer and unfinished ones stay; an agent whose term has ended deletes
// nothing.
func TestExpireRequests(t *testing.T) {
	ctx := t.Context()
	cli := testenv.StartEtcd(t).Client(t)
	keys := Keys{Prefix: "barnacle/c1/"}
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	statuses := map[string]string{
		"expired": fmt.Sprintf(`{"state":"done","agent":"a","finishedAt":%q,"result":{"id":"20261117T000000"}}`, now.Add(-8*24*time.Hour).Format(time.RFC3339)),
		"recent":  fmt.Sprintf(`{"state":"failed","agent":"a","error":"x","finishedAt":%q}`, now.Add(-24*time.Hour).Format(time.RFC3339)),
		"running": `{"state":"running","agent":"a"}`,
	}
	for id, st := range statuses {
		for key, v := range map[string]string{
			keys.Request(KindBackup, id): `{}`, keys.Status(KindBackup, id): st, keys.Claim(KindBackup, id): "x",
		} {
			_, err := cli.Put(ctx, key, v)
			require.NoError(t, err)
		}
	}
	var logBuf bytes.Buffer
	q := NewQueue[BackupResult](QueueOptions{Kind: KindBackup, Keys: keys, Client: cli, Agent: "a",
		Writer: NewWriter(cli, nil, prometheus.NewRegistry()), Logger: hclog.New(&hclog.LoggerOptions{Output: &logBuf})})
	e, fence := campaign(t, cli, keys.Prefix+"leader", "a")
	count := func(key string) int64 {
		resp, err := cli.Get(ctx, key, clientv3.WithCountOnly())
		require.NoError(t, err)
		return resp.Count
	}

	// A fence that does not hold (another term's revision): nothing goes.
	stale := clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev()+1000)
	n, err := q.Expire(ctx, 7*24*time.Hour, now, stale)
	require.ErrorIs(t, err, ErrFenced)
	assert.Zero(t, n)
	assert.Equal(t, int64(1), count(keys.Status(KindBackup, "expired")), "expired by an agent whose term ended")

	n, err = q.Expire(ctx, 7*24*time.Hour, now, fence)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	for id := range statuses {
		for _, key := range []string{keys.Request(KindBackup, id), keys.Status(KindBackup, id), keys.Claim(KindBackup, id)} {
			want := int64(1)
			if id == "expired" {
				want = 0
			}
			assert.Equal(t, want, count(key), key)
		}
	}
	assert.Contains(t, logBuf.String(), "finished request expired from etcd")
	assert.Contains(t, logBuf.String(), `result="{\"id\":\"20261117T000000\"}"`)
}

// TestExpireClaimWithoutStatus: a request whose status key was deleted by
// hand keeps its claim marker (so that it never runs again) and used to
// keep it, and the request, in etcd for good. The leader's expiry removes
// both once the claim is older than request-retention; a recent one, one
// whose status is back, and an unclaimed request stay.
func TestExpireClaimWithoutStatus(t *testing.T) {
	ctx := t.Context()
	cli := testenv.StartEtcd(t).Client(t)
	keys := Keys{Prefix: "barnacle/c1/"}
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	const retention = 7 * 24 * time.Hour
	put := func(key, v string) {
		t.Helper()
		_, err := cli.Put(ctx, key, v)
		require.NoError(t, err)
	}
	claims := map[string]string{
		"old":        claimValue(now.Add(-8 * 24 * time.Hour)),
		"old-marker": claimValue(now.Add(-9 * 24 * time.Hour)), // its request is gone too
		"recent":     claimValue(now.Add(-24 * time.Hour)),
		"not-a-time": "x", // written by hand: age unknown, goes with its status
		"has-status": claimValue(now.Add(-30 * 24 * time.Hour)),
	}
	for id, v := range claims {
		put(keys.Claim(KindRestore, id), v)
		if id != "old-marker" {
			put(keys.Request(KindRestore, id), `{}`)
		}
	}
	put(keys.Status(KindRestore, "has-status"), `{"state":"running","agent":"a"}`)
	put(keys.Request(KindRestore, "unclaimed"), `{}`)
	// Another kind's old orphan is that queue's business.
	put(keys.Claim(KindBackup, "old"), claimValue(now.Add(-8*24*time.Hour)))
	put(keys.Request(KindBackup, "old"), `{}`)

	var logBuf bytes.Buffer
	q := NewQueue[RestoreResult](QueueOptions{Kind: KindRestore, Keys: keys, Client: cli, Agent: "a",
		Writer: NewWriter(cli, nil, prometheus.NewRegistry()), Logger: hclog.New(&hclog.LoggerOptions{Output: &logBuf})})
	e, fence := campaign(t, cli, keys.Prefix+"leader", "a")
	count := func(key string) int64 {
		t.Helper()
		resp, err := cli.Get(ctx, key, clientv3.WithCountOnly())
		require.NoError(t, err)
		return resp.Count
	}

	stale := clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev()+1000)
	n, err := q.Expire(ctx, retention, now, stale)
	require.ErrorIs(t, err, ErrFenced)
	assert.Zero(t, n)
	assert.Equal(t, int64(1), count(keys.Claim(KindRestore, "old")), "expired by an agent whose term ended")

	n, err = q.Expire(ctx, retention, now, fence)
	require.NoError(t, err)
	assert.Equal(t, 3, n)
	for _, id := range []string{"old", "old-marker", "not-a-time"} {
		assert.Zero(t, count(keys.Claim(KindRestore, id)), id)
		assert.Zero(t, count(keys.Request(KindRestore, id)), id)
	}
	for _, id := range []string{"recent", "has-status"} {
		assert.Equal(t, int64(1), count(keys.Claim(KindRestore, id)), id)
		assert.Equal(t, int64(1), count(keys.Request(KindRestore, id)), id)
	}
	assert.Equal(t, int64(1), count(keys.Status(KindRestore, "has-status")))
	assert.Equal(t, int64(1), count(keys.Request(KindRestore, "unclaimed")))
	assert.Equal(t, int64(1), count(keys.Claim(KindBackup, "old")))
	assert.Equal(t, int64(1), count(keys.Request(KindBackup, "old")))
	assert.Contains(t, logBuf.String(), "claimed request without a status expired from etcd")

	// The recent one goes once it is old enough; nothing is left to do
	// after that.
	n, err = q.Expire(ctx, retention, now.Add(7*24*time.Hour), fence)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Zero(t, count(keys.Claim(KindRestore, "recent")))
	n, err = q.Expire(ctx, retention, now.Add(7*24*time.Hour), fence)
	require.NoError(t, err)
	assert.Zero(t, n)
}
