package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
)

// randomRowsPerPage and randomPayload size the incompressible table's rows
// so that four fill a heap page and stay below the TOAST threshold (2032
// bytes a tuple): 24 bytes of tuple header, an 8-byte id, a 4-byte varlena
// header and 1996 random bytes, so 97% of the table's pages are random.
const (
	randomRowsPerPage = 4
	randomPayload     = 1996
	// randomBatch is the rows one INSERT writes (about 200 MB).
	randomBatch = 100_000
)

// BenchmarkBaseBackup is the base backup benchmark of the issue: one
// database (pgbench at BENCH_SCALE, default 100, about 1.5 GB, plus a
// table of random bytes of about the same size), backed up one tool after
// the other by `barnacle backup --local` (the built binary, as a process)
// with compression none, lz4 and zstd and by pg_basebackup -Ft -X stream
// without compression, with --compress=client-lz4 and with
// --compress=client-zstd:1, each into a fresh directory, each ending with
// its fsync. It prints the rate of each against the same database bytes,
// the output size, the ratios of each barnacle row to the matching
// pg_basebackup row, the peak RSS of each process and the goals.
// BENCH_ROUNDS (default 1) repeats the series and keeps each tool's
// fastest run. Run it once:
//
//	go test -run '^$' -bench BaseBackup -benchtime 1x -timeout 60m ./test/bench
//
// It ignores b.N: one run takes minutes at full size.
func BenchmarkBaseBackup(b *testing.B) {
	scale := envInt(b, "BENCH_SCALE", 100)
	rounds := envInt(b, "BENCH_ROUNDS", 1)
	ctx := b.Context()
	start := time.Now()
	bin := buildBarnacle(b)
	c, node, root, dbSize, pgbenchBytes := benchDatabase(b, scale, start)
	pw := filepath.Join(root, "password")
	if err := os.WriteFile(pw, []byte(c.ReplPassword()), 0o600); err != nil {
		b.Fatal(err)
	}

	best := map[string]bbResult{}
	var rep bbReport
	for round := range rounds {
		for _, tool := range bbTools {
			dir := filepath.Join(root, strings.NewReplacer(" ", "_", ":", "", "-", "").Replace(tool.Name))
			prepareRun(ctx, b, node, tool)
			var res bbResult
			var dataBytes int64
			if tool.Barnacle {
				res = runBarnacle(ctx, b, bin, node, dir, pw, tool)
			} else {
				res, dataBytes = runPGBaseBackup(ctx, b, node, dir, tool)
			}
			if rep.DBBytes == 0 {
				rep.DBBytes = dataBytes // the first run is uncompressed pg_basebackup
			}
			rep.Rounds.add(round, tool.Name, res.Elapsed)
			progress("round %d: %s: %.1f s, %.0f MB/s, output %.0f MB, peak RSS %.1f MB", round+1, tool.Name,
				res.Elapsed.Seconds(), float64(rep.DBBytes)/mb/res.Elapsed.Seconds(), float64(res.OutputBytes)/mb, float64(res.MaxRSS)/mb)
			if err := os.RemoveAll(dir); err != nil {
				b.Fatal(err)
			}
			if prev, ok := best[tool.Name]; ok {
				res.MaxRSS = max(res.MaxRSS, prev.MaxRSS)
				if prev.Elapsed < res.Elapsed {
					res.Elapsed, res.OutputBytes = prev.Elapsed, prev.OutputBytes
				}
			}
			best[tool.Name] = res
		}
	}
	for _, tool := range bbTools {
		rep.Results = append(rep.Results, best[tool.Name])
	}

	var out bytes.Buffer
	fmt.Fprintf(&out, "\nBase backup: pgbench scale %d plus %.0f MB of random bytes, %.0f MB on disk; %d round(s), fastest of each kept (%s in all)\n",
		scale, float64(dbSize-pgbenchBytes)/mb, float64(dbSize)/mb, rounds, time.Since(start).Round(time.Second))
	rep.write(&out)
	fmt.Print(out.String())
	for _, res := range rep.Results {
		id := strings.NewReplacer(" ", "_", ":", "", "-", "").Replace(res.Tool.Name)
		b.ReportMetric(rep.rate(res)/mb, id+"_MB/s")
		b.ReportMetric(float64(res.MaxRSS)/mb, id+"_RSS_MB")
	}
}

// buildBarnacle builds the binary the way users get it (no race detector)
// into a temporary directory, or returns BENCH_BARNACLE, a binary built
// beforehand.
func buildBarnacle(b *testing.B) string {
	b.Helper()
	if bin := os.Getenv("BENCH_BARNACLE"); bin != "" {
		return bin
	}
	bin := filepath.Join(b.TempDir(), "barnacle")
	_, self, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/barnacle")
	cmd.Dir = filepath.Join(filepath.Dir(self), "..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build barnacle: %v\n%s", err, out)
	}
	return bin
}

// fillRandom creates random_bytes, of about size bytes of random rows
// (pgcrypto's gen_random_bytes: no compressor finds anything in it), with
// one writer per core.
func fillRandom(ctx context.Context, b *testing.B, node *testenv.Node, size int64) {
	b.Helper()
	// STORAGE EXTERNAL: PostgreSQL does not even try to compress the
	// values (they stay inline, below the TOAST threshold, anyway).
	if err := node.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pgcrypto;
		CREATE TABLE random_bytes (id bigint, payload bytea);
		ALTER TABLE random_bytes ALTER COLUMN payload SET STORAGE EXTERNAL`); err != nil {
		b.Fatalf("create random_bytes: %v", err)
	}
	rows := size / (8192 / randomRowsPerPage)
	insert := fmt.Sprintf("INSERT INTO random_bytes SELECT g, gen_random_bytes(1024) || gen_random_bytes(%d) FROM generate_series($1::bigint, $2::bigint) g",
		randomPayload-1024)
	var g errgroup.Group
	next := make(chan int64)
	go func() {
		defer close(next)
		for first := int64(1); first <= rows; first += randomBatch {
			select {
			case next <- first:
			case <-ctx.Done():
				return
			}
		}
	}()
	for range runtime.NumCPU() {
		g.Go(func() error {
			conn, err := node.Connect(ctx)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(ctx))
			for first := range next {
				if _, err := conn.Exec(ctx, insert, first, min(first+randomBatch-1, rows)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		for range next { // let the feeder end
		}
		b.Fatalf("fill random_bytes: %v", err)
	}
}

// checkIncompressible compresses the first 64 MB of random_bytes' heap
// file as barnacle does (zstd, fastest level) and returns the fraction
// left; the benchmark stops if the table is not close to incompressible.
func checkIncompressible(ctx context.Context, b *testing.B, node *testenv.Node) float64 {
	b.Helper()
	path, err := node.QueryString(ctx, "SELECT current_setting('data_directory') || '/' || pg_relation_filepath('random_bytes')")
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatalf("read random_bytes: %v", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 64*mb))
	if err != nil {
		b.Fatal(err)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		b.Fatal(err)
	}
	kept := float64(len(enc.EncodeAll(data, nil))) / float64(len(data))
	if kept < 0.9 {
		b.Fatalf("random_bytes compresses to %.1f%% with zstd: not incompressible", 100*kept)
	}
	return kept
}

// prepareRun gives each run the same start: the previous run's writes on
// disk and no checkpoint pending. For barnacle it also makes its slot anew,
// reserving WAL from now: pg_basebackup -X stream streams from the
// backup's start, and so, with a slot reserved just before, does barnacle
// (its receiver never races the backup's checkpoint for the start of the
// WAL, and no WAL of earlier runs is streamed again).
func prepareRun(ctx context.Context, b *testing.B, node *testenv.Node, tool bbTool) {
	b.Helper()
	syscall.Sync()
	if err := node.Exec(ctx, "CHECKPOINT"); err != nil {
		b.Fatalf("checkpoint: %v", err)
	}
	if !tool.Barnacle {
		return
	}
	dropSlot(ctx, b, node, "barnacle")
	if err := node.Exec(ctx, "SELECT pg_create_physical_replication_slot('barnacle', true)"); err != nil {
		b.Fatalf("create slot: %v", err)
	}
}

// benchManifestChecksums is the manifest checksum algorithm both tools ask
// the server for. It is the default of both, named so that a change of
// either default cannot make the comparison unequal: the server computes
// it over every byte, and SHA256 costs it about 0.6 s more CPU per GB.
const benchManifestChecksums = "crc32c"

// runPGBaseBackup runs pg_basebackup -Ft -X stream into dir and returns
// the result and the size of its uncompressed data archives (0 when
// compressed).
func runPGBaseBackup(ctx context.Context, b *testing.B, node *testenv.Node, dir string, tool bbTool) (bbResult, int64) {
	b.Helper()
	args := []string{"-h", node.Host, "-p", strconv.Itoa(node.Port), "-U", node.ReplUser, "-w",
		"-Ft", "-X", "stream", "-c", "fast", "--manifest-checksums=" + benchManifestChecksums, "-D", dir}
	if tool.Compression != "" {
		args = append(args, "--compress="+tool.Compression)
	}
	cmd := testenv.PGCommand(ctx, b, "pg_basebackup", args...)
	cmd.Env = append(cmd.Env, "PGPASSWORD="+node.ReplPassword)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	elapsed, rss, err := runMeasured(cmd)
	if err != nil {
		b.Fatalf("%s: %v\n%s", tool.Name, err, out.String())
	}
	res := bbResult{Tool: tool, Elapsed: elapsed, OutputBytes: dirSize(b, dir), MaxRSS: rss}
	var data int64
	if tool.Compression == "" {
		entries, err := os.ReadDir(dir)
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".tar") && e.Name() != "pg_wal.tar" {
				info, err := e.Info()
				if err != nil {
					b.Fatal(err)
				}
				data += info.Size()
			}
		}
	}
	return res, data
}

// runBarnacle runs `barnacle backup --local` into a fresh file:// archive
// in dir.
func runBarnacle(ctx context.Context, b *testing.B, bin string, node *testenv.Node, dir, pw string, tool bbTool) bbResult {
	b.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, "backup", "--local", "--fast", "--json",
		"--cluster-name", "bench", "--archive-url", "file://"+dir,
		"--pg-host", node.Host, "--pg-port", strconv.Itoa(node.Port), "--pg-user", node.ReplUser, "--pg-password-file", pw,
		"--compression", tool.Compression, "--manifest-checksums", benchManifestChecksums)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BARNACLE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	elapsed, rss, err := runMeasured(cmd)
	if err != nil {
		b.Fatalf("%s: %v\n%s%s", tool.Name, err, stdout.String(), tail(stderr.String(), 30))
	}
	var doc catalog.Backup
	if err := json.Unmarshal(stdout.Bytes(), &doc); err != nil {
		b.Fatalf("%s: read its document: %v\n%s", tool.Name, err, stdout.String())
	}
	if doc.Status != catalog.StatusDone {
		b.Fatalf("%s: backup %s is %s: %s", tool.Name, doc.ID, doc.Status, doc.Error)
	}
	return bbResult{Tool: tool, Elapsed: elapsed, OutputBytes: dirSize(b, dir), MaxRSS: rss}
}

// rssInterval is how often watchRSS reads a process's high-water mark.
const rssInterval = 20 * time.Millisecond

// rssWatch follows a running process's peak resident set.
type rssWatch struct {
	stop chan struct{}
	done chan struct{}
	peak int64 // bytes; written by the goroutine, read after done
}

// watchRSS reads /proc/<pid>/status's VmHWM (the peak resident set of the
// process's memory since its exec) every rssInterval until end is called,
// which returns the last value read. The rusage of the finished process is
// no use here: Go starts children with vfork, and the kernel carries the
// parent's high-water mark (this test process, hundreds of MB) into the
// child's ru_maxrss at exec. A peak reached in the process's last
// rssInterval can be missed; a streaming backup reaches its peak early.
func watchRSS(pid int) (end func() int64) {
	w := &rssWatch{stop: make(chan struct{}), done: make(chan struct{})}
	path := fmt.Sprintf("/proc/%d/status", pid)
	go func() {
		defer close(w.done)
		tick := time.NewTicker(rssInterval)
		defer tick.Stop()
		for {
			if v := readVmHWM(path); v > w.peak {
				w.peak = v
			}
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() int64 {
		close(w.stop)
		<-w.done
		return w.peak
	}
}

// readVmHWM returns the VmHWM line of a /proc/<pid>/status file in bytes,
// 0 when the process is gone.
func readVmHWM(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err == nil {
				return kb * 1024
			}
		}
	}
	return 0
}

// runMeasured runs cmd to completion and returns its wall time and peak
// RSS.
func runMeasured(cmd *exec.Cmd) (time.Duration, int64, error) {
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	end := watchRSS(cmd.Process.Pid)
	err := cmd.Wait()
	elapsed := time.Since(began)
	rss := end()
	if measureHook != nil {
		measureHook(cmd, elapsed, rss)
	}
	return elapsed, rss, err
}

// measureHook, when set, sees every command runMeasured ran, once it
// ended: the many-relations benchmark reads its system time.
var measureHook func(cmd *exec.Cmd, elapsed time.Duration, rss int64)

// dirSize adds up the sizes of the regular files under dir.
func dirSize(b *testing.B, dir string) int64 {
	b.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += info.Size()
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		b.Fatal(err)
	}
	return total
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// benchDatabase starts the benchmarks' one database: pgbench at scale plus
// a table of random, incompressible bytes of the same size, vacuumed and
// checkpointed, with a temporary directory the postgres user can write.
// It returns the cluster, its primary, that directory, the database size
// and the pgbench part of it.
func benchDatabase(b *testing.B, scale int, start time.Time) (*testenv.Cluster, *testenv.Node, string, int64, int64) {
	b.Helper()
	ctx := b.Context()
	c := testenv.NewCluster(b, testenv.ClusterOptions{Params: map[string]string{
		// Loading writes about twice the database in WAL; no checkpoint
		// should interrupt it, and the one after it writes everything once.
		"shared_buffers":     "'256MB'",
		"max_wal_size":       "'16GB'",
		"checkpoint_timeout": "'30min'",
	}})
	node := c.Primary()
	root := b.TempDir()
	testenv.PGOwn(b, root)

	progress("pgbench -i -s %d", scale)
	if out, err := pgbench(ctx, b, node, "-i", "-s", strconv.Itoa(scale), "-I", "dtGvp", "-q"); err != nil {
		b.Fatalf("pgbench init: %v\n%s", err, out)
	}
	pgbenchBytes, err := node.QueryInt64(ctx, "SELECT pg_database_size('postgres')")
	if err != nil {
		b.Fatal(err)
	}
	progress("pgbench database: %.0f MB in %s; filling a table of random bytes of the same size",
		float64(pgbenchBytes)/mb, time.Since(start).Round(time.Second))
	fillRandom(ctx, b, node, pgbenchBytes)
	for _, sql := range []string{"VACUUM (ANALYZE) random_bytes", "CHECKPOINT"} {
		if err := node.Exec(ctx, sql); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	dbSize, err := node.QueryInt64(ctx, "SELECT pg_database_size('postgres')")
	if err != nil {
		b.Fatal(err)
	}
	kept := checkIncompressible(ctx, b, node)
	progress("database: %.0f MB, loaded in %s; zstd keeps %.1f%% of the random table", float64(dbSize)/mb,
		time.Since(start).Round(time.Second), 100*kept)

	return c, node, root, dbSize, pgbenchBytes
}
