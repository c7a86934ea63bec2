package agent

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

// servedCounter is a serve function that counts its calls per request
// and claims (creates the status key, as the real ones do) every request
// whose ID does not start with "pending-".
type servedCounter struct {
	cli  *clientv3.Client
	base string
	mu   sync.Mutex
	n    map[string]int
}

func (s *servedCounter) serve(ctx context.Context, id string, _ []byte) {
	// Like the real serve functions, leave a request alone whose status key
	// exists: a retry tick may serve a request again just before the watch
	// delivers the status its first call wrote, and only calls that would
	// run a request count.
	resp, err := s.cli.Get(ctx, s.base+"status/backup/"+id, clientv3.WithCountOnly())
	if err != nil || resp.Count > 0 {
		return
	}
	// The claim is written before the call counts: a test that sees the
	// count and stops the watch must not stop it before the claim.
	if !strings.HasPrefix(id, "pending-") {
		claimed, err := putStatus(ctx, newStatusStore(s.cli, hclog.NewNullLogger(), prometheus.NewRegistry()), s.base+"status/backup/"+id, RequestStatus{State: StateClaimed, Agent: "a"}, true)
		if err != nil || !claimed {
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
// someone does.
func TestRequestWatch(t *testing.T) {
	ctx := t.Context()
	cli := testenv.StartEtcd(t).Client(t)
	base := "barnacle/c1/"
	finished := fmt.Sprintf(`{"state":"done","agent":"a","finishedAt":%q}`, time.Now().UTC().Format(time.RFC3339))
	for i := range 200 {
		id := fmt.Sprintf("old-%03d", i)
		_, err := cli.Put(ctx, base+"requests/backup/"+id, `{"from":"master"}`)
		require.NoError(t, err)
		_, err = cli.Put(ctx, base+"status/backup/"+id, finished)
		require.NoError(t, err)
		if i%2 == 0 { // the others were claimed before claims were recorded
			_, err = cli.Put(ctx, ClaimedKey(base, "backup", id), "x")
			require.NoError(t, err)
		}
	}
	sc := &servedCounter{cli: cli, base: base, n: map[string]int{}}
	start := func() (stop func()) {
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); watchRequests(wctx, cli, base+"requests/backup/", sc.serve) }()
		return func() { cancel(); <-done }
	}
	put := func(key, value string) {
		t.Helper()
		_, err := cli.Put(ctx, key, value)
		require.NoError(t, err)
	}
	served := func(id string, n int) {
		t.Helper()
		waitUntil(t, 20*time.Second, id+" served", func() bool { return sc.calls(id) >= n })
	}

	stop := start()
	put(base+"requests/backup/new-1", `{}`)
	served("new-1", 1)
	assert.Zero(t, sc.callsWithPrefix("old-"), "finished requests are not served")
	waitUntil(t, 20*time.Second, "every claim recorded", func() bool {
		resp, err := cli.Get(ctx, base+"claimed/backup/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 201
	})

	// Deleting a status key does not run the request again; the watch
	// delivers events in order, so new-2 being served means the deletion
	// was seen first.
	_, err := cli.Delete(ctx, base+"status/backup/new-1")
	require.NoError(t, err)
	put(base+"requests/backup/new-2", `{}`)
	served("new-2", 1)
	assert.Equal(t, 1, sc.calls("new-1"))

	// Nor after a restart.
	stop()
	stop = start()
	defer stop()
	put(base+"requests/backup/new-3", `{}`)
	served("new-3", 1)
	assert.Equal(t, 1, sc.calls("new-1"))
	assert.Equal(t, 1, sc.calls("new-2"))
	assert.Zero(t, sc.callsWithPrefix("old-"))

	// Unclaimed requests are served again until someone claims them.
	put(base+"requests/backup/pending-1", `{}`)
	put(base+"requests/backup/pending-2", `{}`)
	served("pending-1", 2)
	put(base+"status/backup/pending-1", finished)
	waitUntil(t, 20*time.Second, "the claim of pending-1 recorded", func() bool {
		resp, err := cli.Get(ctx, ClaimedKey(base, "backup", "pending-1"), clientv3.WithCountOnly())
		return err == nil && resp.Count == 1
	})
	after := sc.calls("pending-1")
	p2 := sc.calls("pending-2")
	served("pending-2", p2+2) // two more rounds of retries
	assert.Equal(t, after, sc.calls("pending-1"), "a claimed request is not served again")
}

// TestExpireRequests: finished requests older than the retention go from
// etcd (request, status and claim together) with their result in the log;
// newer and unfinished ones stay.
func TestExpireRequests(t *testing.T) {
	ctx := t.Context()
	cli := testenv.StartEtcd(t).Client(t)
	base := "barnacle/c1/"
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	statuses := map[string]string{
		"expired": fmt.Sprintf(`{"state":"done","agent":"a","finishedAt":%q,"result":{"id":"20261117T000000"}}`, now.Add(-8*24*time.Hour).Format(time.RFC3339)),
		"recent":  fmt.Sprintf(`{"state":"failed","agent":"a","error":"x","finishedAt":%q}`, now.Add(-24*time.Hour).Format(time.RFC3339)),
		"running": `{"state":"running","agent":"a"}`,
	}
	for id, st := range statuses {
		for key, v := range map[string]string{
			base + "requests/backup/" + id: `{}`, base + "status/backup/" + id: st, ClaimedKey(base, "backup", id): "x",
		} {
			_, err := cli.Put(ctx, key, v)
			require.NoError(t, err)
		}
	}
	var logBuf bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logBuf})
	n, err := expireRequests(ctx, cli, base, "backup", 7*24*time.Hour, now, log)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	for id := range statuses {
		for _, key := range []string{base + "requests/backup/" + id, base + "status/backup/" + id, ClaimedKey(base, "backup", id)} {
			resp, err := cli.Get(ctx, key, clientv3.WithCountOnly())
			require.NoError(t, err)
			want := int64(1)
			if id == "expired" {
				want = 0
			}
			assert.Equal(t, want, resp.Count, key)
		}
	}
	assert.Contains(t, logBuf.String(), "finished request expired from etcd")
	assert.Contains(t, logBuf.String(), `result="{\"id\":\"20261117T000000\"}"`)
}
