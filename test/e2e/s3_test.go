package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage/s3"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// newS3ArchiveEnv is newArchiveEnv with an s3:// archive on srv. The
// credentials reach the agents and the CLI through their environment
// (srv.Env(), given to each process: not the test process's own, which
// parallel tests share), never through flags.
func newS3ArchiveEnv(t *testing.T, srv *testenv.S3Server, opts testenv.ClusterOptions) (*archiveEnv, string) {
	t.Helper()
	url := srv.URL("archive", "")
	e := &archiveEnv{t: t, etcd: testenv.StartEtcd(t), agents: map[string]*agentProc{}, env: srv.Env()}
	e.pg = testenv.NewCluster(t, opts)
	e.stolon = testenv.NewStolon(t, e.etcd, e.pg, testenv.StolonOptions{})
	// The same bucket and prefix as url, with srv's credentials given
	// directly rather than through the environment.
	b, err := s3.New(t.Context(), s3.Options{
		Endpoint: srv.Endpoint, Bucket: srv.Bucket, Prefix: "archive", Region: testenv.S3Region, PathStyle: true,
		Credentials: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
	})
	require.NoError(t, err)
	e.backend = b
	pw := e.pg.ReplPasswordFile(t)
	e.common = []string{
		"--cluster-name", cluster,
		"--store-endpoints", strings.Join(e.etcd.Endpoints(), ","),
		"--pg-user", testenv.ReplUser, "--pg-password-file", pw,
		"--lease-ttl", "3s", "--leader-takeover-delay", "3s",
		"--archive-url", url,
		"--log-level", "debug",
	}
	return e, url
}

// TestS3Archive runs the archiver with an s3:// archive end to end, on one
// cluster: streaming under load through a 20 s outage of the S3 server, a
// base backup through the agents that verifies, wal-fetch from S3, and a
// failover across the timeline switch.
func TestS3Archive(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := testenv.StartS3(t)
	env, url := newS3ArchiveEnv(t, srv, testenv.ClusterOptions{Standbys: 1, WALKeepSize: "64MB"})
	env.startAgents()
	primary := env.pg.Primary()
	leader := env.leaderFor(primary)
	store := env.store()

	load := testenv.StartLoad(t, primary, testenv.LoadOptions{Interval: 5 * time.Millisecond})
	gen := generateWAL(t, primary)
	time.Sleep(2 * time.Second)
	require.NoError(t, gen.Stop())
	before := env.waitArchived(primary, 30*time.Second)

	// The object store goes away for 20 s while WAL is written (small
	// transactions and a few segments' worth of bulk inserts): the slot
	// keeps it on the server, the leader retries.
	srv.Stop()
	stopped := time.Now()
	var outageErr string
	// The bound only stops a hang: on a loaded machine the leader's
	// lease can lapse and its work restart before the error shows.
	waitFor(t, 60*time.Second, "the leader to report a storage error", func() bool {
		outageErr = leaderRecord(t, env, leader.name).LastError
		return outageErr != ""
	})
	for range 2 {
		require.NoError(t, primary.Exec(ctx, "INSERT INTO walgen SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g"))
	}
	time.Sleep(20*time.Second - time.Since(stopped))
	slotRestart, err := primary.QueryString(ctx, "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'barnacle'")
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	back := time.Now()
	_, _, err = load.Stop()
	require.NoError(t, err)
	end := env.waitArchived(primary, 60*time.Second)
	recovery := time.Since(back)
	a := listWAL(t, env.backend)
	first, last := requireContiguous(t, a, 1)
	compared := requireSameAsServer(t, env.backend, a, primary, 1)
	t.Logf("S3 down for %s (archive end before %s, slot restart_lsn held at %s); archive reached %s %s after it came back; "+
		"timeline 1 segments %X..%X contiguous, %d byte-identical to pg_wal",
		back.Sub(stopped).Round(time.Millisecond), before, slotRestart, end, recovery.Round(time.Millisecond), first, last, compared)
	t.Logf("leader's error during the outage: %s", outageErr)
	logRetries(t, leader)
	require.Greater(t, compared, 2)

	// A base backup through the agents, verified from S3.
	st := backupWait(t, store...)
	out, stderr, code := barnacleEnv(t, env.env, "verify-backup", "latest", "--cluster-name", cluster, "--archive-url", url)
	require.Equal(t, 0, code, "verify-backup: %s %s", out, stderr)
	doc, err := catalog.ReadBackup(ctx, env.backend, cluster, st.Result.ID)
	require.NoError(t, err)
	assert.Equal(t, catalog.StatusDone, doc.Status)

	// wal-fetch from S3 gives pg_wal's bytes.
	var seg string
	for name := range a.segments {
		if _, err := os.Stat(filepath.Join(primary.DataDir, "pg_wal", name)); err == nil && name > seg {
			seg = name
		}
	}
	require.NotEmpty(t, seg, "an archived segment still in pg_wal")
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	out, stderr, code = barnacleEnv(t, env.env, "wal-fetch", "--cluster-name", cluster, "--archive-url", url, seg, dest)
	require.Equal(t, 0, code, "wal-fetch %s: %s %s", seg, out, stderr)
	got, err := os.ReadFile(dest)
	require.NoError(t, err)
	server, err := os.ReadFile(filepath.Join(primary.DataDir, "pg_wal", seg))
	require.NoError(t, err)
	require.True(t, bytes.Equal(server, got), "wal-fetch %s from s3 differs from pg_wal", seg)

	// Failover: timeline 1 up to the switch, the history, then timeline 2.
	standby := env.pg.Standbys()[0]
	require.NoError(t, primary.Exec(ctx, "INSERT INTO walgen SELECT g, repeat('z', 200) FROM generate_series(1, 20000) g"))
	env.waitArchived(primary, 30*time.Second)
	require.NoError(t, primary.Kill())
	require.NoError(t, env.stolon.Failover(ctx, standby))
	env.leaderFor(standby)
	require.NoError(t, standby.Exec(ctx, "INSERT INTO walgen SELECT g, repeat('y', 200) FROM generate_series(1, 50000) g"))
	require.NoError(t, standby.Exec(ctx, "SELECT pg_switch_wal()"))
	env.waitArchived(standby, 30*time.Second)
	switchPoint, _, last2 := requireArchivedAcrossSwitch(t, env.backend, standby)
	first2 := wal.SegmentOf(switchPoint, wal.DefaultSegmentSize)
	gaps, err := catalog.ReadGaps(ctx, env.backend, cluster)
	require.NoError(t, err)
	require.Empty(t, gaps)
	t.Logf("failover: switch point %s; timeline 2 archived %X..%X", switchPoint, first2, last2)

	// Restore from S3 to the end of the archive, across the timeline
	// switch. PostgreSQL runs wal-fetch and must have the credentials in
	// its environment; the harness' server has a minimal one, so they go
	// into restore_command here.
	want, err := standby.QueryInt64(ctx, "SELECT count(*) FROM walgen")
	require.NoError(t, err)
	env.waitArchived(standby, 30*time.Second)
	dir := filepath.Join(t.TempDir(), "restored")
	out, stderr, code = barnacleEnv(t, env.env, "restore", "--target-dir", dir, "--cluster-name", cluster, "--archive-url", url)
	require.Equal(t, 0, code, "restore from s3: %s %s", out, stderr)
	auto := filepath.Join(dir, "postgresql.auto.conf")
	conf, err := os.ReadFile(auto)
	require.NoError(t, err)
	require.Contains(t, string(conf), "restore_command = '")
	conf = []byte(strings.Replace(string(conf), "restore_command = '", "restore_command = 'env "+strings.Join(srv.Env(), " ")+" ", 1))
	require.NoError(t, os.WriteFile(auto, conf, 0o600))
	restored := testenv.StartRestored(t, dir)
	waitFor(t, 60*time.Second, "recovery from s3 to end", func() bool {
		in, err := restored.IsInRecovery(ctx)
		return err == nil && !in
	})
	got2, err := restored.QueryInt64(ctx, "SELECT count(*) FROM walgen")
	require.NoError(t, err)
	assert.Equal(t, want, got2, "rows restored from the s3 archive")
	t.Logf("restored from s3 across the timeline switch: %d walgen rows, as on the master", got2)
}

// logRetries logs the retry delays the agent chose after streaming
// failures, from its log.
func logRetries(t *testing.T, a *agentProc) {
	t.Helper()
	data, err := os.ReadFile(a.logPath)
	require.NoError(t, err)
	var delays []string
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, "streaming failed") {
			continue
		}
		if _, rest, ok := strings.Cut(line, "retry_in="); ok {
			delays = append(delays, strings.Fields(rest)[0])
		}
	}
	t.Logf("%s: %d streaming failures, retried after %s", a.name, len(delays), strings.Join(delays, ", "))
}
