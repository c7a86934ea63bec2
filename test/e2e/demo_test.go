package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// archiveEnvFor wraps a backend for waitArchived.
func archiveEnvFor(t *testing.T, b storage.Backend) *archiveEnv {
	return &archiveEnv{t: t, backend: b}
}

// demoTable is the demo's table. lsn is the WAL insert position when the row
// was written, so that the rows whose WAL had reached the archive at some
// moment can be counted afterwards; the load writes v, the rest are
// defaults.
const demoTable = `CREATE TABLE demo (
	id bigserial PRIMARY KEY,
	v int NOT NULL,
	at timestamptz NOT NULL DEFAULT clock_timestamp(),
	lsn pg_lsn NOT NULL DEFAULT pg_current_wal_insert_lsn())`

// demoStep is one timed step of the demo, for the summary.
type demoStep struct {
	what string
	took time.Duration
}

// TestDemo is what `make demo` runs: the main job on the embedded default
// (a local etcd, a primary and two standbys, an agent beside each), then a
// base backup, a restore drill of it (barnacle drill --wait, run by an
// agent beside a standby), a write load, a failover under that load, and a
// point-in-time restore to a moment before the last writes, started and
// counted; told step by step on stdout, with a summary at the end. It is
// also an ordinary e2e test: every step is checked.
func TestDemo(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	var steps []demoStep
	step := func(format string, args ...any) func() {
		start := time.Now()
		what := fmt.Sprintf(format, args...)
		fmt.Printf("==> %s\n", what)
		return func() {
			d := time.Since(start)
			steps = append(steps, demoStep{what: what, took: d})
			fmt.Printf("    done in %s\n", d.Round(10*time.Millisecond))
		}
	}

	done := step("starting etcd on 127.0.0.1")
	etcd := testenv.StartEtcd(t)
	done()

	done = step("starting PostgreSQL 15: a primary and two streaming standbys")
	pg := testenv.NewCluster(t, testenv.ClusterOptions{Standbys: 2})
	for _, n := range pg.Nodes {
		fmt.Printf("    %s on 127.0.0.1:%d, data in %s\n", n.Name, n.Port, n.DataDir)
	}
	done()

	done = step("writing Stolon clusterdata (the harness plays Stolon's sentinel and keepers)")
	st := testenv.NewStolon(t, etcd, pg, testenv.StolonOptions{})
	fmt.Printf("    key %s, master keeper %s\n", st.Key(), st.MasterKeeper())
	done()

	done = step("starting a barnacle agent beside each keeper")
	archive := archiveDir(t)
	// The restored server's restore_command (barnacle wal-fetch) runs as
	// the postgres OS user and reads the archive the agents write.
	shareArchiveWithPostgres(t, archive)
	pw := pg.ReplPasswordFile(t)
	store := []string{"--cluster-name", cluster, "--store-endpoints", strings.Join(etcd.Endpoints(), ",")}
	common := append([]string{
		"--pg-user", testenv.ReplUser, "--pg-password-file", pw,
		"--lease-ttl", "3s", "--leader-takeover-delay", "5s",
		"--archive-url", "file://" + archive,
	}, store...)
	agents := map[string]*agentProc{}
	var all []*agentProc
	for _, n := range pg.Nodes {
		keeper := st.KeeperUID(n)
		// restore-root: where restore drills work (the agents beside the
		// standbys run them); it belongs to the postgres OS user, who runs
		// the drill's server when the agent runs as root.
		drills := filepath.Join(t.TempDir(), "drills")
		require.NoError(t, os.MkdirAll(drills, 0o755))
		testenv.PGOwn(t, drills)
		a := startAgent(t, "agent-"+keeper, append([]string{"--keeper-uid", keeper, "--restore-root", drills, "--pg-bin-dir", testenv.PGBinDir(t)}, common...)...)
		fmt.Printf("    agent-%s: metrics on http://%s/metrics, log %s\n", keeper, a.metrics, a.logPath)
		agents[keeper] = a
		all = append(all, a)
	}
	first := agents[st.MasterKeeper()]
	waitFor(t, 20*time.Second, "the master's agent to lead", func() bool { return leaderIs(all, first.name) })
	done()

	showStatus := func() {
		// status exits 1 while it reports a problem, such as a new leader
		// that does not stream yet: wait for the leader to get there.
		var out string
		waitFor(t, 20*time.Second, "barnacle status to report no problem", func() bool {
			o, stderr, code := barnacle(t, append([]string{"status", "--archive-url", "file://" + archive}, store...)...)
			if code != 0 {
				t.Logf("barnacle status exited %d: %s", code, stderr)
			}
			out = o
			return code == 0
		})
		fmt.Println("    $ barnacle status")
		for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			fmt.Println("    " + line)
		}
	}
	showStatus()

	b, err := fs.New(archive, fs.Options{})
	require.NoError(t, err)
	archived := archiveEnvFor(t, b)
	showArchive := func() {
		a := listWAL(t, b)
		var hist []string
		for h := range a.histories {
			hist = append(hist, h)
		}
		fmt.Printf("    archive %s: %d complete segments, %d .partial, history files %v, archived up to %s\n",
			archive, len(a.segments), len(a.partials), hist, archiveEnd(t, b))
	}

	primary := pg.Primary()
	require.NoError(t, primary.Exec(ctx, demoTable))
	done = step("base backup: barnacle backup --wait (the leader takes it over the replication protocol)")
	bst := backupWait(t, append([]string{"--label", "demo"}, store...)...)
	backupID := bst.Result.ID
	fmt.Printf("    backup %s, taken by %s\n", backupID, bst.Agent)
	done()

	done = step("restore drill: barnacle drill --wait (an agent beside a standby restores, starts and checks a scratch copy)")
	out, stderr, code := runBarnacle(t, 2*time.Minute, append([]string{"drill", "--wait"}, store...)...)
	require.Equal(t, 0, code, "drill: %s %s", out, stderr)
	fmt.Println("    $ barnacle drill --wait")
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		fmt.Println("    " + line)
	}
	require.Contains(t, out, "backup "+backupID)
	require.NotContains(t, out, " on "+first.name+":", "the master's agent does not drill")
	drillLine, _, _ := strings.Cut(out, "\n")
	done()

	// barnacle check with the agents' own settings: every check OK
	// (docs/integration.md shows this output), the drill's included.
	check := append([]string{"check", "--restore-drill-max-age", "1h"}, common...)
	var checkOut string
	waitFor(t, 20*time.Second, "barnacle check to pass", func() bool {
		out, _, code := barnacle(t, check...)
		checkOut = out
		return code == 0
	})
	fmt.Println("    $ barnacle check")
	for _, line := range strings.Split(strings.TrimRight(checkOut, "\n"), "\n") {
		fmt.Println("    " + line)
	}

	// A write load (one row per transaction, every 2 ms) runs on the master
	// while the leader streams; the leader's archive lag is sampled from
	// its /metrics the whole time, and the master is killed under the load.
	done = step("write load on the master (one row per transaction) while the leader streams WAL into the archive")
	load := testenv.StartLoad(t, primary, testenv.LoadOptions{Table: "demo", Interval: 2 * time.Millisecond})
	var maxLagBytes, maxLagSeconds, lastLagBytes float64
	loadUntil := time.Now().Add(2 * time.Second)
	for time.Now().Before(loadUntil) {
		m := scrape(t, first)
		lastLagBytes = metricValue(m, "barnacle_wal_archive_lag_bytes")
		maxLagBytes = max(maxLagBytes, lastLagBytes)
		maxLagSeconds = max(maxLagSeconds, metricValue(m, "barnacle_wal_archive_lag_seconds"))
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("    leader's barnacle_wal_archive_lag_bytes under load: at most %.0f bytes (lag_seconds at most %.2f)\n", maxLagBytes, maxLagSeconds)
	done()
	showArchive()

	newPrimary := pg.Standbys()[0]
	second := agents[st.KeeperUID(newPrimary)]
	done = step("failover under load: kill -9 the master's PostgreSQL; Stolon elects %s and promotes it", st.KeeperUID(newPrimary))
	require.NoError(t, primary.Kill())
	killedAt := archiveEnd(t, b) // what the archive held when the master died
	committed, _, loadErr := load.Stop()
	fmt.Printf("    the load stopped: %d rows committed on the old master (%v)\n", committed, loadErr)
	require.NoError(t, st.Failover(ctx, newPrimary))
	waitFor(t, 15*time.Second, "the new master's agent to lead", func() bool { return leaderIs(all, second.name) })
	done()

	// The timeline switch point is where the promoted standby's copy of the
	// old timeline ends: everything the old master sent before it died.
	hist, err := newPrimary.TimelineHistory(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, hist)
	switchPoint := wal.LSN(hist[len(hist)-1].SwitchPoint)
	countBelow := func(lsn wal.LSN) int64 {
		n, err := newPrimary.QueryInt64(ctx, "SELECT count(*) FROM demo WHERE lsn < $1::pg_lsn", lsn.String())
		require.NoError(t, err)
		return n
	}
	survived, err := newPrimary.QueryInt64(ctx, "SELECT count(*) FROM demo")
	require.NoError(t, err)
	archivedRows := countBelow(killedAt)
	fmt.Printf("    when the master died the archive held WAL up to %s; the old timeline ends at %s (%d bytes later)\n", killedAt, switchPoint, int64(switchPoint)-int64(killedAt))

	done = step("more writes on the new master (timeline 2): 1000 rows, the restore point, then 500 more rows")
	require.NoError(t, newPrimary.Exec(ctx, "INSERT INTO demo (v) SELECT g FROM generate_series(1, 1000) g"))
	restorePoint := markMoment(t, newPrimary)
	expected, err := newPrimary.QueryInt64(ctx, "SELECT count(*) FROM demo WHERE at <= $1", restorePoint)
	require.NoError(t, err)
	require.NoError(t, newPrimary.Exec(ctx, "INSERT INTO demo (v) SELECT g FROM generate_series(1001, 1500) g"))
	total, err := newPrimary.QueryInt64(ctx, "SELECT count(*) FROM demo")
	require.NoError(t, err)
	end := archived.waitArchived(newPrimary, 30*time.Second)
	// barnacle status shows the agents' records, which they refresh on
	// their own: wait for the new leader's to show timeline 2.
	recs := &archiveEnv{t: t, etcd: etcd}
	waitFor(t, 15*time.Second, "the new leader's record to show timeline 2", func() bool {
		r := leaderRecord(t, recs, second.name)
		return r.Timeline == 2 && r.ArchivedLSN != wal.InvalidLSN
	})
	fmt.Printf("    restore point %s: %d rows then, %d rows now; archived up to %s\n", restorePoint.UTC().Format(time.RFC3339Nano), expected, total, end)
	done()
	showStatus()
	showArchive()

	done = step("point-in-time restore: barnacle restore --target-time <restore point> into a new directory")
	target := filepath.Join(t.TempDir(), "restored")
	out, stderr, code = barnacle(t, "restore", "--cluster-name", cluster, "--archive-url", "file://"+archive,
		"--target-dir", target, "--target-time", restorePoint.UTC().Format(time.RFC3339Nano), "--target-action", "promote")
	require.Equal(t, 0, code, "restore:\n%s\n%s", out, stderr)
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		fmt.Println("    " + line)
	}
	done()

	done = step("starting PostgreSQL on the restored directory; it replays the archived WAL to the restore point")
	restored := testenv.StartRestored(t, target)
	rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
	defer rcancel()
	how, err := restored.WaitRecoveryEnd(rctx)
	require.NoError(t, err)
	require.Equal(t, testenv.RecoveryPromoted, how)
	found, err := restored.QueryInt64(ctx, "SELECT count(*) FROM demo")
	require.NoError(t, err)
	fmt.Printf("    recovery ended (%s); %d rows found\n", how, found)
	done()
	require.Equal(t, expected, found, "rows in the restored database")

	fmt.Println()
	fmt.Println("==> summary")
	fmt.Printf("    base backup            %s\n", backupID)
	fmt.Printf("    restore drill          %s\n", drillLine)
	fmt.Printf("    rows committed         %d on the old master before it was killed under load\n", committed)
	fmt.Printf("    WAL lag under load     leader's barnacle_wal_archive_lag_bytes at most %.0f B, %.0f B just before the kill\n", maxLagBytes, lastLagBytes)
	fmt.Printf("    RPO at the kill        the archive held %d of the %d committed rows (WAL to %s; %d bytes short of the old timeline's end %s)\n",
		archivedRows, committed, killedAt, int64(switchPoint)-int64(killedAt), switchPoint)
	fmt.Printf("    after the failover     %d rows on the new master (Stolon's asynchronous replication lost %d)", survived, committed-survived)
	if switchPoint > killedAt {
		fmt.Printf("; the new leader archived the last %d bytes of timeline 1 from its standby slot", int64(switchPoint)-int64(killedAt))
	}
	fmt.Println()
	fmt.Printf("    restore point          %s, before the last 500 rows (%d rows in the cluster in all)\n", restorePoint.UTC().Format(time.RFC3339Nano), total)
	fmt.Printf("    rows expected / found  %d / %d\n", expected, found)
	fmt.Println("    step times")
	for _, s := range steps {
		fmt.Printf("      %7s  %s\n", s.took.Round(10*time.Millisecond), s.what)
	}
	fmt.Printf("==> demo finished in %s; everything it started is stopped when the test ends\n", time.Since(began).Round(100*time.Millisecond))
}
