package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// TestStandbyFromArchive is a standby fed by the archive alone
// (docs/design.md, "A standby fed by the archive"; docs/integration.md,
// Stolon's standby cluster): restored by the guide's dataRestoreCommand,
// started the way Stolon's keeper starts a standby cluster's standby
// leader (standby.signal, restore_command from
// standbyConfig.archiveRecoverySettings, recovery_target_timeline
// latest, no primary_conninfo). It replays rows committed on the source
// while their segment is still a .partial, measures the commit-to-visible
// lag under load with and without the .partial served, and follows the
// source cluster across a failover to timeline 2.
func TestStandbyFromArchive(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1})
	shareArchiveWithPostgres(t, env.dir)
	env.startAgents()
	primary := env.pg.Primary()
	replica := env.pg.Standbys()[0]
	env.leaderFor(primary)
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE probe (id bigint PRIMARY KEY)"))
	// The WAL benchmark's load is pgbench (README, Benchmarks); its tables
	// go into the backup, so that the standby does not replay their load.
	out, err := pgbench(ctx, t, primary, "-i", "-s", "10", "-q")
	require.NoError(t, err, out)
	store := env.store()
	out, stderr, code := barnacle(t, append([]string{"backup", "--wait"}, store...)...)
	require.Equal(t, 0, code, "backup: %s %s", out, stderr)

	// The guide's standby cluster commands, with this test's paths.
	cfg := filepath.Join(t.TempDir(), "barnacle.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf("cluster-name: %s\narchive-url: file://%s\n", cluster, env.dir)), 0o644))
	testenv.PGOwn(t, cfg)
	dir := filepath.Join(t.TempDir(), "standby")
	restoreCmd := fmt.Sprintf("%s restore --config %s --target-dir %s --data-only", binary, cfg, dir)
	fetchCmd := fmt.Sprintf("%s wal-fetch --config %s %%f %%p", binary, cfg)
	out, stderr, code = barnacle(t, strings.Fields(restoreCmd)[1:]...)
	require.Equal(t, 0, code, "%s:\n%s\n%s", restoreCmd, out, stderr)
	require.NoFileExists(t, filepath.Join(dir, "recovery.signal"), "--data-only leaves recovery to the keeper")
	// What the keeper writes for a standby that follows an external
	// source (its recovery parameters go into postgresql.conf; the
	// restored server's auto.conf is the harness' equivalent).
	// wal_retrieve_retry_interval is lowered from 5 s: it bounds the lag.
	recoveryConf := func(command string) {
		conf := fmt.Sprintf("restore_command = '%s'\nrecovery_target_timeline = 'latest'\nwal_retrieve_retry_interval = '1s'\n", command)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "postgresql.auto.conf"), []byte(conf), 0o600))
	}
	recoveryConf(fetchCmd)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "standby.signal"), nil, 0o600))
	sb := testenv.StartRestored(t, dir)
	reload := func(command string) {
		recoveryConf(command)
		testenv.PGOwn(t, filepath.Join(dir, "postgresql.auto.conf"))
		require.NoError(t, sb.Exec(ctx, "SELECT pg_reload_conf()"))
		waitFor(t, 10*time.Second, "restore_command to be reloaded", func() bool {
			s, err := sb.QueryString(ctx, "SHOW restore_command")
			return err == nil && s == command
		})
	}
	maxProbe := func(n *testenv.Node) int64 {
		v, err := n.QueryInt64(ctx, "SELECT coalesce(max(id), 0) FROM probe")
		if err != nil {
			return -1
		}
		return v
	}

	// A quiet source: a row committed now stays in a .partial (16 MB of
	// WAL are far off), and the standby replays it from there.
	require.NoError(t, primary.Exec(ctx, "INSERT INTO probe VALUES (1)"))
	lsn, err := primary.CurrentLSN(ctx)
	require.NoError(t, err)
	took := waitFor(t, 60*time.Second, "the standby to replay row 1", func() bool { return maxProbe(sb.Node) >= 1 })
	a := listWAL(t, env.backend)
	name := wal.SegmentFileName(1, wal.SegmentOf(wal.LSN(lsn), wal.DefaultSegmentSize), wal.DefaultSegmentSize)
	require.True(t, a.partials[name] && !a.segments[name], "segment %s is still only a .partial in the archive", name)
	t.Logf("row 1 (at %s, segment %s still a .partial) visible on the archive-fed standby after %s", wal.LSN(lsn), name, took.Round(time.Millisecond))
	// An idle source: the standby asks for that segment again at every
	// retry, and is not served it again (PostgreSQL logs each restore)
	// while the .partial does not grow: it reads its copy in pg_wal.
	calls := filepath.Join(t.TempDir(), "calls")
	require.NoError(t, os.WriteFile(calls, nil, 0o666))
	testenv.PGOwn(t, calls)
	require.NoError(t, os.Chmod(calls, 0o666))
	restored := func() int {
		b, err := os.ReadFile(sb.LogPath())
		require.NoError(t, err)
		return strings.Count(string(b), fmt.Sprintf("restored log file \"%s\" from archive", name))
	}
	asks := func(n int) {
		t.Helper()
		b, err := os.ReadFile(calls)
		require.NoError(t, err)
		want := strings.Count(string(b), name) + n
		waitFor(t, 60*time.Second, fmt.Sprintf("the standby to ask for %s %d times more", name, n), func() bool {
			b, err := os.ReadFile(calls)
			require.NoError(t, err)
			return strings.Count(string(b), name) >= want
		})
	}
	archived := func() []byte { return readObject(t, env.backend, catalog.WALPrefix(cluster)+name+".partial") }
	reload(fmt.Sprintf("echo %%f >> %s && %s", calls, fetchCmd))
	// The source is idle only between its own background records (the
	// bgwriter's running-xacts snapshot after the insert, autovacuum
	// after pgbench -i): they grow the archived .partial, and the grown
	// one is rightly served. Judge a window in which the archived .partial
	// did not change, from before the standby asked twice (so it holds
	// what the archive held) to after it asked three times more.
	var quiet bool
	for attempt := 1; attempt <= 5 && !quiet; attempt++ {
		from := archived()
		asks(2)
		before := restored()
		asks(3)
		after := restored()
		if to := archived(); !bytes.Equal(from, to) {
			t.Logf("the archived %s.partial grew from %d to %d bytes during window %d; another window", name, len(from), len(to), attempt)
			continue
		}
		quiet = true
		require.Equal(t, before, after, "an unchanged .partial is not restored again")
	}
	require.True(t, quiet, "no window of 5 in which the archived .partial stayed unchanged")
	require.FileExists(t, filepath.Join(dir, "pg_wal", ".barnacle-served-partial"))
	reload(fetchCmd)

	// The segment after the archive's end: a quick, quiet "not yet".
	next := wal.SegmentFileName(1, wal.SegmentOf(wal.LSN(lsn), wal.DefaultSegmentSize)+1, wal.DefaultSegmentSize)
	fetchDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(fetchDir, "standby.signal"), nil, 0o600))
	start := time.Now()
	out, stderr, code = barnacleIn(t, fetchDir, "wal-fetch", "--config", cfg, next, filepath.Join(fetchDir, "RECOVERYXLOG"))
	notYet := time.Since(start)
	require.Equal(t, 1, code, "%s %s", out, stderr)
	require.Empty(t, stderr)
	t.Logf("wal-fetch %s (not archived yet) on a standby: exit 1 in %s", next, notYet.Round(time.Millisecond))

	// Lag under load, with and without the .partial served.
	probeID := int64(1)
	const phase = 30 * time.Second
	measure := func(what string) {
		from, err := primary.CurrentLSN(ctx)
		require.NoError(t, err)
		// The benchmark's pgbench run (4 clients, 2 threads), for the
		// phase; the probe rows are committed meanwhile.
		bctx, cancel := context.WithCancel(ctx)
		defer cancel()
		bench := make(chan string, 1)
		go func() {
			out, _ := pgbench(bctx, t, primary, "-c", "4", "-j", "2", "-T", fmt.Sprint(int(phase.Seconds())))
			bench <- out
		}()
		lags := probeLag(t, primary, sb.Node, &probeID, phase)
		cancel()
		out := <-bench
		to, err := primary.CurrentLSN(ctx)
		require.NoError(t, err)
		tps := "?"
		if m := regexp.MustCompile(`tps = ([0-9.]+)`).FindStringSubmatch(out); m != nil {
			tps = m[1]
		}
		p50, p99 := percentile(lags, 50), percentile(lags, 99)
		t.Logf("LAG %s: pgbench %s tps, WAL %.1f MB/s; %d commits, commit to visible on the archive-fed standby p50 %s p99 %s max %s",
			what, tps, float64(to-from)/phase.Seconds()/(1<<20), len(lags),
			p50.Round(time.Millisecond), p99.Round(time.Millisecond), slices.Max(lags).Round(time.Millisecond))
	}
	measure(".partial served")
	reload(fetchCmd + " --standby-partial=false")
	waitFor(t, 120*time.Second, "the standby to catch up", func() bool {
		require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
		return maxProbe(sb.Node) == probeID
	})
	measure("complete segments only")
	reload(fetchCmd)

	// Failover of the source cluster once its standby, the archive and the
	// archive-fed standby have everything (asynchronous replication: WAL
	// the promoted one lacks would fork the archive-fed standby off).
	probeID++
	require.NoError(t, primary.Exec(ctx, "INSERT INTO probe VALUES ($1)", probeID))
	env.waitArchived(primary, 3*time.Minute)
	waitFor(t, 60*time.Second, "both standbys to replay the last row", func() bool {
		return maxProbe(replica) == probeID && maxProbe(sb.Node) == probeID
	})
	require.NoError(t, primary.Kill())
	require.NoError(t, env.stolon.Failover(ctx, replica))
	env.leaderFor(replica)
	probeID++
	require.NoError(t, replica.Exec(ctx, "INSERT INTO probe VALUES ($1)", probeID))
	took = waitFor(t, 90*time.Second, "the archive-fed standby to replay timeline 2", func() bool { return maxProbe(sb.Node) == probeID })
	objs, err := env.backend.List(ctx, catalog.WALPrefix(cluster)+"00000002.history")
	require.NoError(t, err)
	require.Len(t, objs, 1)
	t.Logf("row %d, committed on timeline 2, visible on the archive-fed standby after %s", probeID, took.Round(time.Millisecond))
	in, err := sb.IsInRecovery(ctx)
	require.NoError(t, err)
	require.True(t, in, "the archive-fed standby never promotes on its own")
}

// probeLag commits one row into probe on src every 100 ms for d, and
// returns, for each, how long after its commit returned it was visible
// on dst (read every 20 ms). Rows not visible within a minute after d
// fail the test.
func probeLag(t *testing.T, src, dst *testenv.Node, id *int64, d time.Duration) []time.Duration {
	t.Helper()
	ctx := t.Context()
	sc, err := src.Connect(ctx)
	require.NoError(t, err)
	defer sc.Close(context.Background())
	dc, err := dst.Connect(ctx)
	require.NoError(t, err)
	defer dc.Close(context.Background())
	committed := map[int64]time.Time{}
	var lags []time.Duration
	seen := *id
	poll := func() {
		var m int64
		if err := dc.QueryRow(ctx, "SELECT coalesce(max(id), 0) FROM probe").Scan(&m); err != nil {
			return
		}
		now := time.Now()
		for ; seen < m; seen++ {
			if at, ok := committed[seen+1]; ok {
				lags = append(lags, now.Sub(at))
			}
		}
	}
	end := time.Now().Add(d)
	nextCommit := time.Now()
	for time.Now().Before(end) {
		if !time.Now().Before(nextCommit) {
			*id++
			_, err := sc.Exec(ctx, "INSERT INTO probe VALUES ($1)", *id)
			require.NoError(t, err)
			committed[*id] = time.Now()
			nextCommit = nextCommit.Add(100 * time.Millisecond)
		}
		poll()
		time.Sleep(20 * time.Millisecond)
	}
	deadline := time.Now().Add(time.Minute)
	for seen < *id && time.Now().Before(deadline) {
		// Close the segment, so that the rows reach a standby that reads
		// complete segments only.
		_, _ = sc.Exec(ctx, "SELECT pg_switch_wal()")
		poll()
		time.Sleep(20 * time.Millisecond)
	}
	require.Equal(t, *id, seen, "every probe row reaches the standby")
	return lags
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}

// pgbench runs PostgreSQL's pgbench against node's postgres database.
func pgbench(ctx context.Context, t *testing.T, node *testenv.Node, args ...string) (string, error) {
	t.Helper()
	cmd := testenv.PGCommand(ctx, t, "pgbench", args...)
	cmd.Env = append(cmd.Env, "PGHOST="+node.Host, "PGPORT="+strconv.Itoa(node.Port), "PGUSER=postgres", "PGDATABASE=postgres")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// barnacleIn is barnacle run in dir, as PostgreSQL runs restore_command in
// its data directory.
func barnacleIn(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run barnacle %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}
