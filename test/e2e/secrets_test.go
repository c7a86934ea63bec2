package e2e

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// TestSecretsRefusedInURLs: a secret put where none belongs (an archive
// URL's query, user information in its endpoint parameter or in
// store-endpoints) is a configuration error (exit 2) for every command,
// the agent included, whose message says where credentials go and never
// repeats the secret. Before, the agent started and printed the URL in its
// start-up line, and the commands printed it in their errors.
func TestSecretsRefusedInURLs(t *testing.T) {
	t.Parallel()
	const planted = "plantedSECRET4711"
	dir := t.TempDir()
	base := map[string]string{
		"--cluster-name":    cluster,
		"--store-endpoints": "http://127.0.0.1:1",
		"--archive-url":     "file://" + dir,
	}
	cases := []struct {
		name, flag, value, want string
	}{
		{"archive-url query", "--archive-url", "s3://bucket/p?region=r&secret_key=" + planted,
			`unknown query parameter "secret_key"; known: endpoint, region, path-style`},
		{"archive-url endpoint userinfo", "--archive-url", "s3://bucket/p?endpoint=http://AKID:" + planted + "@127.0.0.1:9000",
			"credentials never go in the endpoint parameter; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment"},
		{"archive-url userinfo", "--archive-url", "s3://AKID:" + planted + "@bucket/p",
			"credentials never go in the archive URL"},
		{"store-endpoints userinfo", "--store-endpoints", "http://root:" + planted + "@127.0.0.1:2379",
			"credentials never go in an endpoint; set store-username and store-password-file"},
	}
	commands := [][]string{
		{"agent", "--keeper-uid", "keeper0", "--log-level", "debug"},
		{"status", "--json"},
		{"list-backups", "--json"},
		{"show-backup", "latest", "--json"},
		{"check", "--json"},
		{"wal-fetch", "000000010000000000000001", filepath.Join(dir, "x")},
		{"restore", "--target-dir", filepath.Join(dir, "restore")},
		{"backup"},
	}
	for _, tc := range cases {
		for _, c := range commands {
			t.Run(tc.name+"/"+c[0], func(t *testing.T) {
				args := append([]string{}, c...)
				for f, v := range base {
					if f != tc.flag {
						args = append(args, f, v)
					}
				}
				args = append(args, tc.flag, tc.value)
				stdout, stderr, code := barnacle(t, args...)
				want := 2
				if c[0] == "wal-fetch" {
					// wal-fetch never exits 2, which PostgreSQL would read
					// as "no such file" (docs/design.md §4).
					want = 255
				}
				assert.Equal(t, want, code, "exit code; stderr:\n%s", stderr)
				assert.Contains(t, stderr, tc.want)
				assert.NotContains(t, stdout+stderr, planted)
			})
		}
	}
}

// TestNoSecretInOutputs plants the secrets a running system holds in the
// places they belong (the S3 secret key in the environment, the
// replication password in pg-password-file) and greps every output
// channel for them: the agents' logs at debug, /status, /readyz, /metrics,
// every barnacle key in etcd (agent records with a storage error in
// lastError, request statuses), and the --json outputs and errors of the
// commands, during an S3 outage and after a backup.
func TestNoSecretInOutputs(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := testenv.StartS3(t)
	env, url := newS3ArchiveEnv(t, srv, testenv.ClusterOptions{Standbys: 1})
	secrets := []string{srv.SecretKey, env.pg.ReplPassword()}
	for _, s := range secrets {
		require.GreaterOrEqual(t, len(s), 8, "a secret long enough not to appear by chance")
	}
	env.startAgents()
	primary := env.pg.Primary()
	leader := env.leaderFor(primary)
	env.waitArchived(primary, 30*time.Second)
	store := env.store()
	archive := []string{"--cluster-name", cluster, "--archive-url", url}

	var outputs []string
	collect := func(what, s string) { outputs = append(outputs, what+":\n"+s) }
	run := func(args ...string) {
		stdout, stderr, _ := barnacleEnv(t, env.env, args...)
		collect("barnacle "+strings.Join(args, " "), stdout+stderr)
	}
	// One look each, so a loaded machine gets more time than the polling
	// client's 500 ms.
	patient := &http.Client{Timeout: 15 * time.Second}
	get := func(a *agentProc, path string) {
		resp, err := patient.Get("http://" + a.metrics + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		var b bytes.Buffer
		_, err = b.ReadFrom(resp.Body)
		require.NoError(t, err)
		collect(a.name+" "+path, b.String())
	}
	etcdRecords := func() {
		resp, err := env.etcd.Client(t).Get(ctx, "barnacle/", clientv3.WithPrefix())
		require.NoError(t, err)
		for _, kv := range resp.Kvs {
			collect("etcd "+string(kv.Key), string(kv.Value))
		}
	}

	run(append([]string{"backup", "--wait", "--json"}, store...)...)
	run(append([]string{"list-backups", "--json"}, archive...)...)
	run(append([]string{"show-backup", "latest", "--json"}, archive...)...)

	// An S3 outage puts the storage error into lastError and the log,
	// once the archiver has WAL to write: an idle server may write none
	// for minutes.
	srv.Stop()
	waitFor(t, 60*time.Second, "the leader to report a storage error", func() bool {
		return leaderRecord(t, env, leader.name).LastError != "" || nudgeWAL(t, primary)
	})
	require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
	for _, a := range env.list() {
		for _, p := range []string{"/status", "/readyz", "/metrics", "/healthz"} {
			get(a, p)
		}
	}
	etcdRecords()
	run(append([]string{"status", "--json"}, store...)...)
	run(append(append([]string{"check", "--json"}, store...), "--archive-url", url)...)
	run(append([]string{"list-backups", "--json"}, archive...)...)
	require.NoError(t, srv.Start())
	env.waitArchived(primary, 60*time.Second)
	etcdRecords()
	run(append([]string{"status", "--json"}, store...)...)

	for _, a := range env.list() {
		b, err := os.ReadFile(a.logPath)
		require.NoError(t, err)
		collect("log of "+a.name, string(b))
	}
	all := strings.Join(outputs, "\n")
	require.Contains(t, all, "lastError", "the outage reached the agent records")
	require.Contains(t, all, "[DEBUG]", "logs at debug level were collected")
	for _, o := range outputs {
		for _, s := range secrets {
			if strings.Contains(o, s) {
				what, _, _ := strings.Cut(o, "\n")
				t.Errorf("a secret appears in %s", what)
			}
		}
	}
	t.Logf("grepped %d outputs, %d bytes, for %d secrets", len(outputs), len(all), len(secrets))
}
