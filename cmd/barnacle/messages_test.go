package main

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// tarArchive is a file:// archive of cluster c1 with one done backup,
// 20261101T000000, whose base.tar holds a small data directory, and the
// WAL it needs. It returns the archive's root and base.tar's path.
func tarArchive(t *testing.T) (root, baseTar string) {
	t.Helper()
	ctx := t.Context()
	root, b := newTestArchive(t)
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, f := range []struct{ name, body string }{{"PG_VERSION", "15\n"}, {"base/1/1234", strings.Repeat("x", 64<<10)}, {"global/pg_control", "ctl"}} {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o600, Size: int64(len(f.body)), Typeflag: tar.TypeReg}))
		_, _ = tw.Write([]byte(f.body))
	}
	require.NoError(t, tw.Close())
	id := "20261101T000000"
	require.NoError(t, b.Put(ctx, catalog.BackupPrefix("c1", id)+"base.tar", bytes.NewReader(tb.Bytes()), storage.PutOptions{}))
	info, err := b.Stat(ctx, catalog.BackupPrefix("c1", id)+"base.tar")
	require.NoError(t, err)
	d := testBackup(t, id, 2)
	d.PGVersion = 150000
	d.Files = []catalog.BackupFile{{Name: "base.tar", Bytes: int64(tb.Len()), StoredBytes: info.Size, Checksum: info.Checksum}}
	require.NoError(t, catalog.PutBackup(ctx, b, "c1", d))
	putTestWAL(t, b, 2, 3)
	return root, filepath.Join(root, "c1", "backups", id, "base.tar")
}

func restoreArgs(root string, extra ...string) []string {
	return append([]string{"restore", "--cluster-name", "c1", "--archive-url", "file://" + root}, extra...)
}

// TestRestoreFailureSaysWhatToDo: a restore that fails half way (a byte
// of base.tar flipped) names the damage once, and says that the directory
// it leaves cannot be started, how to get rid of it, and that --backup
// picks an older backup.
func TestRestoreFailureSaysWhatToDo(t *testing.T) {
	root, baseTar := tarArchive(t)
	data, err := os.ReadFile(baseTar)
	require.NoError(t, err)
	data[len(data)-2000] ^= 1
	f, err := os.OpenFile(baseTar, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(data, 0) // in place: the stored checksum stays
	require.NoError(t, err)
	require.NoError(t, f.Close())

	dest := filepath.Join(t.TempDir(), "r")
	var out, errOut bytes.Buffer
	require.Equal(t, exitFailure, run(t.Context(), restoreArgs(root, "--target-dir", dest), &out, &errOut))
	msg := errOut.String()
	assert.Equal(t, 1, strings.Count(msg, "restore: object base.tar"), "the failure is told once:\n%s", msg)
	assert.Contains(t, msg, "checksum mismatch")
	assert.Contains(t, msg, dest+" now holds a partial restore that PostgreSQL cannot start")
	assert.Contains(t, msg, "--force, which moves it aside")
	assert.Contains(t, msg, "restore an older one with --backup ID")
	require.DirExists(t, dest)
	assert.NoFileExists(t, filepath.Join(dest, "global", "pg_control"))

	// The second try without --force is refused, and names the flag.
	errOut.Reset()
	require.Equal(t, exitFailure, run(t.Context(), restoreArgs(root, "--target-dir", dest), &out, &errOut))
	assert.Contains(t, errOut.String(), "empty it or use --force")
	assert.NotContains(t, errOut.String(), "partial restore", "a refused restore wrote nothing")
}

// TestInterruptedSaysInterrupted: a command ended by a signal (its context
// cancelled) says "interrupted", not "context canceled".
func TestInterruptedSaysInterrupted(t *testing.T) {
	root, _ := tarArchive(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var out, errOut bytes.Buffer
	require.Equal(t, exitFailure, run(ctx, restoreArgs(root, "--target-dir", filepath.Join(t.TempDir(), "r")), &out, &errOut))
	assert.Contains(t, errOut.String(), "barnacle: interrupted")
	assert.NotContains(t, errOut.String(), "context canceled")
}

// TestTargetBeforeFirstBackupListsWindows: a time target before the first
// backup is refused with the recoverable windows, as the README promises,
// not with the list of backups.
func TestTargetBeforeFirstBackupListsWindows(t *testing.T) {
	root, _ := tarArchive(t)
	dest := filepath.Join(t.TempDir(), "r")
	var out, errOut bytes.Buffer
	require.Equal(t, exitFailure, run(t.Context(), restoreArgs(root, "--target-dir", dest, "--target-time", "2026-10-01T00:00:00Z"), &out, &errOut))
	assert.Contains(t, errOut.String(), "is not recoverable: it is not after the stop time of the oldest backup; recoverable windows: timeline 1: 0/3000100 (2026-11-01T00:01:00Z) to ")
	assert.NotContains(t, errOut.String(), "done backups considered")
	assert.NoDirExists(t, dest)
}

// TestDeleteKeptSaysForceFlag: refusals name the flag, --force.
func TestDeleteKeptSaysForceFlag(t *testing.T) {
	root, _ := tarArchive(t)
	args := []string{"--cluster-name", "c1", "--archive-url", "file://" + root}
	var out, errOut bytes.Buffer
	require.Equal(t, exitOK, run(t.Context(), append([]string{"keep", "20261101T000000"}, args...), &out, &errOut), errOut.String())
	require.Equal(t, exitFailure, run(t.Context(), append([]string{"delete", "20261101T000000"}, args...), &out, &errOut))
	assert.Contains(t, errOut.String(), "release it first (barnacle keep --release 20261101T000000) or use --force")
}
