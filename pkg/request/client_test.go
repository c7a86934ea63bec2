package request

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// TestSubmitFenced: a leader-only request is written while the term holds
// and not after it ended.
func TestSubmitFenced(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client(t)
	keys := Keys{Prefix: "barnacle/c/"}
	ctx := t.Context()
	e, fence := campaign(t, cli, keys.Prefix+"leader", "a")
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	id := GapID(now)
	assert.Regexp(t, `^gap-20261125T100000-[0-9a-f]{4}$`, id)
	key, err := Submit(ctx, cli, keys, id, GapBackup("a", "after WAL gap", now), fence)
	require.NoError(t, err)
	assert.Equal(t, "barnacle/c/requests/backup/"+id, key)
	resp, err := cli.Get(ctx, key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	_, err = ParseBackup(resp.Kvs[0].Value)
	require.NoError(t, err)

	require.NoError(t, e.Resign(ctx))
	// Another agent leads now.
	_, _ = campaign(t, cli, keys.Prefix+"leader", "b")
	_, err = Submit(ctx, cli, keys, "gap-2", GapBackup("a", "after WAL gap", time.Now()), fence)
	require.ErrorIs(t, err, ErrFenced)
	resp, err = cli.Get(ctx, keys.Request(KindBackup, "gap-2"))
	require.NoError(t, err)
	assert.Empty(t, resp.Kvs, "a request written by an agent whose term ended")
}

// TestWithdraw: an unclaimed request is deleted; a claimed one stays, and
// the answer names who claimed it.
func TestWithdraw(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client(t)
	keys := Keys{Prefix: "barnacle/c/"}
	ctx := t.Context()
	for _, id := range []string{"unclaimed", "claimed"} {
		_, err := Submit(ctx, cli, keys, id, Restore{Keeper: "k", TargetDir: "/r/x"})
		require.NoError(t, err)
	}
	q := NewQueue[RestoreResult](QueueOptions{Kind: KindRestore, Keys: keys, Client: cli, Agent: "agent-k", Writer: NewWriter(cli, nil, prometheus.NewRegistry())})
	_, ok := q.Claim(ctx, "claimed", []byte(`{"keeper":"k"}`), false)
	require.True(t, ok)

	w, err := Withdraw(ctx, cli, keys, KindRestore, "unclaimed")
	require.NoError(t, err)
	assert.Equal(t, Withdrawal{Withdrawn: true}, w)
	resp, err := cli.Get(ctx, keys.Request(KindRestore, "unclaimed"))
	require.NoError(t, err)
	assert.Empty(t, resp.Kvs)

	w, err = Withdraw(ctx, cli, keys, KindRestore, "claimed")
	require.NoError(t, err)
	assert.Equal(t, Withdrawal{ClaimedBy: "agent-k"}, w)
	resp, err = cli.Get(ctx, keys.Request(KindRestore, "claimed"))
	require.NoError(t, err)
	assert.Len(t, resp.Kvs, 1, "a claimed request was withdrawn")
}

// TestFollow: Follow sees every status written and returns the final one;
// it gives up with ctx.
func TestFollow(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client(t)
	keys := Keys{Prefix: "barnacle/c/"}
	ctx := t.Context()
	put := func(st BackupStatus) {
		v, err := json.Marshal(st)
		require.NoError(t, err)
		_, err = cli.Put(ctx, keys.Status(KindBackup, "r"), string(v))
		require.NoError(t, err)
	}
	seen := make(chan State, 10)
	type out struct {
		st  BackupStatus
		err error
	}
	done := make(chan out, 1)
	go func() {
		st, err := Follow(ctx, cli, keys, KindBackup, "r", func(st BackupStatus) { seen <- st.State })
		done <- out{st, err}
	}()
	put(BackupStatus{State: StateClaimed, Agent: "a"})
	require.Equal(t, StateClaimed, <-seen)
	put(BackupStatus{State: StateRunning, Agent: "a", Progress: &Progress{Done: 1, Total: 2}})
	require.Equal(t, StateRunning, <-seen)
	put(BackupStatus{State: StateDone, Agent: "a", Result: &BackupResult{ID: "b1"}})
	o := <-done
	require.NoError(t, o.err)
	assert.Equal(t, StateDone, o.st.State)
	assert.Equal(t, "b1", o.st.Result.ID)

	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := Follow[BackupResult](tctx, cli, keys, KindBackup, "never", nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}
