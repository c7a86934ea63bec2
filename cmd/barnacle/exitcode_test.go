package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// testArchive is a file:// archive of cluster c1 with two backups:
// 20261101T000000 done with its WAL (segments 2 and 3) archived, and
// 20261102T000000 done but its WAL (segments 5 and 6) missing.
func testArchive(t *testing.T) string {
	t.Helper()
	root, b := newTestArchive(t)
	putTestBackup(t, b, "20261101T000000", 2)
	putTestBackup(t, b, "20261102T000000", 5)
	putTestWAL(t, b, 2, 3)
	return root
}

// TestShowBackupExitCode: show-backup exits 1 when it says "Restorable:
// NO", with and without --json, so that a script can test it; 0 when the
// backup is restorable.
func TestShowBackupExitCode(t *testing.T) {
	root := testArchive(t)
	args := func(extra ...string) []string {
		return append([]string{"show-backup", "--cluster-name", "c1", "--archive-url", "file://" + root}, extra...)
	}
	for _, tc := range []struct {
		id         string
		code       int
		restorable bool
	}{
		{"20261101T000000", exitOK, true},
		{"20261102T000000", exitFailure, false},
		{"latest", exitFailure, false},
	} {
		t.Run(tc.id, func(t *testing.T) {
			var out, errOut bytes.Buffer
			require.Equal(t, tc.code, run(t.Context(), args(tc.id), &out, &errOut), "stdout:\n%s\nstderr:\n%s", &out, &errOut)
			if tc.restorable {
				assert.Contains(t, out.String(), "Restorable:   yes")
				assert.Empty(t, errOut.String())
			} else {
				assert.Contains(t, out.String(), "Restorable:   NO")
				assert.Contains(t, errOut.String(), "is not restorable")
			}

			out.Reset()
			errOut.Reset()
			require.Equal(t, tc.code, run(t.Context(), args(tc.id, "--json"), &out, &errOut), "stderr:\n%s", &errOut)
			var detail map[string]any
			require.NoError(t, json.Unmarshal(out.Bytes(), &detail), "--json keeps the detail on stdout: %s", &out)
			assert.Equal(t, tc.restorable, detail["restorable"])
			for _, key := range jsonKeys(detail, "") {
				assert.Regexp(t, camelCase, key[strings.LastIndex(key, ".")+1:], "key %s", key)
			}
			if !tc.restorable {
				assert.NotEmpty(t, detail["wal"].(map[string]any)["missing"])
			}
		})
	}
}

// jsonKeys lists the object keys of a decoded JSON document, as paths.
func jsonKeys(v any, path string) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			out = append(out, path+"."+k)
			out = append(out, jsonKeys(e, path+"."+k)...)
		}
	case []any:
		for _, e := range v {
			out = append(out, jsonKeys(e, path+"[]")...)
		}
	}
	return out
}

// TestStatusExitCode: status exits 1 when it lists problems (here: no
// clusterdata and no leader in a fresh etcd), with and without --json.
func TestStatusExitCode(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	args := func(extra ...string) []string {
		return append([]string{"status", "--cluster-name", "c1", "--store-endpoints", strings.Join(etcd.Endpoints(), ",")}, extra...)
	}
	var out, errOut bytes.Buffer
	require.Equal(t, exitFailure, run(t.Context(), args(), &out, &errOut), "stdout:\n%s\nstderr:\n%s", &out, &errOut)
	assert.Contains(t, out.String(), "Problems:")
	assert.Contains(t, errOut.String(), "status reports 2 problem(s)")

	out.Reset()
	errOut.Reset()
	require.Equal(t, exitFailure, run(t.Context(), args("--json"), &out, &errOut), "stderr:\n%s", &errOut)
	var st struct {
		Problems []string `json:"problems"`
	}
	require.NoError(t, json.Unmarshal(out.Bytes(), &st), out.String())
	assert.Len(t, st.Problems, 2)
}
