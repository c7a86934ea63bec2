package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCLIUsageAndConfigErrors(t *testing.T) {
	t.Parallel()
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("cluster_name: x\nlease-ttl: soon\n"), 0o600))
	cases := []struct {
		name   string
		args   []string
		env    []string
		code   int
		stderr []string
		stdout string
	}{
		{name: "version", args: []string{"version"}, code: 0, stdout: "barnacle "},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2, stderr: []string{`unknown command "frobnicate"`}},
		{name: "unknown flag", args: []string{"status", "--no-such-flag"}, code: 2, stderr: []string{"unknown flag: --no-such-flag", "barnacle --help"}},
		{name: "extra argument", args: []string{"status", "extra"}, code: 2, stderr: []string{`unknown command "extra"`}},
		{name: "agent without config", args: []string{"agent"}, code: 2, stderr: []string{
			"cluster-name: required", "store-endpoints: required", "archive-url: required", "keeper-uid: required with leader-policy follow-master"}},
		{name: "bad file names every key", args: []string{"agent", "--config", bad}, code: 2, stderr: []string{
			`cluster_name (file ` + bad + ` line 1): unknown key; did you mean "cluster-name"?`,
			`lease-ttl (file ` + bad + ` line 2): invalid duration "soon"`}},
		{name: "bad env", args: []string{"status", "--cluster-name", "c", "--store-endpoints", "http://127.0.0.1:1"},
			env: []string{"BARNACLE_LOG_LEVEL=loud"}, code: 2, stderr: []string{`log-level (env BARNACLE_LOG_LEVEL): invalid value "loud"`}},
		{name: "slot name PostgreSQL would reject", args: []string{"status", "--cluster-name", "c", "--store-endpoints", "http://127.0.0.1:1", "--slot-name", "Barnacle-1"}, code: 2,
			stderr: []string{`slot-name (flag --slot-name): invalid slot name "Barnacle-1": PostgreSQL slot names use 1 to 63 of a-z, 0-9 and '_'`}},
		{name: "bad flag value", args: []string{"status", "--cluster-name", "c", "--store-endpoints", "127.0.0.1:2379"}, code: 2,
			stderr: []string{`store-endpoints (flag --store-endpoints): invalid endpoint "127.0.0.1:2379"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := barnacleEnv(t, tc.env, tc.args...)
			assert.Equal(t, tc.code, code, "exit code; stderr:\n%s", stderr)
			for _, want := range tc.stderr {
				assert.Contains(t, stderr, want)
			}
			assert.True(t, strings.HasPrefix(stdout, tc.stdout), "stdout %q", stdout)
		})
	}
}

func TestHelpListsWorkingCommandsAndKeys(t *testing.T) {
	t.Parallel()
	stdout, _, code := barnacle(t, "--help")
	require.Equal(t, 0, code)
	for _, want := range []string{"agent", "status", "version", "--cluster-name", "--store-endpoints", "--leader-takeover-delay"} {
		assert.Contains(t, stdout, want)
	}
}
