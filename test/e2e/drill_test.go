package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/drill"
	"github.com/barnacle-pg/barnacle/pkg/restore"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// archiveState lists every file of a file:// archive with its size and
// modification time: what must not change when a drill runs, apart from
// drills/.
func archiveState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = fmt.Sprintf("%d %d", info.Size(), info.ModTime().UnixNano())
		return nil
	}))
	return out
}

// requireOnlyDrillAdded checks that the archive changed only by the
// drill's record.
func requireOnlyDrillAdded(t *testing.T, before, after map[string]string, id string) {
	t.Helper()
	rec := filepath.Join(cluster, "drills", id+".json")
	assert.Contains(t, after, rec, "the drill is recorded")
	for name, v := range after {
		if strings.HasPrefix(name, filepath.Join(cluster, "drills")+"/") {
			continue
		}
		assert.Equal(t, before[name], v, "archive object %s changed", name)
	}
	for name := range before {
		assert.Contains(t, after, name, "archive object %s vanished", name)
	}
}

// requireEmptyDir checks that a drill left nothing under restore-root.
func requireEmptyDir(t *testing.T, dir string) {
	t.Helper()
	assert.Empty(t, dirListing(t, dir), "left under %s", dir)
}

// requireFailedRecord checks a failed drill's outcome and its record.
func requireFailedRecord(t *testing.T, b storage.Backend, d catalog.Drill, err error, want string) {
	t.Helper()
	require.Error(t, err)
	assert.Equal(t, catalog.DrillFailed, d.Status)
	assert.Contains(t, d.Error, want)
	assert.Contains(t, err.Error(), want)
	drills, lerr := catalog.ListDrills(t.Context(), b, cluster)
	require.NoError(t, lerr)
	var found bool
	for _, r := range drills {
		if r.ID == d.ID {
			found = true
			assert.Equal(t, catalog.DrillFailed, r.Status)
			assert.Equal(t, d.Error, r.Error)
		}
	}
	assert.True(t, found, "failed drill %s recorded", d.ID)
}

// TestDrill runs restore drills (pkg/drill, called directly) against a
// real cluster's archive: without a backup, the success path with WAL
// after the backup, and the bad inputs: no space, a server that cannot
// start, cancellation during replay, a damaged backup. Each leaves nothing
// under restore-root and changes the archive only by its record.
func TestDrill(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env, leader, primary := newPostgresReadableEnv(t)
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE drill (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"))
	// A tablespace: a drill restores it below its scratch directory
	// (restore's fence), never to the location the backup recorded.
	tsDir := filepath.Join(t.TempDir(), "ts1")
	require.NoError(t, os.Mkdir(tsDir, 0o700))
	testenv.PGOwn(t, tsDir)
	require.NoError(t, primary.Exec(ctx, fmt.Sprintf("CREATE TABLESPACE ts1 LOCATION '%s'", tsDir)))
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE drill_ts TABLESPACE ts1 AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g"))

	root := scratchRoot(t, "restores")
	cred := postgresCredential(t)
	var owner *restore.Owner
	if cred != nil {
		owner = &restore.Owner{UID: int(cred.Uid), GID: int(cred.Gid)}
	}
	logs := &testenv.SyncBuffer{}
	logger := hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Debug, Output: io.MultiWriter(testWriter{t}, logs)})
	opts := func(id string) drill.Options {
		return drill.Options{
			ID: id, Node: "test-node", Backend: env.backend, Cluster: cluster,
			ArchiveURL: "file://" + env.dir, Executable: binary,
			ScratchRoot: root, PGBinDir: testenv.PGBinDir(t), Owner: owner, Logger: logger,
		}
	}
	stopAgents := func() {
		for _, a := range env.list() {
			stopAgent(t, a)
		}
	}

	t.Run("no backup", func(t *testing.T) {
		env.waitArchived(primary, 30*time.Second)
		stopAgents()
		before := archiveState(t, env.dir)
		d, err := drill.Run(ctx, opts("no-backup"))
		requireFailedRecord(t, env.backend, d, err, "no done backup to restore")
		assert.Empty(t, d.BackupID)
		requireEmptyDir(t, root)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	})

	env.startAgents()
	leader = env.leaderFor(primary)
	store := env.store()
	bst := backupWait(t, store...)
	backupID := bst.Result.ID

	// Rows after the backup: only replay of archived WAL brings them back.
	insertDrillRows(t, primary, 1, 200)
	// A role that is no superuser, for the restore-drill-superuser case.
	require.NoError(t, primary.Exec(ctx, "CREATE ROLE drill_plain LOGIN"))
	require.NoError(t, primary.Exec(ctx, "INSERT INTO drill_ts SELECT g, md5(g::text) FROM generate_series(20001, 30000) g"))
	var lastLSN string
	var lastAt time.Time
	require.NoError(t, primary.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text, max(at) FROM drill").Scan(&lastLSN, &lastAt))
	last, err := wal.ParseLSN(lastLSN)
	require.NoError(t, err)
	env.waitArchived(primary, 30*time.Second)
	stopAgents()
	_ = leader

	t.Run("success", func(t *testing.T) {
		// A leftover of a killed drill (its server long gone) is removed.
		leftover := filepath.Join(root, "barnacle-drill-killed", "data")
		require.NoError(t, os.MkdirAll(leftover, 0o700))
		require.NoError(t, os.WriteFile(filepath.Join(leftover, "postmaster.pid"), []byte("999999999\n"), 0o600))

		before := archiveState(t, env.dir)
		tsBefore := dirListing(t, tsDir)
		d, err := drill.Run(ctx, opts("success"))
		require.NoError(t, err, "drill: %+v", d)
		assert.Equal(t, catalog.DrillDone, d.Status)
		assert.Equal(t, backupID, d.BackupID)
		assert.Equal(t, "test-node", d.Node)
		assert.True(t, d.Reached.Reached(d.Promised), "reached %+v, promised %+v", d.Reached, d.Promised)
		assert.True(t, d.Reached.Reached(catalog.Position{Timeline: 1, LSN: last}),
			"replay passed the last insert at %s: reached %+v", last, d.Reached)
		assert.False(t, d.ReachedTime.IsZero(), "the last replayed commit time is known")
		assert.False(t, d.ReachedTime.Before(lastAt.Truncate(time.Microsecond)), "the last replayed commit (%s) is not before the last row's insert (%s)", d.ReachedTime, lastAt)
		assert.Positive(t, d.Checked, "pg_amcheck checked relations")
		assert.Positive(t, d.Bytes)
		assert.Positive(t, d.Phases.Restore)
		assert.Positive(t, d.Phases.Replay)
		assert.Positive(t, d.Phases.Check)
		t.Logf("drill: backup %s, promised %s/%d, reached %s/%d at %s, checked %d relations, %d bytes; restore %s, replay %s, check %s",
			d.BackupID, d.Promised.LSN, d.Promised.Timeline, d.Reached.LSN, d.Reached.Timeline, d.ReachedTime, d.Checked, d.Bytes,
			d.Phases.Restore, d.Phases.Replay, d.Phases.Check)
		requireEmptyDir(t, root)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
		assert.Equal(t, tsBefore, dirListing(t, tsDir), "the source's tablespace directory is not touched")
		assert.Contains(t, logs.String(), filepath.Join(root, "barnacle-drill-success", "data.tablespaces"), "the tablespace went below the scratch directory")

		drills, err := catalog.ListDrills(ctx, env.backend, cluster)
		require.NoError(t, err)
		lastOK, ok := catalog.LastSuccessfulDrill(drills)
		require.True(t, ok)
		assert.Equal(t, "success", lastOK.ID)
		assert.Equal(t, d.Reached, lastOK.Reached)
	})

	t.Run("superuser is not a superuser", func(t *testing.T) {
		// restore-drill-superuser names a role that exists in the
		// restored cluster but cannot run the checks.
		before := archiveState(t, env.dir)
		o := opts("not-superuser")
		o.Superuser = "drill_plain"
		d, err := drill.Run(ctx, o)
		requireFailedRecord(t, env.backend, d, err, "the restored server runs, but role drill_plain is not a superuser, and the drill's checks need one: "+
			"set restore-drill-superuser to the cluster's superuser name (Stolon's keeper --pg-su-username)")
		requireEmptyDir(t, root)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	})

	t.Run("no space", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to mount a small tmpfs as restore-root")
		}
		small := filepath.Join(t.TempDir(), "small")
		require.NoError(t, os.MkdirAll(small, 0o755))
		out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "barnacle-drill", small).CombinedOutput()
		require.NoError(t, err, "mount tmpfs: %s", out)
		t.Cleanup(func() { _ = exec.Command("umount", small).Run() })
		testenv.PGOwn(t, small)
		before := archiveState(t, env.dir)
		o := opts("no-space")
		o.ScratchRoot = small
		d, err := drill.Run(ctx, o)
		requireFailedRecord(t, env.backend, d, err, "not enough space for a drill under restore-root "+small)
		assert.Contains(t, d.Error, "the filesystem has ")
		assert.Contains(t, d.Error, "free space there or point restore-root at a larger filesystem")
		requireEmptyDir(t, small)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	})

	t.Run("server does not start", func(t *testing.T) {
		before := archiveState(t, env.dir)
		o := opts("no-start")
		o.Settings = []string{"shared_preload_libraries=no_such_library"}
		d, err := drill.Run(ctx, o)
		requireFailedRecord(t, env.backend, d, err, "PostgreSQL exited before recovery ended")
		assert.Contains(t, d.Error, "no_such_library", "the log line naming the cause is in the reason")
		assert.Equal(t, backupID, d.BackupID)
		requireEmptyDir(t, root)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	})

	t.Run("cancelled during replay", func(t *testing.T) {
		// Enough WAL after the backup that replay takes a while.
		env.startAgents()
		env.leaderFor(primary)
		require.NoError(t, primary.Exec(ctx, "CREATE TABLE filler AS SELECT g AS id, repeat('x', 500) AS pad FROM generate_series(1, 300000) g"))
		env.waitArchived(primary, 2*time.Minute)
		stopAgents()

		before := archiveState(t, env.dir)
		dctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var pid int
		go func() {
			// Cancel as soon as the server runs: it is then replaying.
			for dctx.Err() == nil {
				b, err := os.ReadFile(filepath.Join(root, "barnacle-drill-cancelled", "data", "postmaster.pid"))
				if err == nil {
					if p, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])); err == nil {
						pid = p
						cancel()
						return
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		d, err := drill.Run(dctx, opts("cancelled"))
		requireFailedRecord(t, env.backend, d, err, "drill cancelled during replay")
		require.NotZero(t, pid)
		assert.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "the restored server is gone")
		requireEmptyDir(t, root)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	})

	t.Run("cancelled during restore", func(t *testing.T) {
		before := archiveState(t, env.dir)
		dctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			// Cancel once the restore writes into the data directory.
			for dctx.Err() == nil {
				if _, err := os.Stat(filepath.Join(root, "barnacle-drill-cancel-restore", "data", "base")); err == nil {
					cancel()
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
		d, err := drill.Run(dctx, opts("cancel-restore"))
		requireFailedRecord(t, env.backend, d, err, "drill cancelled while restoring backup "+backupID)
		requireEmptyDir(t, root)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	})

	// Two complete segments after the backup's stop, with WAL after both.
	a, err := catalog.ReadArchive(ctx, env.backend, cluster)
	require.NoError(t, err)
	doc, err := catalog.ReadBackup(ctx, env.backend, cluster, backupID)
	require.NoError(t, err)
	var after []catalog.WALObject
	for _, o := range a.WAL.Segments() {
		if !o.Partial && o.Timeline == doc.StopTimeline && o.Segment > wal.SegmentOf(doc.StopLSN, a.SegmentSize) {
			after = append(after, o)
		}
	}
	require.GreaterOrEqual(t, len(after), 4, "the filler made segments after the backup")
	missed, damaged := after[0], after[2]

	t.Run("damaged WAL segment", func(t *testing.T) {
		// wal-fetch refuses the segment (checksum), recovery stops with
		// a fatal error: the drill fails naming it. The byte is flipped
		// back afterwards.
		path := filepath.Join(env.dir, damaged.Key)
		testenv.FlipByte(t, path, damaged.Size/2)
		defer testenv.FlipByte(t, path, damaged.Size/2)
		before := archiveState(t, env.dir)
		d, err := drill.Run(ctx, opts("damaged-wal"))
		requireFailedRecord(t, env.backend, d, err, "PostgreSQL exited before recovery ended")
		assert.Contains(t, d.Error, damaged.Name, "the server log lines name the segment")
		requireEmptyDir(t, root)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	})

	t.Run("archive promised more than replay reached", func(t *testing.T) {
		// A segment whose stored bytes are not WAL but carry a valid
		// checksum (what an archiver bug would store): wal-fetch serves
		// it, PostgreSQL takes it for the end of WAL and promotes short
		// of the window the archive's listing promises.
		zeros := make([]byte, a.SegmentSize)
		require.NoError(t, env.backend.Put(ctx, missed.Key, bytes.NewReader(zeros), storage.PutOptions{}))
		before := archiveState(t, env.dir)
		d, err := drill.Run(ctx, opts("short"))
		requireFailedRecord(t, env.backend, d, err, "but the archive promised "+d.Promised.LSN.String())
		segStart := wal.LSN(uint64(missed.Segment) * a.SegmentSize)
		assert.LessOrEqual(t, d.Reached.LSN, segStart, "replay ended before the bad segment")
		assert.Less(t, d.Reached.LSN, d.Promised.LSN)
		assert.Contains(t, d.Error, "recovery of backup "+backupID+" ended at "+d.Reached.LSN.String())
		requireEmptyDir(t, root)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	})

	t.Run("damaged backup", func(t *testing.T) {
		// Last: it damages the backup. A byte in the middle of the base
		// archive: the restore fails half way on its checksum.
		var base string
		for _, f := range doc.Files {
			if strings.HasPrefix(f.Name, "base.tar") {
				base = filepath.Join(env.dir, cluster, "backups", backupID, f.Name)
			}
		}
		require.NotEmpty(t, base)
		testenv.FlipByte(t, base, -1)

		before := archiveState(t, env.dir)
		d, err := drill.Run(ctx, opts("damaged"))
		requireFailedRecord(t, env.backend, d, err, "restore of backup "+backupID+" failed")
		assert.Contains(t, d.Error, "checksum")
		assert.Contains(t, d.Error, "barnacle verify-backup "+backupID)
		requireEmptyDir(t, root)
		requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
	})
}

// insertDrillRows commits rows from..to, one transaction each.
func insertDrillRows(t *testing.T, n *testenv.Node, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		require.NoError(t, n.Exec(t.Context(), "INSERT INTO drill (id) VALUES ($1)", i))
	}
}

// testWriter sends a logger's lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestDrillPGBench measures a drill's phases on a pgbench database:
// BARNACLE_DRILL_SCALE=20 (the scale; unset skips it), with
// BARNACLE_DRILL_SECONDS of pgbench load after the backup (default 20),
// compressed with zstd as a production agent would.
//
// It is a measurement, so it does not run in parallel with other scenarios.
func TestDrillPGBench(t *testing.T) {
	scale := os.Getenv("BARNACLE_DRILL_SCALE")
	if scale == "" {
		t.Skip("a measurement: set BARNACLE_DRILL_SCALE (e.g. 20) to run it")
	}
	seconds := os.Getenv("BARNACLE_DRILL_SECONDS")
	if seconds == "" {
		seconds = "20"
	}
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{}, "--compression", "zstd")
	shareArchiveWithPostgres(t, env.dir)
	env.startAgents()
	primary := env.pg.Primary()
	env.leaderFor(primary)
	out, err := pgbench(ctx, t, primary, "-i", "-s", scale, "-q")
	require.NoError(t, err, out)
	store := env.store()
	bout, stderr, code := barnacle(t, append([]string{"backup", "--wait", "--json"}, store...)...)
	require.Equal(t, 0, code, "backup: %s %s", bout, stderr)
	out, err = pgbench(ctx, t, primary, "-T", seconds, "-c", "2", "-n")
	require.NoError(t, err, out)
	env.waitArchived(primary, 2*time.Minute)
	for _, a := range env.list() {
		stopAgent(t, a)
	}
	var accounts int64
	require.NoError(t, primary.QueryRow(ctx, "SELECT count(*) FROM pgbench_accounts").Scan(&accounts))

	root := scratchRoot(t, "restores")
	var owner *restore.Owner
	if cred := postgresCredential(t); cred != nil {
		owner = &restore.Owner{UID: int(cred.Uid), GID: int(cred.Gid)}
	}
	before := archiveState(t, env.dir)
	d, err := drill.Run(ctx, drill.Options{
		ID: "pgbench", Node: "test-node", Backend: env.backend, Cluster: cluster,
		ArchiveURL: "file://" + env.dir, Executable: binary,
		ScratchRoot: root, PGBinDir: testenv.PGBinDir(t), Owner: owner,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Info, Output: testWriter{t}}),
	})
	require.NoError(t, err)
	assert.True(t, d.Reached.Reached(d.Promised))
	t.Logf("pgbench scale %s, %d accounts, %ss of load after the backup: restored %d bytes; WAL replayed from the backup's start to %s; checked %d relations; restore %s, replay %s, check %s, RTO %s",
		scale, accounts, seconds, d.Bytes, d.Reached.LSN, d.Checked, d.Phases.Restore, d.Phases.Replay, d.Phases.Check, d.Phases.RTO())
	requireEmptyDir(t, root)
	requireOnlyDrillAdded(t, before, archiveState(t, env.dir), d.ID)
}
