package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
)

// TestDrillUsage: bad flags and configuration of barnacle drill are usage
// errors (exit 2) that name the flag or key, before anything is written.
func TestDrillUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"drill", "--timeout", "5m", "--cluster-name", "c", "--store-endpoints", "http://127.0.0.1:1"}, "--timeout goes with --wait"},
		{[]string{"drill", "--wait", "--agent", "a/b", "--cluster-name", "c", "--store-endpoints", "http://127.0.0.1:1"}, `--agent "a/b": name an agent`},
		{[]string{"drill", "--wait", "--store-endpoints", "http://127.0.0.1:1"}, "cluster-name: required"},
		{[]string{"drill", "--wait", "--cluster-name", "c", "--store-endpoints", "http://127.0.0.1:1", "--restore-drill-max-age", "8d"}, "restore-drill-max-age"},
		{[]string{"drill", "--wiat"}, "did you mean --wait?"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			require.Equal(t, exitUsage, run(t.Context(), tc.args, &out, &errOut), errOut.String())
			assert.Contains(t, errOut.String(), tc.want)
		})
	}
}

// TestPrintDrill: what barnacle drill --wait prints of a drill.
func TestPrintDrill(t *testing.T) {
	at := time.Date(2026, 12, 6, 15, 29, 58, 0, time.UTC)
	var b strings.Builder
	printDrill(&b, catalog.Drill{ID: "d1", Node: "keeper1", BackupID: "20261206T020000", Bytes: 3 << 20,
		Promised: catalog.Position{Timeline: 3, LSN: 0x5A000110}, Reached: catalog.Position{Timeline: 3, LSN: 0x5A000110}, ReachedTime: at,
		Phases: catalog.DrillPhases{Restore: 41200 * time.Millisecond, Replay: 12800 * time.Millisecond, Check: 3100 * time.Millisecond},
		Checked: 412, Status: catalog.DrillDone})
	assert.Equal(t, `drill d1 on keeper1: backup 20261206T020000 (3.0 MiB)
  reached:  0/5A000110 on timeline 3, last commit 2026-12-06T15:29:58Z (the archive promised 0/5A000110)
  phases:   restore 41.2s, replay 12.8s, check 3.1s
  RTO:      57.1s
  checked:  412 relations (pg_amcheck)
`, b.String())

	b.Reset()
	printDrill(&b, catalog.Drill{ID: "d2", Node: "keeper1", Status: catalog.DrillFailed, Error: "no done backup to restore"})
	assert.Equal(t, "drill d2 on keeper1: no backup restored\n", b.String())
}
