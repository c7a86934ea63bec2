package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
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
		Phases:  catalog.DrillPhases{Restore: 41200 * time.Millisecond, Replay: 12800 * time.Millisecond, Check: 3100 * time.Millisecond},
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

// TestListDrills: list-drills prints the archive's drill records newest
// first, as a table and as JSON.
func TestListDrills(t *testing.T) {
	root := t.TempDir()
	b, err := fs.New(root, fs.Options{})
	require.NoError(t, err)
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	require.NoError(t, catalog.WriteDrill(t.Context(), b, "c1", catalog.Drill{ID: "d1", Node: "keeper1", Status: catalog.DrillDone,
		BackupID: "20261206T020000", StartedAt: t0, FinishedAt: t0.Add(time.Minute), Reached: catalog.Position{Timeline: 1, LSN: 0x3000100},
		ReachedTime: t0.Add(-time.Second), Phases: catalog.DrillPhases{Restore: time.Second, Replay: 2 * time.Second, Check: time.Second}, Checked: 12}))
	require.NoError(t, catalog.WriteDrill(t.Context(), b, "c1", catalog.Drill{ID: "d2", Node: "keeper2", Status: catalog.DrillFailed,
		StartedAt: t0.Add(time.Hour), FinishedAt: t0.Add(time.Hour), Error: "no space:\nneed 2 GiB"}))
	args := []string{"list-drills", "--cluster-name", "c1", "--archive-url", "file://" + root}

	var out, errOut bytes.Buffer
	require.Equal(t, exitOK, run(t.Context(), args, &out, &errOut), errOut.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 3, out.String())
	assert.Regexp(t, `^ID\s+STATUS\s+NODE`, lines[0])
	assert.Regexp(t, `^d2\s+failed\s+keeper2\s+2026-12-06T11:00:00Z\s+-\s+-\s+-\s+-\s+-\s+no space: need 2 GiB$`, lines[1])
	assert.Regexp(t, `^d1\s+done\s+keeper1\s+2026-12-06T10:00:00Z\s+20261206T020000\s+0/3000100\s+2026-12-06T09:59:59Z\s+4s\s+12\s*$`, lines[2])

	out.Reset()
	require.Equal(t, exitOK, run(t.Context(), append(args, "--json"), &out, &errOut), errOut.String())
	var list []catalog.Drill
	require.NoError(t, json.Unmarshal(out.Bytes(), &list))
	require.Len(t, list, 2)
	assert.Equal(t, "d2", list[0].ID)
	assert.Equal(t, "d1", list[1].ID)

	out.Reset()
	require.Equal(t, exitOK, run(t.Context(), []string{"list-drills", "--cluster-name", "c2", "--archive-url", "file://" + root}, &out, &errOut))
	assert.Contains(t, out.String(), "No restore drills of c2 recorded yet")
	out.Reset()
	require.Equal(t, exitOK, run(t.Context(), []string{"list-drills", "--json", "--cluster-name", "c2", "--archive-url", "file://" + root}, &out, &errOut))
	assert.Equal(t, "[]\n", out.String())
}
