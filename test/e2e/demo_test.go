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
)

// archiveEnvFor wraps a backend for waitArchived.
func archiveEnvFor(t *testing.T, b storage.Backend) *archiveEnv {
	return &archiveEnv{t: t, backend: b}
}

// TestDemo is what `make demo` runs: the main job on the embedded default
// (a local etcd, a primary and two standbys, an agent beside each, a
// failover), told step by step on stdout. It is also an ordinary e2e test:
// every step is checked.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	step := func(format string, args ...any) func() {
		start := time.Now()
		fmt.Printf("==> "+format+"\n", args...)
		return func() { fmt.Printf("    done in %s\n", time.Since(start).Round(10*time.Millisecond)) }
	}

	done := step("starting etcd on 127.0.0.1")
	etcd := testenv.StartEtcd(t)
	done()

	done = step("starting PostgreSQL 15: a primary and two streaming standbys")
	cluster := testenv.NewCluster(t, testenv.ClusterOptions{Standbys: 2})
	for _, n := range cluster.Nodes {
		fmt.Printf("    %s on 127.0.0.1:%d, data in %s\n", n.Name, n.Port, n.DataDir)
	}
	done()

	done = step("writing Stolon clusterdata (the harness plays Stolon's sentinel and keepers)")
	st := testenv.NewStolon(t, etcd, cluster, testenv.StolonOptions{})
	fmt.Printf("    key %s, master keeper %s\n", st.Key(), st.MasterKeeper())
	done()

	done = step("starting a barnacle agent beside each keeper")
	archive := archiveDir(t)
	pw := filepath.Join(t.TempDir(), "replpw")
	require.NoError(t, os.WriteFile(pw, []byte(cluster.ReplPassword()+"\n"), 0o600))
	store := []string{"--cluster-name", "stolon-cluster", "--store-endpoints", strings.Join(etcd.Endpoints(), ",")}
	common := append([]string{
		"--pg-user", testenv.ReplUser, "--pg-password-file", pw,
		"--lease-ttl", "3s", "--leader-takeover-delay", "5s",
		"--archive-url", "file://" + archive,
	}, store...)
	var agents []*agentProc
	for _, n := range cluster.Nodes {
		keeper := st.KeeperUID(n)
		a := startAgent(t, "agent-"+keeper, append([]string{"--keeper-uid", keeper}, common...)...)
		fmt.Printf("    agent-%s: metrics on http://%s/metrics, log %s\n", keeper, a.metrics, a.logPath)
		agents = append(agents, a)
	}
	first := "agent-" + st.MasterKeeper()
	waitFor(t, 20*time.Second, "the master's agent to lead", func() bool { return leaderIs(agents, first) })
	done()

	showStatus := func() {
		out, stderr, code := barnacle(t, append([]string{"status"}, store...)...)
		require.Equal(t, 0, code, stderr)
		fmt.Println("    $ barnacle status")
		for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			fmt.Println("    " + line)
		}
	}
	showStatus()

	b, err := fs.New(archive, fs.Options{})
	require.NoError(t, err)
	showArchive := func() {
		a := listWAL(t, b)
		var hist []string
		for h := range a.histories {
			hist = append(hist, h)
		}
		fmt.Printf("    archive %s: %d complete segments, %d .partial, history files %v, archived up to %s\n",
			archive, len(a.segments), len(a.partials), hist, archiveEnd(t, b))
	}
	done = step("writing 200k rows on the master; the leader streams the WAL into the archive")
	require.NoError(t, cluster.Primary().Exec(ctx, "CREATE TABLE demo (id int, v text); INSERT INTO demo SELECT g, md5(g::text) FROM generate_series(1, 200000) g"))
	archiveEnvFor(t, b).waitArchived(cluster.Primary(), 30*time.Second)
	done()
	showArchive()

	newPrimary := cluster.Standbys()[0]
	done = step("failover: kill -9 the master's PostgreSQL; Stolon elects %s and promotes it", st.KeeperUID(newPrimary))
	require.NoError(t, cluster.Primary().Kill())
	require.NoError(t, st.Failover(ctx, newPrimary))
	second := "agent-" + st.KeeperUID(newPrimary)
	waitFor(t, 15*time.Second, "the new master's agent to lead", func() bool { return leaderIs(agents, second) })
	require.NoError(t, newPrimary.Exec(ctx, "INSERT INTO demo SELECT g, md5(g::text) FROM generate_series(200001, 300000) g"))
	archiveEnvFor(t, b).waitArchived(newPrimary, 30*time.Second)
	done()
	showStatus()
	showArchive()

	fmt.Printf("==> demo finished in %s; everything it started is stopped now\n", time.Since(began).Round(100*time.Millisecond))
}
