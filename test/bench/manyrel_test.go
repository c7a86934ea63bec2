package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/retention"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// BenchmarkManyRelations is the benchmark of issue 21: a cluster of
// BENCH_RELATIONS small tables (default 20,000; each a heap, its free
// space and visibility maps, a primary key, a TOAST table and its index:
// six files, so 120,000 files at the default), backed up by pg_basebackup
// -Ft --compress=client-zstd:1 and `barnacle backup --local --compression
// zstd`, then restored by `zstd -d | tar -x` followed by `sync -f` and by
// `barnacle restore`, BENCH_ROUNDS times (default 3), each restore into a
// fresh directory, the order turned every round (see the restore loop).
// Each run prints its wall time, system time (the process and the
// children it waited for) and peak RSS; the summary gives each one's
// median and range, and barnacle's speed-up over the comparison run of
// the same round. BENCH_BARNACLE_ALT adds restores by another binary, to
// compare a change with the code before it in the same period.
//
// Then the catalog at BENCH_SEGMENTS_ARCHIVED archived segments (default
// 100,000; small zstd objects written straight into a file:// archive):
// the listing, the index, a lookup of every segment, the retention plan,
// and `barnacle wal-fetch` of one segment, each timed.
//
//	go test -run '^$' -bench ManyRelations -benchtime 1x -timeout 90m ./test/bench
//
// It ignores b.N.
func BenchmarkManyRelations(b *testing.B) {
	relations := envInt(b, "BENCH_RELATIONS", 20000)
	rounds := envInt(b, "BENCH_ROUNDS", 3)
	segments := envInt(b, "BENCH_SEGMENTS_ARCHIVED", 100000)
	ctx := b.Context()
	start := time.Now()
	bin := buildBarnacle(b)
	alt := os.Getenv("BENCH_BARNACLE_ALT")

	c := testenv.NewCluster(b, testenv.ClusterOptions{Params: map[string]string{
		"max_locks_per_transaction": "1024",
		"max_wal_size":              "'16GB'",
		"checkpoint_timeout":        "'30min'",
	}})
	node := c.Primary()
	root := b.TempDir()
	testenv.PGOwn(b, root)
	progress("creating %d tables", relations)
	// One transaction per 1,000 tables: a lock per table is held to the
	// commit.
	create := fmt.Sprintf(`DO $$ BEGIN FOR i IN 1..%d LOOP
		EXECUTE format('CREATE TABLE rel_%%s (id int PRIMARY KEY, v text); INSERT INTO rel_%%s SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20) g', i, i);
		IF i %% 1000 = 0 THEN COMMIT; END IF; END LOOP; END $$`, relations)
	for _, sql := range []string{create, "VACUUM", "CHECKPOINT"} {
		if err := node.Exec(ctx, sql); err != nil {
			b.Fatalf("%.40s: %v", sql, err)
		}
	}
	dbSize, err := node.QueryInt64(ctx, "SELECT sum(pg_database_size(oid))::bigint FROM pg_database")
	if err != nil {
		b.Fatal(err)
	}
	files := countFiles(b, node.DataDir)
	progress("%d tables, %d files, %.0f MB, in %s", relations, files, float64(dbSize)/mb, time.Since(start).Round(time.Second))
	pw := filepath.Join(root, "password")
	if err := os.WriteFile(pw, []byte(c.ReplPassword()), 0o600); err != nil {
		b.Fatal(err)
	}

	var runs []mrRun
	pgDir, archive := "", ""
	for round := range rounds {
		pgDir = filepath.Join(root, "pgbb-"+strconv.Itoa(round))
		prepareRun(ctx, b, node, bbTool{})
		res, _ := runPGBaseBackup(ctx, b, node, pgDir, bbTool{Name: "pg_basebackup", Compression: "client-zstd:1"})
		runs = append(runs, mrRun{round: round, op: "backup", tool: "pg_basebackup -Ft client-zstd:1", elapsed: res.Elapsed, rss: res.MaxRSS, sys: lastSys})
		archive = filepath.Join(root, "archive-"+strconv.Itoa(round))
		if err := os.Mkdir(archive, 0o700); err != nil {
			b.Fatal(err)
		}
		prepareRun(ctx, b, node, bbTool{Barnacle: true})
		br := barnacleBackup(ctx, b, bin, node, "file://"+archive, pw, "zstd", nil)
		runs = append(runs, mrRun{round: round, op: "backup", tool: "barnacle zstd", elapsed: br.Elapsed, rss: br.MaxRSS, sys: lastSys})
		progress("round %d: backup: pg_basebackup %.1f s, barnacle %.1f s (peak RSS %.0f MB)", round+1,
			res.Elapsed.Seconds(), br.Elapsed.Seconds(), float64(br.MaxRSS)/mb)
		if round < rounds-1 {
			_ = os.RemoveAll(pgDir)
			_ = os.RemoveAll(archive)
		}
	}
	dropSlot(ctx, b, node, "barnacle")
	if err := node.Stop(); err != nil {
		b.Fatal(err)
	}

	type restorer struct{ name, bin string }
	tools := []restorer{{"zstd -d | tar -x; sync -f", ""}, {"barnacle restore", bin}}
	if alt != "" {
		tools = append(tools, restorer{"barnacle restore (alt)", alt})
	}
	// Every restore goes into a directory of its own, nothing restored is
	// deleted before the last one ran, and the order turns every round:
	// ext4 without a journal (these machines' root filesystem) does not
	// reuse an inode freed in the last minute, or five more while its
	// inode table block is dirty, and reads each candidate's block to
	// know, so creating 100,000 files within minutes of deleting 100,000
	// cost 2-5x the system time, whichever tool ran into it.
	need := int64(rounds*len(tools)) * dbSize * 11 / 10
	if free := freeBytes(b, root); free < need {
		b.Fatalf("%s has %.1f GB free; %d rounds of %d restores of %.1f GB need %.1f GB: lower BENCH_ROUNDS or BENCH_RELATIONS",
			root, float64(free)/1e9, rounds, len(tools), float64(dbSize)/1e9, float64(need)/1e9)
	}
	for round := range rounds {
		for j := range tools {
			i := (j + round) % len(tools)
			t := tools[i]
			dest := filepath.Join(root, fmt.Sprintf("restored-%d-%d", round, i))
			var run mrRun
			if t.bin == "" {
				run = mrShell(ctx, b, dest, fmt.Sprintf("zstd -dcq %s | tar -xf - -C %s", filepath.Join(pgDir, "base.tar.zst"), dest))
			} else {
				barnacleRestore(ctx, b, t.bin, "file://"+archive, "latest", dest, nil)
				run = mrRun{elapsed: lastElapsed, rss: lastRSS, sys: lastSys}
			}
			run.round, run.op, run.tool = round, "restore", t.name
			runs = append(runs, run)
			progress("round %d: restore %s: %.1f s, system %.1f s, peak RSS %.0f MB", round+1, t.name,
				run.elapsed.Seconds(), run.sys.Seconds(), float64(run.rss)/mb)
		}
	}

	var out bytes.Buffer
	fmt.Fprintf(&out, "\nMany relations: %d tables, %d files, %.0f MB; %d round(s) (%s in all); load average at the end: %s\n",
		relations, files, float64(dbSize)/mb, rounds, time.Since(start).Round(time.Second), loadAvg())
	writeManyRel(&out, runs)
	catalogTimes(ctx, b, &out, bin, root, segments)
	fmt.Print(out.String())
}

// mrRun is one timed run of the many-relations benchmark.
type mrRun struct {
	round    int
	op, tool string
	elapsed  time.Duration
	sys      time.Duration
	rss      int64
}

// lastSys, lastElapsed and lastRSS are what runMeasured saw last: the
// shared helpers return only time and RSS.
var (
	lastSys, lastElapsed time.Duration
	lastRSS              int64
)

func init() {
	measureHook = func(cmd *exec.Cmd, elapsed time.Duration, rss int64) {
		lastElapsed, lastRSS = elapsed, rss
		if cmd.ProcessState != nil {
			lastSys = cmd.ProcessState.SystemTime()
		}
	}
}

// freeBytes is what an unprivileged writer may still use on dir's
// filesystem.
func freeBytes(b *testing.B, dir string) int64 {
	b.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		b.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// mrShell runs script (into dest, created first) and `sync -f dest` in one
// bash, measured like the barnacle runs.
func mrShell(ctx context.Context, b *testing.B, dest, script string) mrRun {
	b.Helper()
	if err := os.Mkdir(dest, 0o700); err != nil {
		b.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -euo pipefail; "+script+"; sync -f "+dest)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if _, _, err := runMeasured(cmd); err != nil {
		b.Fatalf("%s: %v\n%s", script, err, out.String())
	}
	return mrRun{elapsed: lastElapsed, rss: lastRSS, sys: lastSys}
}

func countFiles(b *testing.B, dir string) int {
	b.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// writeManyRel prints each tool's median, fastest and slowest time,
// system time and peak RSS per operation, and barnacle's speed-up over
// the comparison run of the same round.
func writeManyRel(w *bytes.Buffer, runs []mrRun) {
	fmt.Fprintf(w, "| operation | tool | time median (min-max) | system time median (min-max) | peak RSS max |\n|---|---|---|---|---|\n")
	type key struct{ op, tool string }
	var order []key
	by := map[key][]mrRun{}
	for _, r := range runs {
		k := key{r.op, r.tool}
		if _, ok := by[k]; !ok {
			order = append(order, k)
		}
		by[k] = append(by[k], r)
	}
	secs := func(rs []mrRun, f func(mrRun) time.Duration) string {
		var v []float64
		for _, r := range rs {
			v = append(v, f(r).Seconds())
		}
		slices.Sort(v)
		return fmt.Sprintf("%.1f s (%.1f-%.1f)", median(v), v[0], v[len(v)-1])
	}
	for _, k := range order {
		rs := by[k]
		var rss int64
		for _, r := range rs {
			rss = max(rss, r.rss)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %.0f MB |\n", k.op, k.tool,
			secs(rs, func(r mrRun) time.Duration { return r.elapsed }),
			secs(rs, func(r mrRun) time.Duration { return r.sys }), float64(rss)/mb)
	}
	for _, k := range order {
		if !strings.HasPrefix(k.tool, "barnacle") {
			continue
		}
		base := key{"backup", "pg_basebackup -Ft client-zstd:1"}
		if k.op == "restore" {
			base = key{"restore", "zstd -d | tar -x; sync -f"}
		}
		var ratios []string
		var v []float64
		for i, r := range by[k] {
			if i < len(by[base]) {
				x := by[base][i].elapsed.Seconds() / r.elapsed.Seconds()
				v = append(v, x)
				ratios = append(ratios, fmt.Sprintf("%.2f", x))
			}
		}
		if len(v) == 0 {
			continue
		}
		s := slices.Clone(v)
		slices.Sort(s)
		fmt.Fprintf(w, "%s %s speed-up over %s per round: %s (median %.2f; goal ≥ 1.0: %s)\n", k.op, k.tool, base.tool,
			strings.Join(ratios, " "), median(s), verdict(median(s) >= 1.0))
	}
}

// catalogTimes builds a file:// archive of n small compressed segments
// (written straight into the backend's layout, with the checksum attribute
// it reads: n Puts would spend minutes on fsyncs) and times what reads it.
func catalogTimes(ctx context.Context, b *testing.B, w *bytes.Buffer, bin, root string, n int) {
	b.Helper()
	const segSize = 16 << 20
	dir := filepath.Join(root, "wal-archive")
	wals := filepath.Join(dir, benchCluster, "wals")
	if err := os.MkdirAll(wals, 0o755); err != nil {
		b.Fatal(err)
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		b.Fatal(err)
	}
	body := enc.EncodeAll(make([]byte, segSize), nil)
	sum := sha256.Sum256(body)
	attr := []byte(hex.EncodeToString(sum[:]))
	began := time.Now()
	names := make([]string, n)
	for i := range n {
		seg := wal.SegmentNo(i + 1)
		names[i] = wal.SegmentFileName(1, seg, segSize) + ".zst"
		p := filepath.Join(wals, names[i])
		if err := os.WriteFile(p, body, 0o644); err != nil {
			b.Fatal(err)
		}
		if err := unix.Setxattr(p, "user.barnacle.sha256", attr, 0); err != nil {
			b.Fatal(err)
		}
	}
	progress("wrote %d segments in %s", n, time.Since(began).Round(time.Second))
	rw, err := backends.Open(ctx, "file://"+dir)
	if err != nil {
		b.Fatal(err)
	}
	// wal-fetch reads the archive's identity for the segment size.
	if _, err := catalog.EnsureIdentity(ctx, rw, catalog.Identity{Cluster: benchCluster, SystemID: "7400000000000000001", WALSegmentSize: segSize}); err != nil {
		b.Fatal(err)
	}
	be, err := backends.OpenReadOnly(ctx, "file://"+dir)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	objs, err := be.List(ctx, catalog.WALPrefix(benchCluster))
	if err != nil {
		b.Fatal(err)
	}
	list := time.Since(t0)
	t0 = time.Now()
	ix := catalog.IndexWAL(objs, catalog.WALPrefix(benchCluster), segSize)
	index := time.Since(t0)
	t0 = time.Now()
	for i := range n {
		if _, ok := ix.Complete(1, wal.SegmentNo(i+1)); !ok {
			b.Fatalf("segment %d not in the index", i+1)
		}
	}
	lookup := time.Since(t0) / time.Duration(n)
	t0 = time.Now()
	in, err := retention.ReadInput(ctx, be, benchCluster, retention.Policy{Redundancy: 1})
	if err != nil {
		b.Fatal(err)
	}
	in.WALSegmentSize = segSize
	readIn := time.Since(t0)
	t0 = time.Now()
	plan := retention.MakePlan(in)
	planT := time.Since(t0)

	fetchDir := filepath.Join(root, "fetch")
	if err := os.Mkdir(fetchDir, 0o700); err != nil {
		b.Fatal(err)
	}
	// Without prefetch: the prefetcher would outlive the command.
	cmd := exec.CommandContext(ctx, bin, "wal-fetch", "--archive-url", "file://"+dir, "--cluster-name", benchCluster,
		"--prefetch", "0", strings.TrimSuffix(names[n/2], ".zst"), filepath.Join(fetchDir, "segment"))
	cmd.Dir = fetchDir
	cmd.Env = barnacleEnv(nil)
	var fout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &fout, &fout
	fetch := ""
	if _, _, err := runMeasured(cmd); err != nil {
		fetch = fmt.Sprintf("failed: %v: %s", err, tail(fout.String(), 3))
	} else {
		fetch = fmt.Sprintf("%.0f ms, system %.0f ms, peak RSS %.0f MB", ms(lastElapsed), ms(lastSys), float64(lastRSS)/mb)
	}
	fmt.Fprintf(w, "\nCatalog at %d archived segments (file://): list %.0f ms, index %.0f ms, lookup %.2f µs per segment, retention input (list, index, backups) %.0f ms and plan %.0f ms (%d WAL files planned for deletion); wal-fetch --prefetch 0 of one segment %s\n",
		n, ms(list), ms(index), float64(lookup.Nanoseconds())/1000, ms(readIn), ms(planT), len(plan.WAL.Delete), fetch)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
