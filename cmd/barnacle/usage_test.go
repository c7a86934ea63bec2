package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/config"
)

// TestDidYouMean: a mistyped command or flag is a usage error (exit 2)
// that names the closest one; something far from every name gets none.
func TestDidYouMean(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"statsu"}, `unknown command "statsu"; did you mean "status"?`},
		{[]string{"list-backup"}, `unknown command "list-backup"; did you mean "list-backups"?`},
		{[]string{"frobnicate"}, `unknown command "frobnicate"` + "\n"},
		{[]string{"status", "--cluster-nam", "x"}, "unknown flag: --cluster-nam; did you mean --cluster-name?"},
		{[]string{"restore", "--target-tme", "x"}, "unknown flag: --target-tme; did you mean --target-time?"},
		{[]string{"restore", "--forse"}, "unknown flag: --forse; did you mean --force?"},
		{[]string{"status", "--no-such-flag"}, "unknown flag: --no-such-flag\n"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			require.Equal(t, exitUsage, run(t.Context(), tc.args, &out, &errOut))
			assert.Contains(t, errOut.String(), tc.want)
		})
	}
}

// TestVersionFlag: --version prints what barnacle version prints.
func TestVersionFlag(t *testing.T) {
	var flag, cmd, errOut bytes.Buffer
	require.Equal(t, exitOK, run(t.Context(), []string{"--version"}, &flag, &errOut), errOut.String())
	require.Equal(t, exitOK, run(t.Context(), []string{"version"}, &cmd, &errOut), errOut.String())
	assert.Equal(t, cmd.String(), flag.String())
	assert.True(t, strings.HasPrefix(flag.String(), "barnacle "+version+" ("), flag.String())
}

// TestHelpTexts: barnacle --help lists every configuration flag once and
// no longer says restore is missing; a subcommand's help shows its own
// flags and points to barnacle --help for the global ones instead of
// repeating them.
func TestHelpTexts(t *testing.T) {
	var root, errOut bytes.Buffer
	require.Equal(t, exitOK, run(t.Context(), []string{"--help"}, &root, &errOut))
	assert.NotContains(t, root.String(), "not built yet")
	assert.Contains(t, root.String(), "--leader-takeover-delay")
	assert.Contains(t, root.String(), "--version")
	// Config errors send the user there for the keys.
	for _, k := range config.Keys() {
		assert.Contains(t, root.String(), "--"+k.Name+" ")
	}

	var sub bytes.Buffer
	require.Equal(t, exitOK, run(t.Context(), []string{"restore", "--help"}, &sub, &errOut))
	assert.Contains(t, sub.String(), "--target-action")
	assert.Contains(t, sub.String(), "pause (default), promote or shutdown")
	assert.Contains(t, sub.String(), "Global Flags:")
	assert.Contains(t, sub.String(), "'barnacle --help' lists them")
	assert.NotContains(t, sub.String(), "--leader-takeover-delay", "global flags are listed once, under barnacle --help")
	assert.Less(t, strings.Count(sub.String(), "\n"), strings.Count(root.String(), "\n"))
}
