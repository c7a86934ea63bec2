package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/basebackup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

const testCluster = "c1"

// archive is an fs backend in a temporary directory.
type archive struct {
	root string
	b    storage.Backend
}

func newArchive(t *testing.T) archive {
	t.Helper()
	root := t.TempDir()
	b, err := fs.New(root, fs.Options{})
	require.NoError(t, err)
	return archive{root: root, b: b}
}

// walWatch follows a walstream.Receiver's flushed position; its wait is
// the WaitWAL that `barnacle backup --local` uses.
type walWatch struct {
	mu      sync.Mutex
	flushed wal.LSN
	changed chan struct{} // closed and replaced when flushed grows
	stopped chan struct{} // closed when the receiver's Run returned
	err     error         // Run's result, set before stopped is closed
}

func (w *walWatch) onProgress(p walstream.Progress) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p.Flushed > w.flushed {
		w.flushed = p.Flushed
		close(w.changed)
		w.changed = make(chan struct{})
	}
}

func (w *walWatch) wait(ctx context.Context, stop basebackup.Position) error {
	for {
		w.mu.Lock()
		flushed, changed := w.flushed, w.changed
		w.mu.Unlock()
		if flushed >= stop.LSN {
			return nil
		}
		select {
		case <-changed:
		case <-w.stopped:
			return fmt.Errorf("WAL receiver stopped: %w", w.err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// startReceiver streams the node's WAL into a until the test ends.
func startReceiver(t *testing.T, node *testenv.Node, a archive) *walWatch {
	t.Helper()
	w := &walWatch{changed: make(chan struct{}), stopped: make(chan struct{})}
	r, err := walstream.New(walstream.Options{
		ConnString: node.ReplConnString(),
		Backend:    a.b,
		Prefix:     catalog.WALPrefix(testCluster),
		Slot:       "backup_test",
		CreateSlot: true,
		OnProgress: w.onProgress,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		w.err = r.Run(ctx)
		close(w.stopped)
	}()
	t.Cleanup(func() {
		cancel()
		<-w.stopped
		assert.NoError(t, w.err, "WAL receiver")
	})
	return w
}

type testEnv struct {
	node  *testenv.Node
	tsOID uint32
	tsDir string
	// main is the archive the receiver streams into; noWAL has no WAL.
	main, noWAL archive
	wal         *walWatch
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	cluster := testenv.NewCluster(t, testenv.ClusterOptions{})
	node := cluster.Primary()
	ctx := t.Context()
	tsDir := filepath.Join(t.TempDir(), "ts1")
	require.NoError(t, os.Mkdir(tsDir, 0o700))
	testenv.PGOwn(t, tsDir)
	require.NoError(t, node.Exec(ctx, fmt.Sprintf("CREATE TABLESPACE ts1 LOCATION '%s'", tsDir)))
	require.NoError(t, node.Exec(ctx, "CREATE TABLE busy (id bigserial PRIMARY KEY, payload text) TABLESPACE ts1"))
	require.NoError(t, node.Exec(ctx, "INSERT INTO busy (payload) SELECT repeat('x', 200) FROM generate_series(1, 2000)"))
	oid, err := node.QueryInt64(ctx, "SELECT oid::bigint FROM pg_tablespace WHERE spcname = 'ts1'")
	require.NoError(t, err)
	env := &testEnv{node: node, tsOID: uint32(oid), tsDir: tsDir, main: newArchive(t), noWAL: newArchive(t)}
	env.wal = startReceiver(t, node, env.main)
	return env
}

func (e *testEnv) replConn(t *testing.T) *pgconn.PgConn {
	t.Helper()
	conn, err := pgconn.Connect(t.Context(), e.node.ReplConnString())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// writeWhile runs inserts into the tablespace until the returned function
// is called, which returns their error.
func (e *testEnv) writeWhile(t *testing.T) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	var g errgroup.Group
	g.Go(func() error {
		db, err := e.node.Connect(ctx)
		if err != nil {
			return err
		}
		defer db.Close(context.Background())
		for ctx.Err() == nil {
			_, err := db.Exec(ctx, "INSERT INTO busy (payload) SELECT repeat('y', 200) FROM generate_series(1, 50)")
			if err != nil && ctx.Err() == nil {
				return err
			}
		}
		return nil
	})
	return func() error {
		cancel()
		return g.Wait()
	}
}

// TestTake takes real base backups from PostgreSQL 15 with a user
// tablespace; the subtests share one server and run in order (the
// corruption tests damage the backups the first ones took).
func TestTake(t *testing.T) {
	env := newTestEnv(t)
	taken := map[string]catalog.Backup{}
	// The uncompressed backup has the default CRC32C manifest checksums,
	// which FileInTarDamaged needs to catch a damaged file; the zstd one
	// has SHA256.
	for alg, checksums := range map[string]string{"zstd": "sha256", "none": ""} {
		t.Run("Done/"+alg, func(t *testing.T) { taken[alg] = testDone(t, env, alg, checksums) })
	}
	t.Run("StoredObjectDamaged", func(t *testing.T) { testStoredObjectDamaged(t, env, taken["zstd"]) })
	t.Run("FileInTarDamaged", func(t *testing.T) { testFileInTarDamaged(t, env, taken["none"]) })
	t.Run("NoEstimateWithoutProgress", func(t *testing.T) { testNoEstimate(t, env) })
	t.Run("WALNotArchived", func(t *testing.T) { testWALNotArchived(t, env) })
	t.Run("WALTimeout", func(t *testing.T) { testWALTimeout(t, env) })
	for _, alg := range []string{"zstd", "lz4"} {
		t.Run("Cancelled/"+alg, func(t *testing.T) { testCancelled(t, env, alg) })
	}
}

// testNoEstimate: without OnProgress the server is not asked for its size
// estimate (PROGRESS), which costs it a stat of every file before it sends
// the first byte (issue 21): the tablespaces come without sizes.
func testNoEstimate(t *testing.T, env *testEnv) {
	for _, withProgress := range []bool{false, true} {
		var logs bytes.Buffer // written by Take's goroutine only, read after it returns
		opts := Options{
			Logger:  hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Debug}),
			Backend: env.main.b,
			Cluster: testCluster,
			Fast:    true,
			WaitWAL: env.wal.wait,
		}
		if withProgress {
			opts.OnProgress = func(int64, int64) {}
		}
		doc, err := Take(t.Context(), env.replConn(t), opts)
		require.NoError(t, err)
		assert.Equal(t, catalog.StatusDone, doc.Status)
		line := ""
		for l := range strings.SplitSeq(logs.String(), "\n") {
			if strings.Contains(l, "tablespaces:") {
				line = l
			}
		}
		if withProgress {
			assert.NotContains(t, line, "estimated_bytes=-1", "with OnProgress the server estimates the size")
			assert.Contains(t, line, "estimated_bytes=")
		} else {
			assert.Contains(t, line, "estimated_bytes=-1", "without OnProgress no estimate is asked for")
		}
	}
}

func testDone(t *testing.T, env *testEnv, alg, manifestChecksums string) catalog.Backup {
	ctx := t.Context()
	conn := env.replConn(t)
	var progress [][2]int64
	stopWrites := env.writeWhile(t)
	start := time.Now()
	var logs bytes.Buffer // written by Take's goroutine only, read after it returns
	doc, err := Take(ctx, conn, Options{
		Logger:            hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info}),
		Backend:           env.main.b,
		Cluster:           testCluster,
		Compression:       alg,
		ManifestChecksums: manifestChecksums,
		Fast:              true,
		Agent:             "agent-test",
		KeeperUID:         "keeper0",
		Host:              "host0",
		From:              "master",
		WaitWAL:           env.wal.wait,
		OnProgress:        func(done, total int64) { progress = append(progress, [2]int64{done, total}) },
	})
	took := time.Since(start)
	require.NoError(t, stopWrites())
	require.NoError(t, err)
	t.Logf("%s backup %s took %s: %d bytes, %d stored", alg, doc.ID, took, doc.Bytes, doc.StoredBytes)

	// Each wait is said as it begins: the checkpoint (minutes when
	// spread), then the WAL after the data.
	out := logs.String()
	iCheckpoint := strings.Index(out, "waiting for checkpoint")
	iData := strings.Index(out, "checkpoint done, receiving backup")
	iWAL := strings.Index(out, "backup data stored, waiting for its WAL to be archived")
	assert.True(t, iCheckpoint >= 0 && iCheckpoint < iData && iData < iWAL, "log:\n%s", out)

	// The document.
	assert.Equal(t, catalog.StatusDone, doc.Status)
	assert.Empty(t, doc.Error)
	assert.Equal(t, "barnacle "+doc.ID, doc.Label)
	assert.NotEqual(t, wal.InvalidLSN, doc.StartLSN)
	assert.Greater(t, doc.StopLSN, doc.StartLSN)
	assert.Equal(t, wal.Timeline(1), doc.StartTimeline)
	assert.Equal(t, wal.Timeline(1), doc.StopTimeline)
	assert.False(t, doc.StopTime.Before(doc.StartTime))
	assert.GreaterOrEqual(t, doc.PGVersion, 150000)
	assert.Less(t, doc.PGVersion, 160000)
	sysID, err := env.node.SystemID(ctx)
	require.NoError(t, err)
	assert.Equal(t, sysID, doc.SystemID)
	assert.Equal(t, uint64(16<<20), doc.WALSegmentSize)
	assert.Equal(t, alg, doc.Compression)
	assert.Equal(t, []string{"agent-test", "keeper0", "host0", "master"}, []string{doc.Agent, doc.KeeperUID, doc.Host, doc.From})

	// Files are as stored.
	sfx := map[string]string{"zstd": ".zst", "none": ""}[alg]
	tsName := strconv.FormatUint(uint64(env.tsOID), 10) + ".tar" + sfx
	var names []string
	var bytes, stored int64
	for _, f := range doc.Files {
		names = append(names, f.Name)
		info, err := env.main.b.Stat(ctx, catalog.BackupPrefix(testCluster, doc.ID)+f.Name)
		require.NoError(t, err)
		assert.Equal(t, info.Size, f.StoredBytes, f.Name)
		assert.Equal(t, info.Checksum, f.Checksum, f.Name)
		if f.Name == tsName {
			assert.Equal(t, env.tsOID, f.TablespaceOID)
			assert.Equal(t, env.tsDir, f.TablespaceLocation)
		} else {
			assert.Zero(t, f.TablespaceOID, f.Name)
			assert.Empty(t, f.TablespaceLocation, f.Name)
		}
		if alg == "none" || f.Name == ManifestName {
			assert.Equal(t, f.Bytes, f.StoredBytes, f.Name)
		} else {
			assert.Less(t, f.StoredBytes, f.Bytes, f.Name)
		}
		bytes += f.Bytes
		stored += f.StoredBytes
	}
	assert.ElementsMatch(t, []string{"base.tar" + sfx, tsName, ManifestName}, names)
	assert.Equal(t, bytes, doc.Bytes)
	assert.Equal(t, stored, doc.StoredBytes)
	objs, err := env.main.b.List(ctx, catalog.BackupPrefix(testCluster, doc.ID))
	require.NoError(t, err)
	assert.Len(t, objs, len(doc.Files)+1, "the files and backup.json")

	// The manifest's checksums are of the algorithm asked for.
	mdata, err := storage.ReadAll(ctx, env.main.b, catalog.BackupPrefix(testCluster, doc.ID)+ManifestName)
	require.NoError(t, err)
	m, err := parseManifest(mdata)
	require.NoError(t, err)
	wantAlg := map[string]string{"": "CRC32C", "sha256": "SHA256"}[manifestChecksums]
	for _, f := range m.Files {
		require.Equal(t, wantAlg, f.Algorithm, f.path())
	}

	// backup.json holds the document.
	read, err := catalog.ReadBackup(ctx, env.main.b, testCluster, doc.ID)
	require.NoError(t, err)
	read.UpdatedAt, doc.UpdatedAt = time.Time{}, time.Time{}
	assert.Equal(t, doc, read)

	// Progress grows about every MiB, with the server's estimate as its
	// total from the start, and ends at the real total.
	require.Greater(t, len(progress), 1)
	for i, p := range progress[:len(progress)-1] {
		assert.Equal(t, progress[0][1], p[1], "the estimate does not change")
		if i > 0 {
			assert.Greater(t, p[0], progress[i-1][0])
		}
	}
	assert.Positive(t, progress[0][1])
	t.Logf("server's estimate %d bytes, backup %d bytes", progress[0][1], doc.Bytes)
	assert.InEpsilon(t, doc.Bytes, progress[0][1], 0.1, "estimate %d, backup %d bytes", progress[0][1], doc.Bytes)
	assert.Equal(t, [2]int64{doc.Bytes, doc.Bytes}, progress[len(progress)-1])

	// The WAL the backup needs is archived.
	chk, err := catalog.CheckBackupWAL(ctx, env.main.b, testCluster, doc)
	require.NoError(t, err)
	assert.True(t, chk.OK(), "missing WAL: %v", chk.Missing)

	// And it verifies.
	var vprogress [][2]int64
	start = time.Now()
	rep, err := Verify(ctx, env.main.b, testCluster, doc, func(done, total int64) {
		vprogress = append(vprogress, [2]int64{done, total})
	})
	require.NoError(t, err)
	t.Logf("verified %d files, %d bytes in %s", rep.Files, rep.Bytes, time.Since(start))
	assert.Empty(t, rep.Problems)
	assert.Greater(t, rep.Files, 500)
	assert.Greater(t, rep.Bytes, int64(10<<20))
	require.NotEmpty(t, vprogress)
	assert.Equal(t, [2]int64{doc.StoredBytes, doc.StoredBytes}, vprogress[len(vprogress)-1])
	return doc
}

// testStoredObjectDamaged flips a byte of a stored archive on disk: the
// storage layer's checksum catches it.
func testStoredObjectDamaged(t *testing.T, env *testEnv, doc catalog.Backup) {
	require.NotEmpty(t, doc.ID, "the zstd backup failed")
	p := filepath.Join(env.main.root, catalog.BackupPrefix(testCluster, doc.ID), "base.tar.zst")
	testenv.FlipByte(t, p, -1)

	rep, err := Verify(t.Context(), env.main.b, testCluster, doc, nil)
	require.ErrorIs(t, err, ErrVerifyFailed)
	t.Logf("Verify: %v", err)
	// The damage comes first. Files inside that decompressed before the
	// damage stopped the decompressor may follow, all in base.tar.zst;
	// files it never reached are not reported missing.
	require.NotEmpty(t, rep.Problems)
	assert.True(t, strings.HasPrefix(rep.Problems[0], "base.tar.zst: storage: checksum mismatch for "), rep.Problems[0])
	for _, p := range rep.Problems {
		assert.True(t, strings.HasPrefix(p, "base.tar.zst: "), p)
	}
	assert.Contains(t, err.Error(), rep.Problems[0])
}

// testFileInTarDamaged stores a base.tar whose pg_control differs from the
// manifest, with a valid stored checksum. doc's manifest has CRC32C
// checksums.
func testFileInTarDamaged(t *testing.T, env *testEnv, doc catalog.Backup) {
	require.NotEmpty(t, doc.ID, "the uncompressed backup failed")
	ctx := t.Context()
	name := catalog.BackupPrefix(testCluster, doc.ID) + "base.tar"
	orig, err := storage.ReadAll(ctx, env.main.b, name)
	require.NoError(t, err)
	var damaged bytes.Buffer
	tr, tw := tar.NewReader(bytes.NewReader(orig)), tar.NewWriter(&damaged)
	found := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		data, err := io.ReadAll(tr)
		require.NoError(t, err)
		if h.Name == "global/pg_control" {
			data[100] ^= 1
			found = true
		}
		require.NoError(t, tw.WriteHeader(h))
		_, err = tw.Write(data)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.True(t, found, "base.tar has no global/pg_control")
	require.NoError(t, env.main.b.Put(ctx, name, bytes.NewReader(damaged.Bytes()), storage.PutOptions{}))

	// With backup.json updated to the new object, only the file is wrong.
	info, err := env.main.b.Stat(ctx, name)
	require.NoError(t, err)
	updated := doc
	updated.Files = append([]catalog.BackupFile(nil), doc.Files...)
	for i, f := range updated.Files {
		if f.Name == "base.tar" {
			updated.Files[i].Checksum, updated.Files[i].StoredBytes, updated.Files[i].Bytes = info.Checksum, info.Size, info.Size
		}
	}
	rep, err := Verify(ctx, env.main.b, testCluster, updated, nil)
	require.ErrorIs(t, err, ErrVerifyFailed)
	t.Logf("Verify: %v", err)
	require.Len(t, rep.Problems, 1, "%q", rep.Problems)
	assert.True(t, strings.HasPrefix(rep.Problems[0], "base.tar: global/pg_control: checksum mismatch: crc32c "), rep.Problems[0])
	assert.Greater(t, rep.Files, 500, "the other files were checked")

	// Against the original backup.json the object itself is reported first.
	rep, err = Verify(ctx, env.main.b, testCluster, doc, nil)
	require.ErrorIs(t, err, ErrVerifyFailed)
	require.Len(t, rep.Problems, 2, "%q", rep.Problems)
	assert.True(t, strings.HasPrefix(rep.Problems[0], "base.tar: stored object ("), rep.Problems[0])
	assert.Contains(t, rep.Problems[0], "is not the one backup.json lists")
	assert.True(t, strings.HasPrefix(rep.Problems[1], "base.tar: global/pg_control: checksum mismatch: "), rep.Problems[1])
}

// failedBackup asserts that Take failed and recorded why, and returns the
// stored document.
func failedBackup(t *testing.T, b storage.Backend, doc catalog.Backup, err error, reason string) catalog.Backup {
	t.Helper()
	require.Error(t, err)
	require.NotEmpty(t, doc.ID, "the backup was not even created: %v", err)
	assert.Contains(t, err.Error(), "backup "+doc.ID+": ")
	stored, rerr := catalog.ReadBackup(context.WithoutCancel(t.Context()), b, testCluster, doc.ID)
	require.NoError(t, rerr)
	assert.Equal(t, catalog.StatusFailed, stored.Status)
	assert.Contains(t, stored.Error, reason)
	assert.Equal(t, catalog.StatusFailed, doc.Status)
	assert.Equal(t, stored.Error, doc.Error)
	return stored
}

func testWALNotArchived(t *testing.T, env *testEnv) {
	conn := env.replConn(t)
	doc, err := Take(t.Context(), conn, Options{Backend: env.noWAL.b, Cluster: testCluster, Compression: "none", Fast: true})
	require.ErrorIs(t, err, ErrWALMissing)
	t.Logf("Take: %v", err)
	stored := failedBackup(t, env.noWAL.b, doc, err, "WAL needed by the backup is not in the archive: missing 0000000100000000000000")
	// The data is complete; only the WAL is missing.
	assert.NotEmpty(t, stored.StopLSN)
	assert.Len(t, stored.Files, 3)
}

func testWALTimeout(t *testing.T, env *testEnv) {
	conn := env.replConn(t)
	doc, err := Take(t.Context(), conn, Options{
		Backend: env.noWAL.b, Cluster: testCluster, Compression: "lz4", Fast: true,
		WaitWAL: func(ctx context.Context, _ basebackup.Position) error {
			<-ctx.Done()
			return ctx.Err()
		},
		WALTimeout: 300 * time.Millisecond,
	})
	require.ErrorIs(t, err, ErrWALMissing)
	t.Logf("Take: %v", err)
	stored := failedBackup(t, env.noWAL.b, doc, err, "was not archived within 300ms")
	// The archives themselves are complete: they verify (and lz4 reads back).
	require.Len(t, stored.Files, 3)
	rep, err := Verify(t.Context(), env.noWAL.b, testCluster, stored, nil)
	require.NoError(t, err)
	assert.Empty(t, rep.Problems)
}

// testCancelled cancels a throttled backup once the first MiB is through.
func testCancelled(t *testing.T, env *testEnv, alg string) {
	conn := env.replConn(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var cancelled time.Time
	doc, err := Take(ctx, conn, Options{
		Backend: env.main.b, Cluster: testCluster, Compression: alg, Fast: true,
		MaxRate: 4096, // kB/s: the whole backup would take several seconds
		WaitWAL: env.wal.wait,
		OnProgress: func(done, total int64) {
			if cancelled.IsZero() {
				cancelled = time.Now()
				cancel()
			}
		},
	})
	require.False(t, cancelled.IsZero(), "no progress was reported: %v", err)
	t.Logf("Take returned %s after the cancellation: %v", time.Since(cancelled), err)
	require.ErrorIs(t, err, context.Canceled)
	stored := failedBackup(t, env.main.b, doc, err, "context canceled")
	assert.Less(t, time.Since(cancelled), 5*time.Second)

	// Nothing but complete archives was stored, and each is listed.
	objs, err := env.main.b.List(t.Context(), catalog.BackupPrefix(testCluster, doc.ID))
	require.NoError(t, err)
	listed := map[string]bool{catalog.BackupObject(testCluster, doc.ID): true}
	for _, f := range stored.Files {
		assert.False(t, strings.HasPrefix(f.Name, "base.tar"), "base.tar cannot be complete")
		listed[catalog.BackupPrefix(testCluster, doc.ID)+f.Name] = true
	}
	for _, o := range objs {
		assert.True(t, listed[o.Name], "%s is stored but not listed", o.Name)
	}
}
