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
)

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
	pw := filepath.Join(t.TempDir(), "replpw")
	require.NoError(t, os.WriteFile(pw, []byte(cluster.ReplPassword()+"\n"), 0o600))
	store := []string{"--cluster-name", "stolon-cluster", "--store-endpoints", strings.Join(etcd.Endpoints(), ",")}
	common := append([]string{
		"--pg-user", testenv.ReplUser, "--pg-password-file", pw,
		"--lease-ttl", "3s", "--leader-takeover-delay", "5s",
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

	newPrimary := cluster.Standbys()[0]
	done = step("failover: kill -9 the master's PostgreSQL; Stolon elects %s and promotes it", st.KeeperUID(newPrimary))
	require.NoError(t, cluster.Primary().Kill())
	require.NoError(t, st.Failover(ctx, newPrimary))
	second := "agent-" + st.KeeperUID(newPrimary)
	waitFor(t, 15*time.Second, "the new master's agent to lead", func() bool { return leaderIs(agents, second) })
	done()
	showStatus()

	fmt.Printf("==> demo finished in %s; everything it started is stopped now\n", time.Since(began).Round(100*time.Millisecond))
}
