package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// eventually polls cond every 50ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestClusterReplicates(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	c := NewCluster(t, ClusterOptions{Standbys: 2})
	t.Logf("cluster with 2 standbys ready in %s", time.Since(start))
	require.Len(t, c.Nodes, 3)
	p := c.Primary()
	require.Same(t, c.Nodes[0], p)

	n, err := p.QueryInt64(ctx, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
	require.NoError(t, err)
	assert.EqualValues(t, 2, n)

	inRec, err := p.IsInRecovery(ctx)
	require.NoError(t, err)
	assert.False(t, inRec)
	sys, err := p.SystemID(ctx)
	require.NoError(t, err)
	tli, err := p.Timeline(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 1, tli)

	require.NoError(t, p.Exec(ctx, "CREATE TABLE t (v int)"))
	require.NoError(t, p.Exec(ctx, "INSERT INTO t SELECT generate_series(1, 100)"))
	for _, s := range c.Nodes[1:] {
		inRec, err := s.IsInRecovery(ctx)
		require.NoError(t, err)
		assert.True(t, inRec, s.Name)
		ssys, err := s.SystemID(ctx)
		require.NoError(t, err)
		assert.Equal(t, sys, ssys)
		eventually(t, 10*time.Second, s.Name+" has the rows", func() error {
			n, err := s.QueryInt64(ctx, "SELECT count(*) FROM t")
			if err != nil {
				return err
			}
			if n != 100 {
				return fmt.Errorf("%d rows", n)
			}
			return nil
		})
		lsn, err := s.CurrentLSN(ctx)
		require.NoError(t, err)
		assert.NotZero(t, lsn)
	}

	// Replication role: password auth over TCP, normal and replication.
	var user string
	require.NoError(t, p.QueryRow(ctx, "SELECT current_user").Scan(&user))
	assert.Equal(t, "postgres", user)
	info, err := c.Nodes[1].IdentifySystem(ctx)
	require.NoError(t, err)
	assert.Equal(t, sys, info.SystemID)

	// A standby stopped and started again streams again.
	s2 := c.Nodes[2]
	require.NoError(t, s2.Stop())
	assert.False(t, s2.Running())
	require.NoError(t, p.Exec(ctx, "INSERT INTO t SELECT generate_series(1, 5)"))
	require.NoError(t, s2.Start())
	require.NoError(t, waitStreaming(ctx, p, s2))
	eventually(t, 10*time.Second, "restarted standby catches up", func() error {
		n, err := s2.QueryInt64(ctx, "SELECT count(*) FROM t")
		if err != nil {
			return err
		}
		if n != 105 {
			return fmt.Errorf("%d rows", n)
		}
		return nil
	})
}

func TestLoadCountsAcknowledgedRows(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := NewCluster(t, ClusterOptions{})
	p := c.Primary()
	l := StartLoad(t, p, LoadOptions{Interval: -1, Table: "load_t"})
	eventually(t, 10*time.Second, "load inserts", func() error {
		n, err := p.QueryInt64(ctx, "SELECT count(*) FROM load_t")
		if err != nil {
			return err
		}
		if n < 200 {
			return fmt.Errorf("%d rows", n)
		}
		return nil
	})
	rows, last, err := l.Stop()
	require.NoError(t, err)
	assert.Equal(t, rows, last)
	n, err := p.QueryInt64(ctx, "SELECT count(*) FROM load_t")
	require.NoError(t, err)
	assert.Equal(t, rows, n)
	mx, err := p.QueryInt64(ctx, "SELECT max(v) FROM load_t")
	require.NoError(t, err)
	assert.Equal(t, last, mx)

	require.NoError(t, PGBench(ctx, p, "-i", "-s", "1", "-q"))
	require.NoError(t, PGBench(ctx, p, "-t", "20", "-c", "2", "-n"))

	// The node going away ends the load with an error, not a test failure.
	l2 := StartLoad(t, p, LoadOptions{Table: "load_t"})
	eventually(t, 10*time.Second, "second load inserts", func() error {
		n, err := p.QueryInt64(ctx, "SELECT count(*) FROM load_t")
		if err != nil {
			return err
		}
		if n <= rows {
			return fmt.Errorf("%d rows", n)
		}
		return nil
	})
	require.NoError(t, p.Kill())
	select {
	case <-l2.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("load did not end after its node was killed")
	}
	_, _, err = l2.Stop()
	assert.Error(t, err)
	assert.False(t, p.Running())
	require.NoError(t, p.Start())
	n, err = p.QueryInt64(ctx, "SELECT count(*) FROM load_t")
	require.NoError(t, err)
	assert.Greater(t, n, rows)
}

// A wrong BARNACLE_PG_BINDIR is an error that says how to install
// PostgreSQL, not a silent fallback and never a skip.
func TestPGBinDirFromEnvMustHaveInitdb(t *testing.T) {
	t.Setenv("BARNACLE_PG_BINDIR", t.TempDir())
	_, err := findPGEnv()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "BARNACLE_PG_BINDIR")
	assert.Contains(t, err.Error(), "apt-get install -y postgresql-15")
}

func TestParseTimelineHistory(t *testing.T) {
	t.Parallel()
	h, err := parseTimelineHistory("1\t0/5039A60\tno recovery target specified\n\n2\t0/8000060\tno recovery target specified\n")
	require.NoError(t, err)
	assert.Equal(t, []TimelineHistoryEntry{
		{Timeline: 1, SwitchPoint: 0x5039A60, Reason: "no recovery target specified"},
		{Timeline: 2, SwitchPoint: 0x8000060, Reason: "no recovery target specified"},
	}, h)
	_, err = parseTimelineHistory("x\ty\n")
	assert.Error(t, err)
}
