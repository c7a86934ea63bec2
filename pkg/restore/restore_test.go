package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/backup"
	"github.com/barnacle-pg/barnacle/pkg/basebackup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

const testCluster = "c1"

// restoreEnv is a PostgreSQL 15 primary with a user tablespace, a WAL
// receiver streaming into a file:// archive, and backups taken with
// pkg/backup.
type restoreEnv struct {
	node    *testenv.Node
	root    string // archive root
	b       storage.Backend
	tsOID   uint32
	tsDir   string
	stopWAL func()
}

func newRestoreEnv(t *testing.T) *restoreEnv {
	t.Helper()
	cluster := testenv.NewCluster(t, testenv.ClusterOptions{})
	node := cluster.Primary()
	ctx := t.Context()
	tsDir := filepath.Join(t.TempDir(), "ts1")
	require.NoError(t, os.Mkdir(tsDir, 0o700))
	testenv.PGOwn(t, tsDir)
	require.NoError(t, node.Exec(ctx, fmt.Sprintf("CREATE TABLESPACE ts1 LOCATION '%s'", tsDir)))
	require.NoError(t, node.Exec(ctx, "CREATE TABLE rows (id bigserial PRIMARY KEY, kind text) TABLESPACE ts1"))
	require.NoError(t, node.Exec(ctx, "INSERT INTO rows (kind) SELECT 'base' FROM generate_series(1, 1000)"))
	oid, err := node.QueryInt64(ctx, "SELECT oid::bigint FROM pg_tablespace WHERE spcname = 'ts1'")
	require.NoError(t, err)

	root := t.TempDir()
	b, err := fs.New(root, fs.Options{})
	require.NoError(t, err)
	e := &restoreEnv{node: node, root: root, b: b, tsOID: uint32(oid), tsDir: tsDir}

	r, err := walstream.New(walstream.Options{
		ConnString: node.ReplConnString(),
		Backend:    b,
		Prefix:     catalog.WALPrefix(testCluster),
		Slot:       "restore_test",
		CreateSlot: true,
	})
	require.NoError(t, err)
	wctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var runErr error
	go func() {
		defer close(done)
		runErr = r.Run(wctx)
	}()
	stopped := false
	e.stopWAL = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-done
		if !errors.Is(runErr, context.Canceled) {
			assert.NoError(t, runErr, "WAL receiver")
		}
	}
	t.Cleanup(e.stopWAL)
	return e
}

// waitWAL polls the archive until it holds the WAL the backup needs.
func (e *restoreEnv) waitWAL(ctx context.Context, stop basebackup.Position) error {
	for {
		seg := wal.SegmentFileName(stop.Timeline, wal.SegmentOf(stop.LSN-1, wal.DefaultSegmentSize), wal.DefaultSegmentSize)
		info, err := e.b.Stat(ctx, catalog.WALPrefix(testCluster)+seg+".partial")
		if err == nil && info.Size >= int64(wal.SegmentOffset(stop.LSN-1, wal.DefaultSegmentSize))+1 {
			return nil
		}
		if _, err := e.b.Stat(ctx, catalog.WALPrefix(testCluster)+seg); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (e *restoreEnv) take(t *testing.T, compression string) catalog.Backup {
	t.Helper()
	conn, err := pgconn.Connect(t.Context(), e.node.ReplConnString())
	require.NoError(t, err)
	defer conn.Close(context.Background())
	doc, err := backup.Take(t.Context(), conn, backup.Options{
		Backend: e.b, Cluster: testCluster, Compression: compression, Fast: true, WaitWAL: e.waitWAL,
	})
	require.NoError(t, err)
	require.Equal(t, catalog.StatusDone, doc.Status)
	return doc
}

// switchWAL completes the current segment and waits until the archive
// holds it whole.
func (e *restoreEnv) switchWAL(t *testing.T) {
	t.Helper()
	ctx := t.Context()
	s, err := e.node.QueryString(ctx, "SELECT pg_switch_wal()::text")
	require.NoError(t, err)
	end, err := wal.ParseLSN(s)
	require.NoError(t, err)
	seg := wal.SegmentFileName(1, wal.SegmentOf(end-1, wal.DefaultSegmentSize), wal.DefaultSegmentSize)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := e.b.Stat(ctx, catalog.WALPrefix(testCluster)+seg); err == nil {
			return
		}
		require.True(t, time.Now().Before(deadline), "segment %s not archived", seg)
		time.Sleep(20 * time.Millisecond)
	}
}

// walSource copies the archive's complete segments into a directory whose
// name holds a space and a single quote, for a restore_command that runs
// cp: quoting must survive postgresql.conf and the shell.
func (e *restoreEnv) walSource(t *testing.T) (dir, restoreCommand string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "wal src's dir")
	require.NoError(t, os.Mkdir(dir, 0o700))
	entries, err := os.ReadDir(filepath.Join(e.root, catalog.WALPrefix(testCluster)))
	require.NoError(t, err)
	n := 0
	for _, ent := range entries {
		if !wal.IsSegmentFileName(ent.Name()) && !wal.IsHistoryFileName(ent.Name()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(e.root, catalog.WALPrefix(testCluster), ent.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, ent.Name()), b, 0o600))
		n++
	}
	require.NotZero(t, n)
	testenv.PGOwn(t, dir)
	return dir, fmt.Sprintf(`cp "%s/%%f" "%%p"`, dir)
}

func countRows(t *testing.T, n interface {
	QueryInt64(context.Context, string, ...any) (int64, error)
}, kind string) int64 {
	t.Helper()
	c, err := n.QueryInt64(t.Context(), "SELECT count(*) FROM rows WHERE kind = $1", kind)
	require.NoError(t, err)
	return c
}

func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	require.NoError(t, filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = string(b)
		} else {
			out[rel] = info.Mode().String()
		}
		return nil
	}))
	return out
}

// TestRestore restores real PostgreSQL 15 base backups and starts
// PostgreSQL on them; the subtests share one primary and run in order.
func TestRestore(t *testing.T) {
	// These restores take the path of a data directory of many files:
	// one syncfs per filesystem instead of an fsync per file. Other
	// tests (TestRestoreBounds, the e2e restores) take the other.
	defer func(old int) { syncfsMinFiles = old }(syncfsMinFiles)
	syncfsMinFiles = 0
	start := time.Now()
	env := newRestoreEnv(t)
	zst := env.take(t, "zstd")
	plain := env.take(t, "none")
	t.Logf("setup and two backups: %s", time.Since(start))

	// Rows after the backups: "marker" before the PITR target, "late"
	// after it.
	ctx := t.Context()
	require.NoError(t, env.node.Exec(ctx, "INSERT INTO rows (kind) SELECT 'marker' FROM generate_series(1, 100)"))
	s, err := env.node.QueryString(ctx, "SELECT pg_current_wal_insert_lsn()::text")
	require.NoError(t, err)
	targetLSN, err := wal.ParseLSN(s)
	require.NoError(t, err)
	require.NoError(t, env.node.Exec(ctx, "INSERT INTO rows (kind) SELECT 'late' FROM generate_series(1, 100)"))
	env.switchWAL(t)
	_, restoreCommand := env.walSource(t)

	t.Run("PITRToLSN/zstd/TablespaceRemapped", func(t *testing.T) {
		target := filepath.Join(t.TempDir(), "data")
		tsDir := filepath.Join(t.TempDir(), "ts moved")
		var progress [][2]int64
		res, err := Restore(t.Context(), Options{
			Backend: env.b, Cluster: testCluster, Backup: zst, TargetDir: target,
			TablespaceMap: map[uint32]string{env.tsOID: tsDir},
			Recovery: &Recovery{
				RestoreCommand: restoreCommand,
				Target:         Target{Kind: TargetLSN, LSN: targetLSN},
				Action:         ActionPromote,
			},
			OnProgress: func(done, total int64) { progress = append(progress, [2]int64{done, total}) },
		})
		require.NoError(t, err)
		assert.Equal(t, zst.ID, res.BackupID)
		assert.Equal(t, target, res.TargetDir)
		assert.Equal(t, map[uint32]string{env.tsOID: tsDir}, res.Tablespaces)
		assert.Empty(t, res.MovedAside)
		assert.Equal(t, zst.Bytes, res.Bytes)
		assert.Greater(t, res.Files, 500)
		require.NotEmpty(t, progress)
		assert.Equal(t, [2]int64{zst.Bytes, zst.Bytes}, progress[len(progress)-1])

		link, err := os.Readlink(filepath.Join(target, "pg_tblspc", strconv.FormatUint(uint64(env.tsOID), 10)))
		require.NoError(t, err)
		assert.Equal(t, tsDir, link)
		for _, present := range []string{"backup_label", "backup_manifest", "recovery.signal", "global/pg_control"} {
			assert.FileExists(t, filepath.Join(target, present))
		}
		walFiles, err := os.ReadDir(filepath.Join(target, "pg_wal"))
		require.NoError(t, err)
		require.Len(t, walFiles, 1)
		assert.Equal(t, "archive_status", walFiles[0].Name())
		auto, err := os.ReadFile(filepath.Join(target, "postgresql.auto.conf"))
		require.NoError(t, err)
		assert.Contains(t, string(auto), "recovery_target_lsn = '"+targetLSN.String()+"'")
		assert.Contains(t, string(auto), `wal src''s dir`)
		st, err := os.Stat(target)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o700), st.Mode().Perm())

		pg := testenv.StartRestored(t, target)
		wctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		end, err := pg.WaitRecoveryEnd(wctx)
		require.NoError(t, err)
		assert.Equal(t, testenv.RecoveryPromoted, end)
		assert.Equal(t, int64(1000), countRows(t, pg, "base"))
		assert.Equal(t, int64(100), countRows(t, pg, "marker"))
		assert.Equal(t, int64(0), countRows(t, pg, "late"), "recovery stopped at the target LSN")
		loc, err := pg.QueryString(t.Context(), "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'")
		require.NoError(t, err)
		assert.Equal(t, tsDir, loc)
		// The rows really are in the remapped tablespace.
		relPath, err := pg.QueryString(t.Context(), "SELECT pg_relation_filepath('rows')")
		require.NoError(t, err)
		assert.FileExists(t, filepath.Join(target, relPath))
		assert.True(t, strings.HasPrefix(relPath, "pg_tblspc/"), relPath)
		require.NoError(t, pg.Stop())
	})

	t.Run("Refused", func(t *testing.T) {
		opts := func(target string) Options {
			return Options{Backend: env.b, Cluster: testCluster, Backup: zst, TargetDir: target,
				TablespaceMap: map[uint32]string{env.tsOID: filepath.Join(filepath.Dir(target), "ts-new")}}
		}
		t.Run("NotEmptyWithoutForce", func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "data")
			require.NoError(t, os.Mkdir(target, 0o700))
			require.NoError(t, os.WriteFile(filepath.Join(target, "keep.txt"), []byte("mine"), 0o600))
			before := treeOf(t, filepath.Dir(target))
			_, err := Restore(t.Context(), opts(target))
			require.ErrorIs(t, err, ErrNotEmpty)
			t.Log(err)
			assert.Equal(t, before, treeOf(t, filepath.Dir(target)), "nothing changed")
		})
		t.Run("LivePostmasterEvenWithForce", func(t *testing.T) {
			o := opts(env.node.DataDir)
			o.Force = true
			before, err := os.ReadDir(filepath.Dir(env.node.DataDir))
			require.NoError(t, err)
			_, err = Restore(t.Context(), o)
			require.ErrorIs(t, err, ErrInUse)
			t.Log(err)
			after, err := os.ReadDir(filepath.Dir(env.node.DataDir))
			require.NoError(t, err)
			assert.Equal(t, before, after, "nothing moved aside")
			_, err = env.node.QueryInt64(t.Context(), "SELECT 1")
			require.NoError(t, err, "the server still runs")
		})
		t.Run("TablespaceInUseEvenWithForce", func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "data")
			_, err := Restore(t.Context(), Options{Backend: env.b, Cluster: testCluster, Backup: zst, TargetDir: target, Force: true})
			require.ErrorIs(t, err, ErrInUse)
			t.Log(err)
			assert.NoDirExists(t, target, "refused before anything was created")
		})
		t.Run("UnknownTablespaceInMap", func(t *testing.T) {
			o := opts(filepath.Join(t.TempDir(), "data"))
			o.TablespaceMap[99999] = "/nowhere"
			_, err := Restore(t.Context(), o)
			require.ErrorContains(t, err, "tablespace 99999")
		})
		t.Run("NotDone", func(t *testing.T) {
			o := opts(filepath.Join(t.TempDir(), "data"))
			o.Backup.Status = catalog.StatusFailed
			_, err := Restore(t.Context(), o)
			require.ErrorContains(t, err, "only a done backup")
		})
	})

	// The fence (restore-root): every write stays below it, whatever the
	// request, backup.json or a symbolic link swapped in say.
	t.Run("Fence", func(t *testing.T) {
		oidDir := strconv.FormatUint(uint64(env.tsOID), 10)
		t.Run("TablespaceDefaultsBesideTarget", func(t *testing.T) {
			// No map: the tablespace goes below the fence, not to the
			// recorded location (outside it), and the restored server
			// finds its rows there.
			fence := t.TempDir()
			target := filepath.Join(fence, "data")
			recorded := treeOf(t, env.tsDir)
			res, err := Restore(t.Context(), Options{
				Backend: env.b, Cluster: testCluster, Backup: zst, TargetDir: target, Fence: fence,
				Recovery: &Recovery{RestoreCommand: restoreCommand, Target: Target{Kind: TargetImmediate}, Action: ActionPromote},
			})
			require.NoError(t, err)
			want := filepath.Join(fence, "data.tablespaces", oidDir)
			assert.Equal(t, target, res.TargetDir)
			assert.Equal(t, map[uint32]string{env.tsOID: want}, res.Tablespaces)
			assert.Equal(t, recorded, treeOf(t, env.tsDir), "the recorded location is untouched")
			link, err := os.Readlink(filepath.Join(target, "pg_tblspc", oidDir))
			require.NoError(t, err)
			assert.Equal(t, want, link)
			pg := testenv.StartRestored(t, target)
			wctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			_, err = pg.WaitRecoveryEnd(wctx)
			require.NoError(t, err)
			assert.Equal(t, int64(1000), countRows(t, pg, "base"))
			loc, err := pg.QueryString(t.Context(), "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'")
			require.NoError(t, err)
			assert.Equal(t, want, loc)
			require.NoError(t, pg.Stop())
		})
		t.Run("EditedLocation", func(t *testing.T) {
			// backup.json's tablespaceLocation edited to a directory
			// outside: a fenced restore does not go there.
			fence, outside := t.TempDir(), t.TempDir()
			doc := zst
			doc.Files = slices.Clone(zst.Files)
			for i := range doc.Files {
				if doc.Files[i].TablespaceOID != 0 {
					doc.Files[i].TablespaceLocation = outside
				}
			}
			res, err := Restore(t.Context(), Options{Backend: env.b, Cluster: testCluster, Backup: doc, TargetDir: filepath.Join(fence, "data"), Fence: fence})
			require.NoError(t, err)
			assert.Equal(t, filepath.Join(fence, "data.tablespaces", oidDir), res.Tablespaces[env.tsOID])
			assert.Len(t, treeOf(t, outside), 1, "nothing written outside")
		})
		t.Run("Refused", func(t *testing.T) {
			fence, outside := t.TempDir(), t.TempDir()
			require.NoError(t, os.Symlink(outside, filepath.Join(fence, "link")))
			for name, o := range map[string]Options{
				"map outside":          {TargetDir: filepath.Join(fence, "data"), TablespaceMap: map[uint32]string{env.tsOID: filepath.Join(outside, "ts")}},
				"target outside":       {TargetDir: filepath.Join(outside, "data")},
				"through a symlink":    {TargetDir: filepath.Join(fence, "link", "data")},
				"map through symlink":  {TargetDir: filepath.Join(fence, "data"), TablespaceMap: map[uint32]string{env.tsOID: filepath.Join(fence, "link", "ts")}},
				"dotdot":               {TargetDir: filepath.Join(fence, "..", filepath.Base(outside), "data")},
				"the fence itself":     {TargetDir: fence},
				"tablespace in target": {TargetDir: filepath.Join(fence, "data"), TablespaceMap: map[uint32]string{env.tsOID: filepath.Join(fence, "data", "ts")}},
			} {
				t.Run(name, func(t *testing.T) {
					o.Backend, o.Cluster, o.Backup, o.Fence, o.Force = env.b, testCluster, zst, fence, true
					_, err := Restore(t.Context(), o)
					require.Error(t, err)
					t.Log(err)
					assert.True(t, IsRejected(err) || strings.Contains(err.Error(), "overlap"), "refused before anything was written")
					assert.Len(t, treeOf(t, outside), 1, "nothing written outside")
					assert.NoDirExists(t, filepath.Join(fence, "data"))
				})
			}
		})
		t.Run("SwappedAfterCheck", func(t *testing.T) {
			// A directory under the fence that the requester can write is
			// replaced by a link to outside between the check and the
			// writes: the fence refuses to follow it.
			for _, tc := range []struct {
				name  string
				force bool
				setup func(fence, outside string) (target string, swap func())
			}{
				{"new target", false, func(fence, outside string) (string, func()) {
					return filepath.Join(fence, "new"), func() { require.NoError(t, os.Symlink(outside, filepath.Join(fence, "new"))) }
				}},
				{"parent of a forced target", true, func(fence, outside string) (string, func()) {
					require.NoError(t, os.MkdirAll(filepath.Join(fence, "sub", "data"), 0o700))
					require.NoError(t, os.WriteFile(filepath.Join(fence, "sub", "data", "old"), []byte("old"), 0o600))
					return filepath.Join(fence, "sub", "data"), func() {
						require.NoError(t, os.Rename(filepath.Join(fence, "sub"), filepath.Join(fence, "sub.orig")))
						require.NoError(t, os.Symlink(outside, filepath.Join(fence, "sub")))
					}
				}},
				{"tablespace parent", false, func(fence, outside string) (string, func()) {
					require.NoError(t, os.Mkdir(filepath.Join(fence, "data.tablespaces"), 0o700))
					return filepath.Join(fence, "data"), func() {
						require.NoError(t, os.Remove(filepath.Join(fence, "data.tablespaces")))
						require.NoError(t, os.Symlink(outside, filepath.Join(fence, "data.tablespaces")))
					}
				}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					fence, outside := t.TempDir(), t.TempDir()
					require.NoError(t, os.MkdirAll(filepath.Join(outside, "data"), 0o700))
					require.NoError(t, os.WriteFile(filepath.Join(outside, "data", "keep"), []byte("mine"), 0o600))
					before := treeOf(t, outside)
					target, swap := tc.setup(fence, outside)
					testHookChecked = swap
					defer func() { testHookChecked = nil }()
					_, err := Restore(t.Context(), Options{Backend: env.b, Cluster: testCluster, Backup: zst, TargetDir: target, Fence: fence, Force: tc.force})
					require.ErrorIs(t, err, ErrRedirected)
					t.Log(err)
					assert.Equal(t, before, treeOf(t, outside), "nothing written outside the fence")
				})
			}
		})
	})

	t.Run("Immediate/none/RecordedLocation/Force", func(t *testing.T) {
		// The primary must go for its tablespace directory to be free.
		env.stopWAL()
		require.NoError(t, env.node.Stop())
		oldTS := treeOf(t, env.tsDir)
		target := filepath.Join(t.TempDir(), "data")
		require.NoError(t, os.Mkdir(target, 0o700))
		require.NoError(t, os.WriteFile(filepath.Join(target, "old.txt"), []byte("old data"), 0o600))
		now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
		res, err := Restore(t.Context(), Options{
			Backend: env.b, Cluster: testCluster, Backup: plain, TargetDir: target, Force: true, Parallel: 1,
			Recovery: &Recovery{RestoreCommand: restoreCommand, Target: Target{Kind: TargetImmediate}, Action: ActionPromote},
			Now:      func() time.Time { return now },
		})
		require.NoError(t, err)
		assert.Equal(t, map[uint32]string{env.tsOID: env.tsDir}, res.Tablespaces)
		assert.Equal(t, map[string]string{
			target:    target + ".barnacle-old-20261125T100000Z",
			env.tsDir: env.tsDir + ".barnacle-old-20261125T100000Z",
		}, res.MovedAside)
		assert.Equal(t, map[string]string{".": "drwx------", "old.txt": "old data"}, treeOf(t, res.MovedAside[target]))
		assert.Equal(t, oldTS, treeOf(t, res.MovedAside[env.tsDir]), "the old tablespace is intact where it was moved")

		pg := testenv.StartRestored(t, target)
		wctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		end, err := pg.WaitRecoveryEnd(wctx)
		require.NoError(t, err)
		assert.Equal(t, testenv.RecoveryPromoted, end)
		assert.Equal(t, int64(1000), countRows(t, pg, "base"))
		assert.Equal(t, int64(0), countRows(t, pg, "marker"), "recovery stopped at consistency")
		require.NoError(t, pg.Stop())
	})

	t.Run("DamagedObject", func(t *testing.T) {
		for _, tc := range []struct {
			doc  catalog.Backup
			name string
		}{
			{zst, strconv.FormatUint(uint64(env.tsOID), 10) + ".tar.zst"},
			{plain, "base.tar"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				p := filepath.Join(env.root, catalog.BackupPrefix(testCluster, tc.doc.ID), tc.name)
				testenv.FlipByte(t, p, -1)
				target := filepath.Join(t.TempDir(), "data")
				_, err := Restore(t.Context(), Options{
					Backend: env.b, Cluster: testCluster, Backup: tc.doc, TargetDir: target,
					TablespaceMap: map[uint32]string{env.tsOID: filepath.Join(t.TempDir(), "ts")},
				})
				require.Error(t, err)
				t.Log(err)
				var oe *ObjectError
				require.ErrorAs(t, err, &oe)
				assert.Equal(t, tc.name, oe.Object)
				assert.ErrorIs(t, err, storage.ErrChecksum)
				assert.NoFileExists(t, filepath.Join(target, "global", "pg_control"), "a failed restore cannot be started")
			})
		}
	})
}
