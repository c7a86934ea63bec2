package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/walfetch"
)

func TestVerifyWALCommand(t *testing.T) {
	root, _ := walFetchArchive(t)
	archive := "--archive-url=file://" + root
	run1 := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(t.Context(), append([]string{"verify-wal", "--cluster-name=c1", archive}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	code, stdout, stderr := run1()
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "2 files")
	assert.NotContains(t, stdout, "PROBLEM")

	// A flipped byte in segment 2.
	p := filepath.Join(root, "c1/wals/000000010000000000000002")
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0xee}, 4242)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	code, stdout, stderr = run1()
	assert.Equal(t, exitFailure, code)
	assert.Contains(t, stdout, "PROBLEM: 000000010000000000000002: ")
	assert.Contains(t, stdout, "checksum")
	assert.Contains(t, stderr, "1 WAL files failed verification")

	code, stdout, _ = run1("--json")
	assert.Equal(t, exitFailure, code)
	var r walfetch.Report
	require.NoError(t, json.Unmarshal([]byte(stdout), &r), stdout)
	require.Len(t, r.Problems, 1)
	assert.Equal(t, "000000010000000000000002", r.Problems[0].File)

	// --from past the damage, as a segment name and as an LSN.
	for _, from := range []string{"000000010000000000000003", "0/300028"} {
		code, stdout, stderr = run1("--from", from)
		assert.Equal(t, 0, code, "%s: %s %s", from, stdout, stderr)
		assert.Contains(t, stdout, "0 files")
	}
	code, _, stderr = run1("--from", "yesterday")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, `--from "yesterday"`)
}
