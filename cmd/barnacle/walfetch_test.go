package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
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
		{name: "wrong cluster", args: []string{"--cluster-name=nope", archive, "--retry-for=0", "000000010000000000000001"},
			code: exitAbortRecovery, contains: []string{"000000010000000000000001", "file://" + root, "nope/archive.json"}},
		// Exit 2, every other command's usage code, would read "no such
		// file" to PostgreSQL.
		{name: "one argument", args: []string{"--cluster-name=c1", archive}, code: exitAbortRecovery},
		{name: "unknown flag", args: []string{"--cluster-name=c1", archive, "--prefetchh=2", "000000010000000000000001"}, code: exitAbortRecovery, contains: []string{"prefetchh"}},
		{name: "bad wal name", args: []string{"--cluster-name=c1", archive, "pg_wal/xyz"}, code: exitAbortRecovery, contains: []string{"pg_wal/xyz"}},
		{name: "negative prefetch", args: []string{"--cluster-name=c1", archive, "--prefetch=-1", "000000010000000000000001"}, code: exitAbortRecovery},
		{name: "no archive-url", args: []string{"--cluster-name=c1", "000000010000000000000001"}, code: exitAbortRecovery, contains: []string{"archive-url"}},
		{name: "no archive-url on a standby", args: []string{"--cluster-name=c1", "000000010000000000000001"}, code: exitFailure, contains: []string{"archive-url"}},
		{name: "bad config file", args: []string{"--config=/nonexistent/barnacle.yaml", "--cluster-name=c1", archive, "000000010000000000000001"}, code: exitAbortRecovery, contains: []string{"/nonexistent/barnacle.yaml"}},
		// The archive cannot be opened: it was never there, or went away
		// (unmounted, renamed). It used to exit 1, and PostgreSQL promoted.
		{name: "archive directory missing", args: []string{"--cluster-name=c1", "--archive-url=file://" + root + "-gone", "--retry-for=0", "000000010000000000000003"},
			code: exitAbortRecovery, contains: []string{root + "-gone", "does not exist", "000000010000000000000003"}},
		{name: "archive directory missing, history file", args: []string{"--cluster-name=c1", "--archive-url=file://" + root + "-gone", "--retry-for=0", "00000002.history"},
			code: exitAbortRecovery, contains: []string{root + "-gone", "00000002.history"}},
		{name: "archive directory is a file", args: []string{"--cluster-name=c1", "--archive-url=file://" + root + "/c1/archive.json", "--retry-for=0", "00000002.history"},
			code: exitAbortRecovery, contains: []string{"not a directory"}},
		// No --retry-for: a standby does not wait (PostgreSQL retries).
		{name: "archive directory missing on a standby", args: []string{"--cluster-name=c1", "--archive-url=file://" + root + "-gone", "000000010000000000000003"},
			code: exitFailure, contains: []string{"does not exist"}},
		{name: "unsupported archive-url", args: []string{"--cluster-name=c1", "--archive-url=ftp://host/x", "000000010000000000000001"},
			code: exitAbortRecovery, contains: []string{"ftp"}},
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

func TestRetryPolicy(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want retryKind
	}{
		{"not found", fmt.Errorf("x: %w", walfetch.ErrNotFound), retryNever},
		// An unmounted volume or a renamed directory: archive.json is gone.
		{"no identity", fmt.Errorf("read: %w", storage.ErrNotExist), retryTransient},
		{"damaged", &storage.ChecksumError{Name: "x"}, retryOnce},
		{"does not decompress", fmt.Errorf("x: %w: zstd: corrupt", walfetch.ErrDamaged), retryOnce},
		{"no checksum", storage.ErrNoChecksum, retryNever},
		{"invalid name", storage.ErrInvalidName, retryNever},
		{"cancelled", fmt.Errorf("get: %w", context.Canceled), retryNever},
		{"network", errors.New("dial tcp: connection refused"), retryTransient},
		{"not readable", fmt.Errorf("open archive-url: %w", os.ErrPermission), retryTransient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, retryPolicy(tt.err))
		})
	}
}

// walFetchRetries installs walFetchRetryHook for the test: each retry's
// failure is sent on the returned channel, and the retry waits until the
// test has received it (and done what it does in response).
func walFetchRetries(t *testing.T) <-chan error {
	t.Helper()
	failures := make(chan error)
	walFetchRetryHook = func(_ int, err error) { failures <- err }
	t.Cleanup(func() { walFetchRetryHook = nil })
	return failures
}

type walFetchResult struct {
	code           int
	stdout, stderr string
}

// startWALFetch runs wal-fetch with args in a goroutine; its result comes
// on the returned channel.
func startWALFetch(t *testing.T, args ...string) <-chan walFetchResult {
	t.Helper()
	done := make(chan walFetchResult, 1)
	go func() {
		var out, errOut bytes.Buffer
		code := run(t.Context(), args, &out, &errOut)
		done <- walFetchResult{code, out.String(), errOut.String()}
	}()
	return done
}

// nextRetry waits for wal-fetch's next retry and returns its failure, or
// fails the test with wal-fetch's result if it ends instead.
func nextRetry(t *testing.T, failures <-chan error, done <-chan walFetchResult) error {
	t.Helper()
	select {
	case err := <-failures:
		return err
	case r := <-done:
		t.Fatalf("wal-fetch ended (exit %d) instead of retrying: %s", r.code, r.stderr)
	case <-time.After(2 * time.Minute):
		t.Fatal("wal-fetch neither retried nor ended within 2 minutes")
	}
	return nil
}

// TestWALFetchRetriesArchiveOutage: an archive that cannot be opened or
// read for a moment (an NFS volume remounted, a directory renamed away and
// back) is retried until it is back, and the segment is served; it used to
// stop recovery at once (exit 255), for good until a server restart.
func TestWALFetchRetriesArchiveOutage(t *testing.T) {
	for _, tt := range []struct{ name, away string }{
		// The file backend cannot open the archive directory.
		{"archive directory gone", ""},
		// It opens, but archive.json is missing: what an empty mount
		// point looks like. Never "not found".
		{"cluster directory gone", "c1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root, first := walFetchArchive(t)
			noPrefetcher(t)
			failures := walFetchRetries(t)
			dir := filepath.Join(root, tt.away)
			require.NoError(t, os.Rename(dir, dir+"-away"))
			dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
			done := startWALFetch(t, "wal-fetch", "--cluster-name=c1", "--archive-url=file://"+root,
				"--retry-for=10m", "000000010000000000000001", dest)

			// Twice, so that a second failure is retried too.
			for range 2 {
				err := nextRetry(t, failures, done)
				require.NotErrorIs(t, err, walfetch.ErrNotFound)
			}
			require.NoFileExists(t, dest)
			require.NoError(t, os.Rename(dir+"-away", dir))
			r := <-done
			require.Equal(t, 0, r.code, r.stderr)
			assert.Contains(t, r.stderr, "retrying")
			got, err := os.ReadFile(dest)
			require.NoError(t, err)
			require.True(t, bytes.Equal(first, got))
		})
	}
}

// TestWALFetchRetriesS3Outage: the object store stopped for a moment
// (versitygw stopped, then started again on the same port and data) is
// retried until it answers, and the segment is served; with a retry
// budget of a few seconds in all, an outage longer than minio-go's own
// retries of one request used to stop recovery.
func TestWALFetchRetriesS3Outage(t *testing.T) {
	srv := testenv.StartS3(t)
	srv.SetEnv(t)
	url := srv.URL("arch", "")
	b, err := backends.Open(t.Context(), url)
	require.NoError(t, err)
	_, err = catalog.EnsureIdentity(t.Context(), b, catalog.Identity{Cluster: "c1", SystemID: "7000000000000000001", WALSegmentSize: walFetchSegSize})
	require.NoError(t, err)
	data := bytes.Repeat([]byte{7}, walFetchSegSize)
	_, err = storage.PutOnce(t.Context(), b, "c1/wals/000000010000000000000007", data)
	require.NoError(t, err)
	noPrefetcher(t)
	failures := walFetchRetries(t)

	srv.Stop()
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	done := startWALFetch(t, "wal-fetch", "--cluster-name=c1", "--archive-url="+url,
		"--retry-for=10m", "000000010000000000000007", dest)
	for range 2 {
		err := nextRetry(t, failures, done)
		require.NotErrorIs(t, err, walfetch.ErrNotFound)
	}
	require.NoFileExists(t, dest)
	require.NoError(t, srv.Start())
	r := <-done
	require.Equal(t, 0, r.code, r.stderr)
	got, err := os.ReadFile(dest)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got))
}

// TestWALFetchRetryBudget: an archive that stays away exits 255 once
// --retry-for has passed, and never 1.
func TestWALFetchRetryBudget(t *testing.T) {
	root, _ := walFetchArchive(t)
	noPrefetcher(t)
	require.NoError(t, os.Rename(filepath.Join(root, "c1"), filepath.Join(root, "c1-away")))
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	var retries int
	walFetchRetryHook = func(int, error) { retries++ }
	t.Cleanup(func() { walFetchRetryHook = nil })
	start := time.Now()
	code, _, stderr := runWALFetch(t, "wal-fetch", "--cluster-name=c1", "--archive-url=file://"+root,
		"--retry-for=2s", "000000010000000000000001", dest)
	require.Equal(t, exitAbortRecovery, code, stderr)
	assert.Contains(t, stderr, "c1/archive.json")
	assert.GreaterOrEqual(t, retries, 2, stderr)
	assert.Less(t, time.Since(start), 2*time.Second+retryMax+time.Minute, "bounded by the budget")
	require.NoFileExists(t, dest)
}

// TestWALFetchChecksumRereadOnce: a checksum mismatch is read once more
// (a torn read serves right the second time), and a second mismatch stops
// recovery.
func TestWALFetchChecksumRereadOnce(t *testing.T) {
	root, first := walFetchArchive(t)
	noPrefetcher(t)
	p := filepath.Join(root, "c1/wals/000000010000000000000001")
	damage := func(b byte) {
		t.Helper()
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		require.NoError(t, err)
		_, err = f.WriteAt([]byte{b}, 100)
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}
	args := []string{"wal-fetch", "--cluster-name=c1", "--archive-url=file://" + root, "--retry-for=10m", "000000010000000000000001"}

	t.Run("torn once", func(t *testing.T) {
		failures := walFetchRetries(t)
		damage(0xFF)
		dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
		done := startWALFetch(t, append(args, dest)...)
		require.ErrorIs(t, nextRetry(t, failures, done), storage.ErrChecksum)
		damage(first[100])
		r := <-done
		require.Equal(t, 0, r.code, r.stderr)
		got, err := os.ReadFile(dest)
		require.NoError(t, err)
		require.True(t, bytes.Equal(first, got))
	})
	t.Run("damaged", func(t *testing.T) {
		var retries int
		walFetchRetryHook = func(int, error) { retries++ }
		t.Cleanup(func() { walFetchRetryHook = nil })
		damage(0xFF)
		dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
		code, _, stderr := runWALFetch(t, append(args, dest)...)
		require.Equal(t, exitAbortRecovery, code, stderr)
		assert.Contains(t, stderr, "checksum")
		assert.Equal(t, 1, retries, "read twice, not more, although --retry-for allows more")
		require.NoFileExists(t, dest)
	})
}

func TestWALFetchExitCode(t *testing.T) {
	notFound := fmt.Errorf("c1/wals/000000010000000000000009: %w", walfetch.ErrNotFound)
	failed := errors.New("open archive-url: fs: archive directory /a does not exist")
	tests := []struct {
		name    string
		err     error
		standby bool
		sig     syscall.Signal
		want    int
	}{
		{"served", nil, false, 0, 0},
		{"not in the archive", notFound, false, 0, 1},
		{"not in the archive on a standby", notFound, true, 0, 1},
		{"archive failure", failed, false, 0, 255},
		{"archive failure on a standby", failed, true, 0, 1},
		{"usage", usageError{errors.New("bad name")}, false, 0, 255},
		{"config", fmt.Errorf("config: %w", storage.ErrNotExist), false, 0, 255},
		{"cancelled without a known signal", fmt.Errorf("get: %w", context.Canceled), false, 0, 255},
		{"SIGTERM: PostgreSQL's shutdown", fmt.Errorf("get: %w", context.Canceled), false, syscall.SIGTERM, 143},
		{"SIGTERM on a standby", fmt.Errorf("get: %w", context.Canceled), true, syscall.SIGTERM, 143},
		{"SIGINT", fmt.Errorf("get: %w", context.Canceled), false, syscall.SIGINT, 130},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := walFetchExitCode(tt.err, tt.standby, tt.sig)
			assert.Equal(t, tt.want, got)
			if tt.err != nil && !errors.Is(tt.err, walfetch.ErrNotFound) && !tt.standby {
				assert.Greater(t, got, 125, "PostgreSQL must stop recovery, not take the end of the archive")
			}
		})
	}
}

// TestWALFetchPanicStopsRecovery: a panic's exit code 2 would read "no
// such file" to PostgreSQL.
func TestWALFetchPanicStopsRecovery(t *testing.T) {
	root, _ := walFetchArchive(t)
	noPrefetcher(t)
	walFetchHook = func() { panic("boom") }
	t.Cleanup(func() { walFetchHook = nil })
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	code, _, stderr := runWALFetch(t, "wal-fetch", "--cluster-name=c1", "--archive-url=file://"+root, "000000010000000000000001", dest)
	assert.Equal(t, exitAbortRecovery, code)
	assert.Contains(t, stderr, "panic: boom")
	assert.NoFileExists(t, dest)
}

// TestWALFetchInterrupted: SIGTERM while fetching exits 143, what a shell
// reports for a command killed by SIGTERM; it used to exit 1, "no such
// file".
func TestWALFetchInterrupted(t *testing.T) {
	root, _ := walFetchArchive(t)
	noPrefetcher(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	walFetchHook = func() {
		// What main's signal context does on SIGTERM; the signal itself
		// reaches wal-fetch's own channel (Notify is in place, so it does
		// not kill the test).
		require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGTERM))
		cancel()
	}
	t.Cleanup(func() { walFetchHook = nil })
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	var out, errOut bytes.Buffer
	code := run(ctx, []string{"wal-fetch", "--cluster-name=c1", "--archive-url=file://" + root, "000000010000000000000001", dest}, &out, &errOut)
	assert.Equal(t, 128+int(syscall.SIGTERM), code, errOut.String())
	assert.Contains(t, errOut.String(), "interrupted by SIGTERM")
	assert.NoFileExists(t, dest)
}

func TestWALFetchRemoveSpool(t *testing.T) {
	pgdata := t.TempDir()
	spool := filepath.Join(pgdata, "pg_wal", ".barnacle-prefetch", "0123456789abcdef")
	require.NoError(t, os.MkdirAll(spool, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(spool, "000000010000000000000002.lock"), nil, 0o600))
	t.Chdir(pgdata) // PostgreSQL runs recovery_end_command in the data directory
	code, _, stderr := runWALFetch(t, "wal-fetch", "--remove-spool")
	require.Equal(t, 0, code, stderr)
	assert.NoDirExists(t, filepath.Join(pgdata, "pg_wal", ".barnacle-prefetch"))
	assert.DirExists(t, filepath.Join(pgdata, "pg_wal"))
	code, _, stderr = runWALFetch(t, "wal-fetch", "--remove-spool")
	require.Equal(t, 0, code, stderr)
}

// TestWALFetchStandbyPartial: on a standby the growing .partial is served
// padded (and the segment after it is a quiet "not yet"); with
// --standby-partial=false it is a quiet "not yet" too; archive recovery
// gets it whatever the flag says, as ending short of it would lose data.
func TestWALFetchStandbyPartial(t *testing.T) {
	root, _ := walFetchArchive(t)
	started := noPrefetcher(t)
	b, err := fs.New(root, fs.Options{})
	require.NoError(t, err)
	partial := bytes.Repeat([]byte{3}, 1000)
	_, err = storage.PutOnce(t.Context(), b, "c1/wals/000000010000000000000003.partial", partial)
	require.NoError(t, err)
	padded := append(bytes.Clone(partial), make([]byte, walFetchSegSize-len(partial))...)
	archive := "--archive-url=file://" + root

	for _, tt := range []struct {
		name    string
		standby bool
		flags   []string
		served  bool
	}{
		{name: "standby", standby: true, served: true},
		{name: "standby, complete segments only", standby: true, flags: []string{"--standby-partial=false"}},
		{name: "archive recovery ignores the flag", flags: []string{"--standby-partial=false"}, served: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pgdata := t.TempDir()
			if tt.standby {
				require.NoError(t, os.WriteFile(filepath.Join(pgdata, "standby.signal"), nil, 0o600))
			}
			t.Chdir(pgdata)
			dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
			args := append(append([]string{"wal-fetch", "--cluster-name=c1", archive}, tt.flags...), "000000010000000000000003", dest)
			code, stdout, stderr := runWALFetch(t, args...)
			assert.Empty(t, stdout)
			assert.Empty(t, stderr, "quiet either way")
			if !tt.served {
				require.Equal(t, exitFailure, code)
				_, err := os.Stat(dest)
				require.ErrorIs(t, err, os.ErrNotExist)
			} else {
				require.Equal(t, 0, code)
				got, err := os.ReadFile(dest)
				require.NoError(t, err)
				require.True(t, bytes.Equal(padded, got), "the .partial padded with zeros")
			}
			require.Empty(t, *started, "nothing to prefetch after the archive's end")
			// The segment after the archive's end: "not yet", quietly.
			args = append(append([]string{"wal-fetch", "--cluster-name=c1", archive}, tt.flags...), "000000010000000000000004", dest)
			code, _, stderr = runWALFetch(t, args...)
			require.Equal(t, exitFailure, code)
			assert.Empty(t, stderr)
		})
	}
}
