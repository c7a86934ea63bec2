package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/check"
	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// runCheck runs barnacle check with the env's settings.
func runCheck(t *testing.T, env *archiveEnv, extra ...string) (string, int) {
	t.Helper()
	out, stderr, code := barnacle(t, append(append([]string{"check"}, extra...), env.common...)...)
	if code != 0 && code != 1 && code != 2 {
		t.Fatalf("barnacle check: exit %d: %s", code, stderr)
	}
	return out, code
}

// checkLines maps each check's name to its line, from the text output.
func checkLines(out string) map[string]string {
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if name, _, ok := strings.Cut(strings.TrimSpace(l), ": "); ok && strings.HasPrefix(l, "\t") {
			lines[name] = strings.TrimSpace(l)
		}
	}
	return lines
}

// waitCheck runs barnacle check until cond holds on its lines.
func waitCheck(t *testing.T, env *archiveEnv, within time.Duration, what string, cond func(lines map[string]string) bool) (string, int) {
	t.Helper()
	var out string
	var code int
	start := time.Now()
	for {
		out, code = runCheck(t, env)
		if cond(checkLines(out)) {
			return out, code
		}
		if time.Since(start) > within {
			t.Fatalf("timed out after %s waiting for barnacle check to show %s; last output:\n%s", within, what, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestCheck: barnacle check on a healthy cluster with a done backup, then
// after a failover with its history file deleted from the archive, with the
// agents stopped, and with the slot dropped on the master.
func TestCheck(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 1})
	env.startAgents()
	primary, standby := env.pg.Primary(), env.pg.Standbys()[0]
	env.leaderFor(primary)
	store := env.store()
	_, stderr, code := barnacle(t, append([]string{"backup", "--wait", "--label", "check"}, store...)...)
	require.Equal(t, 0, code, "backup --wait: %s", stderr)

	allOK := func(lines map[string]string) bool {
		for _, l := range lines {
			if !strings.HasSuffix(l, ": OK") {
				return false
			}
		}
		return len(lines) > 0
	}
	// The follower's standby slot appears once its agent has seen the
	// leader archive.
	out, code := waitCheck(t, env, 20*time.Second, "every check OK", allOK)
	assert.Equal(t, 0, code)
	t.Logf("healthy cluster:\n%s", out)
	for _, name := range []string{check.NameEtcd, check.NameClusterData, check.NameAgents, check.NamePostgreSQL,
		check.NameReplicationRole, check.NameWALLevel, check.NameWALSenders, check.NameSlotsHeadroom, check.NameSlot,
		check.NameStandbySlots, check.NameStreaming, check.NameArchive, check.NameIdentity, check.NameWALContinuity,
		check.NameBackupMaximumAge, check.NameMinimumRedundancy, check.NameFailedBackups, check.NameRetention, check.NameFreeSpace} {
		assert.Contains(t, out, "\t"+name+": OK\n")
	}
	nagios, code := runCheck(t, env, "--nagios")
	assert.Equal(t, 0, code)
	assert.Regexp(t, `^BARNACLE OK - cluster `+cluster+`: all \d+ checks passed\n$`, nagios)
	js, code := runCheck(t, env, "--json")
	assert.Equal(t, 0, code)
	var results []check.Result
	require.NoError(t, json.Unmarshal([]byte(js), &results), js)
	assert.NoError(t, check.Verdict(results))
	for _, r := range results {
		if r.Name == check.NameWALContinuity {
			t.Logf("WAL continuity detail: %s", r.Detail)
		}
	}

	// (b) A failover, then the new timeline's history file deleted from
	// the archive.
	require.NoError(t, primary.Kill())
	require.NoError(t, env.stolon.Failover(ctx, standby))
	env.leaderFor(standby)
	require.NoError(t, standby.Exec(ctx, "CREATE TABLE after_failover (v int); INSERT INTO after_failover SELECT generate_series(1, 1000)"))
	env.waitArchived(standby, 30*time.Second)
	waitCheck(t, env, 20*time.Second, "WAL continuity and streaming OK on timeline 2", func(l map[string]string) bool {
		return l[check.NameWALContinuity] == check.NameWALContinuity+": OK" && l[check.NameStreaming] == check.NameStreaming+": OK"
	})
	histName := catalog.WALPrefix(cluster) + "00000002.history"
	hist := readObject(t, env.backend, histName)
	require.NoError(t, env.backend.Delete(ctx, histName))
	out, code = runCheck(t, env)
	assert.Equal(t, 1, code)
	assert.Contains(t, checkLines(out)[check.NameWALContinuity], "WAL continuity: FAILED (missing 00000002.history")
	t.Logf("history file deleted:\n%s", out)
	require.NoError(t, env.backend.Put(ctx, histName, strings.NewReader(string(hist)), storage.PutOptions{}))

	// (a) Every agent stopped: nothing streams, no agent beside the keepers.
	for _, a := range env.agents {
		a.signal(syscall.SIGKILL)
		_, _ = a.wait(5 * time.Second)
	}
	out, code = waitCheck(t, env, 20*time.Second, "streaming and agents FAILED", func(l map[string]string) bool {
		return strings.HasPrefix(l[check.NameStreaming], check.NameStreaming+": FAILED") &&
			strings.HasPrefix(l[check.NameAgents], check.NameAgents+": FAILED")
	})
	assert.Equal(t, 1, code)
	lines := checkLines(out)
	assert.Contains(t, lines[check.NameStreaming], "no agent leads")
	assert.Contains(t, lines[check.NameAgents], "no agent beside keeper")
	assert.Equal(t, check.NameWALContinuity+": OK", lines[check.NameWALContinuity], "the history file is back")
	t.Logf("agents stopped:\n%s", out)

	// (c) The slot dropped on the master (once the killed leader's
	// walsender has gone).
	slot := "barnacle"
	waitFor(t, 10*time.Second, "the slot to be dropped", func() bool {
		return standby.Exec(ctx, fmt.Sprintf("SELECT pg_drop_replication_slot('%s')", slot)) == nil
	})
	out, code = runCheck(t, env)
	assert.Equal(t, 1, code)
	assert.Contains(t, checkLines(out)[check.NameSlot], "replication slot: FAILED (slot barnacle does not exist on the master")
	t.Logf("slot dropped:\n%s", out)

	nagios, code = runCheck(t, env, "--nagios")
	assert.Equal(t, 2, code)
	first, rest, _ := strings.Cut(nagios, "\n")
	assert.True(t, strings.HasPrefix(first, "BARNACLE CRITICAL - server "+cluster+" has issues * "+cluster+" FAILED: "), first)
	assert.Contains(t, first, check.NameSlot)
	assert.Contains(t, rest, cluster+"."+check.NameStreaming+": FAILED (")
	js, code = runCheck(t, env, "--json")
	assert.Equal(t, 1, code)
	results = nil
	require.NoError(t, json.Unmarshal([]byte(js), &results), js)
	assert.Error(t, check.Verdict(results))
}
