package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
)

// TestLocalBackupCatalog drives the catalog commands of the built binary:
// backup --local (WAL streamed beside the backup), list-backups,
// show-backup, verify-backup (clean, then with one byte flipped on disk),
// keep, delete.
func TestLocalBackupCatalog(t *testing.T) {
	ctx := t.Context()
	pg := testenv.NewCluster(t, testenv.ClusterOptions{})
	primary := pg.Primary()
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100000) g"))
	archive := archiveDir(t)
	pw := filepath.Join(t.TempDir(), "pw")
	require.NoError(t, os.WriteFile(pw, []byte(pg.ReplPassword()), 0o600))
	args := func(extra ...string) []string {
		return append(extra, "--cluster-name", cluster, "--archive-url", "file://"+archive,
			"--pg-host", "127.0.0.1", "--pg-port", fmt.Sprint(primary.Port),
			"--pg-user", testenv.ReplUser, "--pg-password-file", pw, "--compression", "zstd")
	}

	out, stderr, code := barnacle(t, args("backup", "--local", "--fast", "--label", "e2e", "--json")...)
	require.Equal(t, 0, code, "backup --local: %s", stderr)
	var doc catalog.Backup
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	assert.Equal(t, catalog.StatusDone, doc.Status)
	assert.Equal(t, "e2e", doc.Label)
	assert.Equal(t, "zstd", doc.Compression)
	sysID, err := primary.SystemID(ctx)
	require.NoError(t, err)
	assert.Equal(t, sysID, doc.SystemID)
	t.Logf("backup %s: %d bytes, stored %d, %s..%s", doc.ID, doc.Bytes, doc.StoredBytes, doc.StartLSN, doc.StopLSN)

	out, stderr, code = barnacle(t, args("list-backups", "--json")...)
	require.Equal(t, 0, code, stderr)
	var list []catalog.Backup
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Len(t, list, 1)
	assert.Equal(t, doc.ID, list[0].ID)

	out, stderr, code = barnacle(t, args("show-backup", "latest", "--json")...)
	require.Equal(t, 0, code, stderr)
	var detail struct {
		Backup     catalog.Backup   `json:"backup"`
		WAL        catalog.WALCheck `json:"wal"`
		Restorable bool             `json:"restorable"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &detail), out)
	assert.True(t, detail.Restorable, "the WAL the backup needs is archived: %+v", detail.WAL)
	assert.Empty(t, detail.WAL.Missing)

	out, stderr, code = barnacle(t, args("verify-backup", "latest")...)
	require.Equal(t, 0, code, "verify-backup: %s%s", out, stderr)

	// One byte flipped in the archived base tar.
	var base string
	for _, f := range doc.Files {
		if strings.HasPrefix(f.Name, "base.tar") {
			base = f.Name
		}
	}
	require.NotEmpty(t, base)
	path := filepath.Join(archive, catalog.BackupPrefix(cluster, doc.ID), base)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	data[len(data)/2] ^= 0xff
	require.NoError(t, os.WriteFile(path, data, 0o644))
	out, stderr, code = barnacle(t, args("verify-backup", doc.ID)...)
	assert.Equal(t, 1, code)
	assert.Contains(t, out+stderr, base, "the failing file is named")

	// keep protects from delete; --release lifts it.
	_, _, code = barnacle(t, args("keep", doc.ID)...)
	require.Equal(t, 0, code)
	_, stderr, code = barnacle(t, args("delete", doc.ID)...)
	assert.Equal(t, 1, code, "a kept backup is not deleted")
	assert.Contains(t, stderr, "keep")
	_, _, code = barnacle(t, args("keep", "--release", doc.ID)...)
	require.Equal(t, 0, code)
	_, stderr, code = barnacle(t, args("delete", doc.ID)...)
	require.Equal(t, 0, code, stderr)
	out, _, code = barnacle(t, args("list-backups")...)
	require.Equal(t, 0, code)
	assert.Contains(t, out, "No backups")

	// Without --local: a usage error that says what to do.
	_, stderr, code = barnacle(t, args("backup")...)
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "--local")
}
