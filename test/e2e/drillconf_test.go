package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/drill"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/restore"
)

// TestDrillHostConfig: a backup whose postgresql.conf names files of the
// source host (an include of /etc…, ssl with certificates, an external
// PID file, a log directory, a data_directory elsewhere), a command that
// would run on the archive (archive_cleanup_command), a library the drill
// host lacks and a statement_timeout that would cancel the checks. The
// drill succeeds, writes nothing outside its scratch directory, and says
// which includes it ignored.
func TestDrillHostConfig(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env, _, primary := newPostgresReadableEnv(t)
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE hostconf (id int PRIMARY KEY, v text)"))

	// What the restored server must not write to: owned by postgres, so
	// that only the drill's overrides keep it empty.
	outside := filepath.Join(t.TempDir(), "source-host")
	require.NoError(t, os.MkdirAll(outside, 0o755))
	testenv.PGOwn(t, outside)
	hostile := strings.Join([]string{
		"",
		"# the source host's (never reloaded on the primary)",
		fmt.Sprintf("include '%s/etc/postgresql/common.conf'", outside),
		fmt.Sprintf("include_dir '%s/conf.d'", outside),
		fmt.Sprintf("data_directory = '%s/pgdata'", outside),
		fmt.Sprintf("external_pid_file = '%s/postmaster.pid'", outside),
		fmt.Sprintf("archive_cleanup_command = 'touch %s/cleanup-ran'", outside),
		"ssl = on",
		fmt.Sprintf("ssl_cert_file = '%s/certs/server.crt'", outside),
		fmt.Sprintf("ssl_key_file = '%s/certs/server.key'", outside),
		"logging_collector = on",
		fmt.Sprintf("log_directory = '%s/log'", outside),
		"session_preload_libraries = 'barnacle_no_such_library'",
		"statement_timeout = '1ms'",
		"",
	}, "\n")
	f, err := os.OpenFile(filepath.Join(primary.DataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(hostile)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	store := env.store()
	out, stderr, code := barnacle(t, append([]string{"backup", "--wait", "--json"}, store...)...)
	require.Equal(t, 0, code, "backup: %s %s", out, stderr)
	var bst request.BackupStatus
	require.NoError(t, json.Unmarshal([]byte(out), &bst), out)
	require.NotNil(t, bst.Result)
	// WAL with checkpoints after the backup: with the drill's small
	// max_wal_size below, replay makes restartpoints, where PostgreSQL
	// runs archive_cleanup_command.
	for i := range 6 {
		require.NoError(t, primary.Exec(ctx, "INSERT INTO hostconf SELECT g, repeat('x', 200) FROM generate_series($1::int, $1::int + 20000) g", i*100000))
		require.NoError(t, primary.Exec(ctx, "CHECKPOINT"))
		require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
	}
	env.waitArchived(primary, 60*time.Second)
	for _, a := range env.list() {
		stopAgent(t, a)
	}

	root := scratchRoot(t, "restores")
	var owner *restore.Owner
	if cred := postgresCredential(t); cred != nil {
		owner = &restore.Owner{UID: int(cred.Uid), GID: int(cred.Gid)}
	}
	logs := &testenv.SyncBuffer{}
	before := archiveState(t, env.dir)
	opts := func(id string, settings ...string) drill.Options {
		return drill.Options{
			ID: id, Node: "test-node", Backend: env.backend, Cluster: cluster,
			ArchiveURL: "file://" + env.dir, Executable: binary,
			ScratchRoot: root, PGBinDir: testenv.PGBinDir(t), Owner: owner,
			Logger:   hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Debug, Output: io.MultiWriter(testWriter{t}, logs)}),
			Settings: settings,
		}
	}
	d, err := drill.Run(ctx, opts("hostconf", "max_wal_size=32MB"))
	require.NoError(t, err, "drill: %+v", d)
	assert.Equal(t, catalog.DrillDone, d.Status)
	assert.Positive(t, d.Checked)
	requireEmptyDir(t, outside)
	requireEmptyDir(t, root)
	requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	assert.Contains(t, logs.String(), "include of the restored configuration ignored")
	assert.Contains(t, logs.String(), outside+"/etc/postgresql/common.conf")

	t.Run("replay timeout", func(t *testing.T) {
		// Past its replay timeout the drill fails, naming the key that
		// allows more, and leaves nothing behind.
		before := archiveState(t, env.dir)
		o := opts("timeout")
		o.ReplayTimeout = time.Nanosecond
		d, err := drill.Run(ctx, o)
		requireFailedRecord(t, env.backend, d, err, "recovery did not end within 1ns")
		assert.Contains(t, d.Error, "allow more time (restore-drill-replay-timeout)")
		requireEmptyDir(t, root)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	})

	t.Run("connections refused", func(t *testing.T) {
		// A server that ended recovery but refuses every connection (here
		// a preload library this host lacks, given as a drill setting)
		// fails the drill at once with its log, not at the replay
		// timeout.
		before := archiveState(t, env.dir)
		o := opts("refused", "session_preload_libraries=barnacle_no_such_library")
		o.ReplayTimeout = 5 * time.Minute
		start := time.Now()
		d, err := drill.Run(ctx, o)
		requireFailedRecord(t, env.backend, d, err, "the restored server ended recovery but refuses the drill's connections")
		assert.Contains(t, d.Error, "barnacle_no_such_library")
		assert.Less(t, time.Since(start), 2*time.Minute, "failed without waiting for the replay timeout")
		requireEmptyDir(t, root)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	})
}
