package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/walfetch"
)

const walFetchSegSize = 1 << 20

// walFetchArchive makes a file:// archive of cluster c1 holding segments 1
// and 2 of timeline 1, and returns its root and segment 1's bytes.
func walFetchArchive(t *testing.T) (string, []byte) {
	t.Helper()
	root := t.TempDir()
	b, err := fs.New(root, fs.Options{})
	require.NoError(t, err)
	_, err = catalog.EnsureIdentity(t.Context(), b, catalog.Identity{Cluster: "c1", SystemID: "7000000000000000001", WALSegmentSize: walFetchSegSize})
	require.NoError(t, err)
	var first []byte
	for i := 1; i <= 2; i++ {
		data := bytes.Repeat([]byte{byte(i)}, walFetchSegSize)
		_, err = storage.PutOnce(t.Context(), b, fmt.Sprintf("c1/wals/00000001000000000000000%d", i), data)
		require.NoError(t, err)
		if i == 1 {
			first = data
		}
	}
	return root, first
}

// noPrefetcher replaces startPrefetcher for the test and returns the
// command lines it was given.
func noPrefetcher(t *testing.T) *[][]string {
	t.Helper()
	var started [][]string
	old := startPrefetcher
	startPrefetcher = func(args []string) error {
		started = append(started, args)
		return nil
	}
	t.Cleanup(func() { startPrefetcher = old })
	return &started
}

func runWALFetch(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(t.Context(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestWALFetchCommand(t *testing.T) {
	root, first := walFetchArchive(t)
	started := noPrefetcher(t)
	dest := filepath.Join(t.TempDir(), "pg_wal", "RECOVERYXLOG")
	require.NoError(t, os.MkdirAll(filepath.Dir(dest), 0o700))
	archive := "--archive-url=file://" + root

	code, stdout, stderr := runWALFetch(t, "wal-fetch", "--cluster-name=c1", archive, "000000010000000000000001", dest)
	require.Equal(t, 0, code, stderr)
	assert.Empty(t, stdout)
	assert.Empty(t, stderr)
	got, err := os.ReadFile(dest)
	require.NoError(t, err)
	require.True(t, bytes.Equal(first, got))

	// The prefetcher is started with the user's flags, in worker mode.
	require.Len(t, *started, 1)
	args := (*started)[0]
	assert.Equal(t, []string{"wal-fetch", "--prefetch-worker"}, args[:2])
	assert.Contains(t, args, "--cluster-name=c1")
	assert.Contains(t, args, archive)
	assert.Equal(t, []string{"--", "000000010000000000000001", dest}, args[len(args)-3:])

	// What the prefetcher does with that command line.
	code, _, stderr = runWALFetch(t, args...)
	require.Equal(t, 0, code, stderr)
	spooled, err := filepath.Glob(filepath.Join(filepath.Dir(dest), ".barnacle-prefetch", "*", "000000010000000000000002.*"))
	require.NoError(t, err)
	require.Len(t, spooled, 2, "the segment and its lock") // 000…2.<sha256> and 000…2.lock

	// A history file is no segment: no prefetcher.
	code, _, _ = runWALFetch(t, "wal-fetch", "--cluster-name=c1", archive, "00000002.history", dest)
	require.Equal(t, 1, code)
	require.Len(t, *started, 1)
}

func TestWALFetchNotFoundIsQuiet(t *testing.T) {
	root, _ := walFetchArchive(t)
	noPrefetcher(t)
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	args := []string{"wal-fetch", "--cluster-name=c1", "--archive-url=file://" + root, "00000002.history", dest}

	code, _, _ := runWALFetch(t, args...)
	require.Equal(t, exitFailure, code)
	_, err := os.Stat(dest)
	require.ErrorIs(t, err, os.ErrNotExist)

	// Nothing is printed, by the command or by run.
	var out, errOut bytes.Buffer
	require.Equal(t, exitFailure, run(t.Context(), args, &out, &errOut))
	assert.Empty(t, out.String())
	assert.Empty(t, errOut.String())
}

func TestWALFetchErrors(t *testing.T) {
	root, _ := walFetchArchive(t)
	noPrefetcher(t)
	// Damage segment 2 behind the backend's back.
	p := filepath.Join(root, "c1/wals/000000010000000000000002")
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0}, 100)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	archive := "--archive-url=file://" + root
	tests := []struct {
		name     string
		args     []string
		code     int
		contains []string
	}{
		{name: "damaged segment", args: []string{"--cluster-name=c1", archive, "000000010000000000000002"},
			code: exitAbortRecovery, contains: []string{"000000010000000000000002", "file://" + root, "checksum"}},
		{name: "damaged segment on a standby", args: []string{"--cluster-name=c1", archive, "000000010000000000000002"},
			code: exitFailure, contains: []string{"checksum"}},
		{name: "wrong cluster", args: []string{"--cluster-name=nope", archive, "000000010000000000000001"},
			code: exitAbortRecovery, contains: []string{"000000010000000000000001", "file://" + root, "nope/archive.json"}},
		{name: "one argument", args: []string{"--cluster-name=c1", archive}, code: 2},
		{name: "bad wal name", args: []string{"--cluster-name=c1", archive, "pg_wal/xyz"}, code: 2, contains: []string{"pg_wal/xyz"}},
		{name: "negative prefetch", args: []string{"--cluster-name=c1", archive, "--prefetch=-1", "000000010000000000000001"}, code: 2},
		{name: "no archive-url", args: []string{"--cluster-name=c1", "000000010000000000000001"}, code: 2, contains: []string{"archive-url"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if strings.HasSuffix(tt.name, "on a standby") {
				// restore_command runs in the data directory.
				pgdata := t.TempDir()
				require.NoError(t, os.WriteFile(filepath.Join(pgdata, "standby.signal"), nil, 0o600))
				t.Chdir(pgdata)
			}
			dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
			args := append([]string{"wal-fetch"}, tt.args...)
			if tt.name != "one argument" {
				args = append(args, dest)
			}
			code, _, stderr := runWALFetch(t, args...)
			require.Equal(t, tt.code, code, stderr)
			for _, s := range tt.contains {
				assert.Contains(t, stderr, s)
			}
			entries, err := os.ReadDir(filepath.Dir(dest))
			require.NoError(t, err)
			for _, e := range entries {
				assert.Equal(t, ".barnacle-prefetch", e.Name(), "nothing but the spool is written on failure")
			}
		})
	}
}

func TestWALFetchHelpShowsRestoreCommand(t *testing.T) {
	code, stdout, _ := runWALFetch(t, "wal-fetch", "--help")
	require.Equal(t, 0, code)
	assert.Contains(t, stdout, "restore_command = 'barnacle wal-fetch --config /etc/barnacle.yaml %f %p'")
	assert.Contains(t, stdout, `"restoreCommand": "barnacle wal-fetch --config /etc/barnacle.yaml %f %p"`)
	assert.NotContains(t, stdout, "prefetch-worker")
}

func TestRetryable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"not found", fmt.Errorf("x: %w", walfetch.ErrNotFound), false},
		{"no identity", fmt.Errorf("read: %w", storage.ErrNotExist), false},
		{"damaged", &storage.ChecksumError{Name: "x"}, false},
		{"no checksum", storage.ErrNoChecksum, false},
		{"cancelled", fmt.Errorf("get: %w", context.Canceled), false},
		{"network", errors.New("dial tcp: connection refused"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, retryable(tt.err))
		})
	}
}
