package basebackup

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

var update = flag.Bool("update", false, "rewrite testdata/*.copydata from the backups the tests take")

// dirConsumer writes archives and the manifest as files into dir.
type dirConsumer struct {
	dir string

	mu       sync.Mutex
	start    *Position
	plan     []Tablespace
	planned  int
	progress []int64
	files    []*fileWriter
	// onWrite, when set, runs before every write.
	onWrite func()
}

func (c *dirConsumer) Begin(start Position) error {
	if c.start != nil {
		return errors.New("Begin called twice")
	}
	c.start = &start
	return nil
}

func (c *dirConsumer) Plan(ts []Tablespace) error {
	if c.start == nil {
		return errors.New("Plan before Begin")
	}
	c.plan = append([]Tablespace(nil), ts...)
	c.planned++
	return nil
}

func (c *dirConsumer) NewArchive(name, location string) (io.WriteCloser, error) {
	if c.start == nil {
		return nil, errors.New("NewArchive before Begin")
	}
	if c.planned == 0 {
		return nil, errors.New("NewArchive before Plan")
	}
	return c.create(name)
}

func (c *dirConsumer) Manifest() (io.WriteCloser, error) { return c.create("backup_manifest") }

func (c *dirConsumer) Progress(done int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.progress = append(c.progress, done)
}

func (c *dirConsumer) create(name string) (*fileWriter, error) {
	f, err := os.Create(filepath.Join(c.dir, name))
	if err != nil {
		return nil, err
	}
	w := &fileWriter{f: f, c: c}
	c.files = append(c.files, w)
	return w, nil
}

type fileWriter struct {
	f       *os.File
	c       *dirConsumer
	closed  int
	aborted error
}

func (w *fileWriter) Write(p []byte) (int, error) {
	if w.c.onWrite != nil {
		w.c.onWrite()
	}
	return w.f.Write(p)
}

func (w *fileWriter) Close() error {
	w.closed++
	return w.f.Close()
}

func (w *fileWriter) Abort(err error) { w.aborted = err }

// capture records CopyData payloads in a form small enough for testdata:
// archive and manifest data messages are truncated and only the first few
// of each section are kept.
type capture struct {
	msgs    [][]byte
	section int
}

func (c *capture) tap(msg []byte) {
	if len(msg) > 0 && msg[0] == 'd' {
		if c.section >= 3 {
			return
		}
		c.section++
		msg = msg[:min(len(msg), 24)]
	} else {
		c.section = 0
	}
	c.msgs = append(c.msgs, append([]byte{}, msg...))
}

func (c *capture) save(t *testing.T, name string) {
	t.Helper()
	if !*update {
		return
	}
	require.NoError(t, os.WriteFile(filepath.Join("testdata", name), encodeMessages(c.msgs), 0o644))
}

type testCluster struct {
	node    *testenv.Node
	tsOID   uint32
	tsDir   string
	cluster *testenv.Cluster
}

func newTestCluster(t *testing.T) *testCluster {
	t.Helper()
	cluster := testenv.NewCluster(t, testenv.ClusterOptions{})
	node := cluster.Primary()
	tsDir := filepath.Join(t.TempDir(), "ts1")
	require.NoError(t, os.Mkdir(tsDir, 0o700))
	testenv.PGOwn(t, tsDir)
	ctx := t.Context()
	require.NoError(t, node.Exec(ctx, fmt.Sprintf("CREATE TABLESPACE ts1 LOCATION '%s'", tsDir)))
	require.NoError(t, node.Exec(ctx, "CREATE TABLE busy (id bigserial PRIMARY KEY, payload text) TABLESPACE ts1"))
	require.NoError(t, node.Exec(ctx, "INSERT INTO busy (payload) SELECT repeat('x', 200) FROM generate_series(1, 2000)"))
	oid, err := node.QueryInt64(ctx, "SELECT oid::bigint FROM pg_tablespace WHERE spcname = 'ts1'")
	require.NoError(t, err)
	return &testCluster{node: node, tsOID: uint32(oid), tsDir: tsDir, cluster: cluster}
}

func (tc *testCluster) replConn(t *testing.T) *pgconn.PgConn {
	t.Helper()
	conn, err := pgconn.Connect(t.Context(), tc.node.ReplConnString())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// TestRun takes real base backups from PostgreSQL 15; the subtests share
// one cluster to keep the run short.
func TestRun(t *testing.T) {
	tc := newTestCluster(t)
	t.Run("VerifiedBackupDuringWrites", func(t *testing.T) { testVerifiedBackup(t, tc) })
	t.Run("NoManifestWithTablespaceMap", func(t *testing.T) { testTablespaceMap(t, tc) })
	t.Run("ServerError", func(t *testing.T) { testServerError(t, tc) })
	t.Run("Cancel", func(t *testing.T) { testCancel(t, tc) })
	t.Run("ConsumerError", func(t *testing.T) { testConsumerError(t, tc) })
	t.Run("ConnectReadsLargeBuffers", func(t *testing.T) { testConnectReads(t, tc) })
}

// readSizes is a net.Conn that records how many bytes each Read offers
// to the kernel.
type readSizes struct {
	net.Conn
	mu    sync.Mutex
	sizes []int
}

func (c *readSizes) Read(p []byte) (int, error) {
	c.mu.Lock()
	c.sizes = append(c.sizes, len(p))
	c.mu.Unlock()
	return c.Conn.Read(p)
}

// testConnectReads takes a backup over a connection made by Connect and
// checks that every read of the socket offered readBufferSize bytes or
// more: pgx alone reads 8 KiB at a time, which took a read(2) per 8 KiB
// of backup (issue 21).
func testConnectReads(t *testing.T, tc *testCluster) {
	ctx := t.Context()
	cfg, err := pgconn.ParseConfig(tc.node.ReplConnString())
	require.NoError(t, err)
	var rec *readSizes
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		rec = &readSizes{Conn: c}
		return rec, nil
	}
	conn, err := connectConfig(ctx, cfg)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	require.NotNil(t, rec)
	rec.mu.Lock()
	rec.sizes = nil // the start-up exchange
	rec.mu.Unlock()
	c := &dirConsumer{dir: t.TempDir()}
	res, err := Run(ctx, conn, Options{Fast: true, Manifest: true}, c)
	require.NoError(t, err)
	var total int64
	for _, a := range res.Archives {
		total += a.Bytes
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	small := 0
	for _, n := range rec.sizes {
		if n < readBufferSize {
			small++
		}
	}
	t.Logf("%d bytes of archives in %d reads", total, len(rec.sizes))
	assert.Zero(t, small, "reads offering less than %d bytes, of %d", readBufferSize, len(rec.sizes))
}

func testVerifiedBackup(t *testing.T, tc *testCluster) {
	ctx := t.Context()
	conn := tc.replConn(t)
	out := t.TempDir()
	c := &dirConsumer{dir: out}
	var capt capture

	// Writes into the tablespace run for the whole backup.
	writeCtx, stopWrites := context.WithCancel(ctx)
	var g errgroup.Group
	var inserts int
	g.Go(func() error {
		db, err := tc.node.Connect(writeCtx)
		if err != nil {
			return err
		}
		defer db.Close(context.Background())
		for writeCtx.Err() == nil {
			_, err := db.Exec(writeCtx, "INSERT INTO busy (payload) SELECT repeat('y', 200) FROM generate_series(1, 50)")
			if err != nil && writeCtx.Err() == nil {
				return err
			}
			inserts++
		}
		return nil
	})

	start := time.Now()
	res, err := run(ctx, conn, Options{Label: "barnacle test", Fast: true, Manifest: true, Progress: true}, c, capt.tap)
	stopWrites()
	require.NoError(t, g.Wait())
	require.NoError(t, err)
	t.Logf("backup took %s, %d insert batches ran meanwhile, %d progress reports", time.Since(start), inserts, len(c.progress))
	capt.save(t, "pg15-manifest-progress.copydata")

	// Result.
	assert.Equal(t, 15, res.ServerVersion)
	assert.Equal(t, wal.Timeline(1), res.Start.Timeline)
	assert.Equal(t, wal.Timeline(1), res.Stop.Timeline)
	assert.GreaterOrEqual(t, res.Stop.LSN, res.Start.LSN)
	require.NotNil(t, c.start)
	assert.Equal(t, res.Start, *c.start)
	tsName := strconv.FormatUint(uint64(tc.tsOID), 10) + ".tar"
	require.Len(t, res.Tablespaces, 2)
	assert.Equal(t, Tablespace{OID: tc.tsOID, Location: tc.tsDir, Size: res.Tablespaces[0].Size}, res.Tablespaces[0])
	assert.Positive(t, res.Tablespaces[0].Size)
	assert.Equal(t, uint32(0), res.Tablespaces[1].OID)
	assert.Positive(t, res.Tablespaces[1].Size)
	assert.Equal(t, 1, c.planned)
	assert.Equal(t, res.Tablespaces, c.plan)
	var names []string
	var total int64
	for _, a := range res.Archives {
		names = append(names, a.Name)
		st, err := os.Stat(filepath.Join(out, a.Name))
		require.NoError(t, err)
		assert.Equal(t, st.Size(), a.Bytes, a.Name)
		total += a.Bytes
	}
	assert.ElementsMatch(t, []string{"base.tar", tsName}, names)
	st, err := os.Stat(filepath.Join(out, "backup_manifest"))
	require.NoError(t, err)
	assert.Equal(t, st.Size(), res.ManifestBytes)
	for _, f := range c.files {
		assert.Equal(t, 1, f.closed)
		assert.NoError(t, f.aborted)
	}

	// The server's estimate, taken before it sent anything, is close to
	// what it sent (the inserts meanwhile add little).
	est := EstimatedBytes(res.Tablespaces)
	assert.InEpsilon(t, total, est, 0.1, "estimate %d bytes, sent %d", est, total)

	// Progress reports never decrease and end at the archives' total.
	// The server reports at least at the end of every archive, and about
	// once a second within one.
	require.GreaterOrEqual(t, len(c.progress), len(res.Archives))
	for i := 1; i < len(c.progress); i++ {
		assert.GreaterOrEqual(t, c.progress[i], c.progress[i-1])
	}
	assert.Equal(t, total, c.progress[len(c.progress)-1])

	// The manifest's WAL range is the result's.
	var manifest struct {
		WALRanges []struct {
			Timeline int    `json:"Timeline"`
			StartLSN string `json:"Start-LSN"`
			EndLSN   string `json:"End-LSN"`
		} `json:"WAL-Ranges"`
	}
	b, err := os.ReadFile(filepath.Join(out, "backup_manifest"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &manifest))
	require.Len(t, manifest.WALRanges, 1)
	assert.Equal(t, 1, manifest.WALRanges[0].Timeline)
	assert.Equal(t, res.Start.LSN.String(), manifest.WALRanges[0].StartLSN)
	assert.Equal(t, res.Stop.LSN.String(), manifest.WALRanges[0].EndLSN)

	// Lay the backup out as pg_basebackup -Fp would and verify it.
	restore := t.TempDir()
	dataDir := filepath.Join(restore, "data")
	tsDir := filepath.Join(restore, "ts")
	extractTar(t, filepath.Join(out, "base.tar"), dataDir)
	extractTar(t, filepath.Join(out, tsName), tsDir)
	link := filepath.Join(dataDir, "pg_tblspc", strconv.FormatUint(uint64(tc.tsOID), 10))
	target, err := os.Readlink(link)
	require.NoError(t, err, "base.tar has no pg_tblspc link")
	assert.Equal(t, tc.tsDir, target)
	require.NoError(t, os.Remove(link))
	require.NoError(t, os.Symlink(tsDir, link))
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, "backup_manifest"), b, 0o600))
	testenv.PGOwn(t, restore)
	cmdOut, err := testenv.PGCommand(ctx, t, "pg_verifybackup", "-n", dataDir).CombinedOutput()
	require.NoError(t, err, "pg_verifybackup: %s", cmdOut)
	t.Logf("pg_verifybackup: %s", strings.TrimSpace(string(cmdOut)))

	// The connection is idle and usable.
	_, err = conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	require.NoError(t, err)
}

func testTablespaceMap(t *testing.T, tc *testCluster) {
	ctx := t.Context()
	conn := tc.replConn(t)
	out := t.TempDir()
	c := &dirConsumer{dir: out}
	var capt capture
	res, err := run(ctx, conn, Options{Fast: true, TablespaceMap: true}, c, capt.tap)
	require.NoError(t, err)
	capt.save(t, "pg15-no-manifest.copydata")
	assert.Zero(t, res.ManifestBytes)
	require.Len(t, res.Archives, 2)
	for _, ts := range res.Tablespaces {
		assert.Equal(t, int64(-1), ts.Size, "size without PROGRESS")
	}
	assert.Equal(t, int64(-1), EstimatedBytes(res.Tablespaces))
	_, err = os.Stat(filepath.Join(out, "backup_manifest"))
	assert.ErrorIs(t, err, os.ErrNotExist)
	// With TABLESPACE_MAP the link is described in a file, not archived.
	dataDir := filepath.Join(t.TempDir(), "data")
	extractTar(t, filepath.Join(out, "base.tar"), dataDir)
	m, err := os.ReadFile(filepath.Join(dataDir, "tablespace_map"))
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf("%d %s\n", tc.tsOID, tc.tsDir), string(m))
	_, err = os.Lstat(filepath.Join(dataDir, "pg_tblspc", strconv.FormatUint(uint64(tc.tsOID), 10)))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func testServerError(t *testing.T, tc *testCluster) {
	ctx := t.Context()
	conn := tc.replConn(t)
	c := &dirConsumer{dir: t.TempDir()}
	// The server refuses labels of MAXPGPATH bytes or more.
	_, err := Run(ctx, conn, Options{Fast: true, Label: strings.Repeat("l", 2000)}, c)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Contains(t, pgErr.Message, "backup label too long")
	assert.Empty(t, c.files)
	// The server ended the command and the connection is idle.
	_, err = conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	require.NoError(t, err)
}

func testCancel(t *testing.T, tc *testCluster) {
	conn := tc.replConn(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var cancelled time.Time
	c := &dirConsumer{dir: t.TempDir()}
	c.onWrite = func() {
		if cancelled.IsZero() {
			cancelled = time.Now()
			cancel()
		}
	}
	// Throttled to the minimum, the backup would take many minutes.
	_, err := Run(ctx, conn, Options{Fast: true, MaxRate: 32}, c)
	took := time.Since(cancelled)
	require.Error(t, err)
	t.Logf("Run returned %s after the cancellation: %v", took, err)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Less(t, took, 3*time.Second, "Run returned %s after the cancellation", took)
	assert.True(t, conn.IsClosed())
	require.Len(t, c.files, 1)
	assert.Equal(t, 1, c.files[0].closed)
	assert.ErrorIs(t, c.files[0].aborted, context.Canceled)

	waitNoBackup(t, tc)
}

type failingConsumer struct{ dirConsumer }

var errConsumer = errors.New("disk full")

func (c *failingConsumer) NewArchive(name, location string) (io.WriteCloser, error) {
	if name == "base.tar" {
		return nil, errConsumer
	}
	return c.dirConsumer.NewArchive(name, location)
}

func testConsumerError(t *testing.T, tc *testCluster) {
	conn := tc.replConn(t)
	c := &failingConsumer{dirConsumer{dir: t.TempDir()}}
	_, err := Run(t.Context(), conn, Options{Fast: true}, c)
	require.ErrorIs(t, err, errConsumer)
	assert.ErrorContains(t, err, "open archive base.tar: disk full")
	assert.True(t, conn.IsClosed())
	// The tablespace archive came first, was complete and got closed.
	require.Len(t, c.files, 1)
	assert.Equal(t, 1, c.files[0].closed)
	assert.NoError(t, c.files[0].aborted)
	waitNoBackup(t, tc)
}

// waitNoBackup waits until the server runs no base backup.
func waitNoBackup(t *testing.T, tc *testCluster) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := tc.node.QueryInt64(t.Context(), "SELECT count(*) FROM pg_stat_progress_basebackup")
		require.NoError(t, err)
		if n == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "the server still runs the backup")
		time.Sleep(20 * time.Millisecond)
	}
}

// extractTar unpacks a PostgreSQL backup tar into dir.
func extractTar(t *testing.T, path, dir string) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, os.MkdirAll(dir, 0o700))
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		require.NoError(t, err)
		name := filepath.Clean(h.Name)
		require.False(t, filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../"), "unsafe path %q", h.Name)
		target := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			require.NoError(t, os.MkdirAll(target, 0o700))
		case tar.TypeSymlink:
			require.NoError(t, os.Symlink(h.Linkname, target))
		case tar.TypeReg:
			w, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			require.NoError(t, err)
			_, err = io.Copy(w, tr)
			require.NoError(t, err)
			require.NoError(t, w.Close())
			require.NoError(t, os.Chtimes(target, h.ModTime, h.ModTime))
		default:
			t.Fatalf("%s: unexpected tar entry type %q for %s", path, h.Typeflag, h.Name)
		}
	}
}

func TestEstimatedBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		ts   []Tablespace
		want int64
	}{
		{name: "none", want: -1},
		{name: "data directory", ts: []Tablespace{{Size: 4096}}, want: 4096},
		{name: "sum", ts: []Tablespace{{OID: 16384, Location: "/ts", Size: 1024}, {Size: 2048}}, want: 3072},
		{name: "unknown", ts: []Tablespace{{OID: 16384, Location: "/ts", Size: 1024}, {Size: -1}}, want: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, EstimatedBytes(tc.ts))
		})
	}
}
