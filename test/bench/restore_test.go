package bench

import (
	"bytes"
	"context"
	"encoding/json"
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

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
)

// benchCluster is the cluster name of every archive the benchmarks write.
const benchCluster = "bench"

// BenchmarkRestore is the restore benchmark of the restore issue, with the
// file:// vs s3:// comparison of the S3 issue. It loads the base backup
// benchmark's database (pgbench at BENCH_SCALE, default 100, plus a table
// of random bytes of the same size), takes pg_basebackup -Ft and
// --compress=client-zstd:1 backups and `barnacle backup --local` backups
// (none, lz4, zstd into file:// archives; none and zstd into s3://
// archives on a versitygw on 127.0.0.1), then restores each, one after the
// other, into a fresh directory: `tar -x` of base.tar and `zstd -d | tar
// -x` of base.tar.zst, each followed by `sync -f`, and `barnacle restore`
// (the built binary, as a process, which fsyncs what it writes). It prints
// the rates, the ratios to tar, barnacle's peak RSS, the backup and
// restore rates of file:// and s3:// side by side, and the goals.
// BENCH_ROUNDS (default 1) repeats the restores and keeps each one's
// fastest. BENCH_BARNACLE_ALT, another barnacle binary, adds its file://
// restores as "(alt)" rows in every round, to measure a change beside the
// binary it changes. Run it once:
//
//	go test -run '^$' -bench Restore -benchtime 1x -timeout 60m ./test/bench
//
// It ignores b.N.
func BenchmarkRestore(b *testing.B) {
	scale := envInt(b, "BENCH_SCALE", 100)
	rounds := envInt(b, "BENCH_ROUNDS", 1)
	ctx := b.Context()
	start := time.Now()
	bin := buildBarnacle(b)
	s3 := testenv.StartS3(b)
	c, node, root, dbSize, pgbenchBytes := benchDatabase(b, scale, start)
	pw := filepath.Join(root, "password")
	if err := os.WriteFile(pw, []byte(c.ReplPassword()), 0o600); err != nil {
		b.Fatal(err)
	}

	// The backups, each kept for the restores.
	var rep rsReport
	pgDirs := map[string]string{}
	for _, tool := range []bbTool{bbTools[0], bbTools[4]} {
		dir := filepath.Join(root, "pgbb-"+tool.Compression)
		prepareRun(ctx, b, node, tool)
		res, _ := runPGBaseBackup(ctx, b, node, dir, tool)
		if tool.Compression == "" {
			rep.DBBytes = fileSize(b, filepath.Join(dir, "base.tar"))
			pgDirs[rowTar] = dir
		} else {
			pgDirs[rowZstdTar] = dir
		}
		progress("backup %s: %.1f s, %d MB written", tool.Name, res.Elapsed.Seconds(), res.OutputBytes/mb)
	}
	urls := map[string]string{}
	for _, tool := range rsTools {
		if !tool.Barnacle {
			continue
		}
		dir := filepath.Join(root, "archive-"+tool.Compression)
		url, env := "file://"+dir, []string(nil)
		if tool.S3 {
			url, env = s3.URL("archive-"+tool.Compression, ""), s3.Env()
		} else if err := os.Mkdir(dir, 0o700); err != nil {
			b.Fatal(err)
		}
		prepareRun(ctx, b, node, bbTool{Barnacle: true})
		res := barnacleBackup(ctx, b, bin, node, url, pw, tool.Compression, env)
		res.Tool = tool
		rep.Backups = append(rep.Backups, res)
		urls[tool.Name] = url
		progress("backup %s: %.1f s, %.0f MB/s, peak RSS %.1f MB", tool.Name, res.Elapsed.Seconds(),
			float64(rep.DBBytes)/mb/res.Elapsed.Seconds(), float64(res.MaxRSS)/mb)
	}
	dropSlot(ctx, b, node, "barnacle")
	// PostgreSQL is not needed any more: stopping it leaves the machine
	// to the restores.
	if err := node.Stop(); err != nil {
		b.Fatal(err)
	}

	tools := slices.Clone(rsTools)
	alt := os.Getenv("BENCH_BARNACLE_ALT")
	if alt != "" {
		for _, t := range rsTools {
			if t.Barnacle && !t.S3 {
				t.Name += " (alt)"
				t.Alt = true
				tools = append(tools, t)
			}
		}
	}
	load := loadAvg()
	best := map[string]rsResult{}
	for round := range rounds {
		for _, tool := range tools {
			dest := filepath.Join(root, "restored")
			syscall.Sync() // no earlier writes are flushed on this run's time
			var res rsResult
			switch {
			case tool.Barnacle:
				var env []string
				if tool.S3 {
					env = s3.Env()
				}
				if tool.Alt {
					res = barnacleRestore(ctx, b, alt, urls[strings.TrimSuffix(tool.Name, " (alt)")], "latest", dest, env)
				} else {
					res = barnacleRestore(ctx, b, bin, urls[tool.Name], "latest", dest, env)
				}
			case tool.Compression == "":
				res = shellRestore(ctx, b, dest, fmt.Sprintf("tar -xf %s -C %s", filepath.Join(pgDirs[rowTar], "base.tar"), dest))
			default:
				res = shellRestore(ctx, b, dest, fmt.Sprintf("zstd -dcq %s | tar -xf - -C %s", filepath.Join(pgDirs[rowZstdTar], "base.tar.zst"), dest))
			}
			res.Tool = tool
			rep.Rounds.add(round, tool.Name, res.Elapsed)
			progress("round %d: restore %s: %.2f s, %.0f MB/s, peak RSS %.1f MB", round+1, tool.Name, res.Elapsed.Seconds(),
				float64(rep.DBBytes)/mb/res.Elapsed.Seconds(), float64(res.MaxRSS)/mb)
			if err := os.RemoveAll(dest); err != nil {
				b.Fatal(err)
			}
			if prev, ok := best[tool.Name]; ok {
				res.MaxRSS = max(res.MaxRSS, prev.MaxRSS)
				res.Elapsed = min(res.Elapsed, prev.Elapsed)
			}
			best[tool.Name] = res
		}
	}
	for _, tool := range tools {
		rep.Results = append(rep.Results, best[tool.Name])
	}

	var out bytes.Buffer
	fmt.Fprintf(&out, "\nRestore: pgbench scale %d plus %.0f MB of random bytes, %.0f MB on disk; %d round(s), fastest of each kept (%s in all); load average before the restores: %s\n",
		scale, float64(dbSize-pgbenchBytes)/mb, float64(dbSize)/mb, rounds, time.Since(start).Round(time.Second), load)
	rep.write(&out)
	fmt.Print(out.String())
	for _, res := range rep.Results {
		id := strings.NewReplacer(" ", "_", "|", "", "-", "", "(", "", ")", "").Replace(res.Tool.Name)
		b.ReportMetric(rep.rate(res)/mb, id+"_MB/s")
	}
}

// barnacleEnv is this process's environment without BARNACLE_* (a
// developer's settings must not change what is measured), plus extra.
func barnacleEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BARNACLE_") && !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// barnacleBackup runs `barnacle backup --local` into the archive at url
// (compression alg) with env added, and returns its wall time and peak RSS
// and fails the benchmark unless the backup is done.
func barnacleBackup(ctx context.Context, b *testing.B, bin string, node *testenv.Node, url, pw, alg string, env []string, extra ...string) rsResult {
	b.Helper()
	args := append([]string{"backup", "--local", "--fast", "--json",
		"--cluster-name", benchCluster, "--archive-url", url,
		"--pg-host", node.Host, "--pg-port", strconv.Itoa(node.Port), "--pg-user", node.ReplUser, "--pg-password-file", pw,
		"--compression", alg}, extra...)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = barnacleEnv(env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	elapsed, rss, err := runMeasured(cmd)
	if err != nil {
		b.Fatalf("barnacle backup --local into %s: %v\n%s%s", url, err, stdout.String(), tail(stderr.String(), 30))
	}
	var doc catalog.Backup
	if err := json.Unmarshal(stdout.Bytes(), &doc); err != nil {
		b.Fatalf("barnacle backup into %s: read its document: %v\n%s", url, err, stdout.String())
	}
	if doc.Status != catalog.StatusDone {
		b.Fatalf("barnacle backup into %s: backup %s is %s: %s", url, doc.ID, doc.Status, doc.Error)
	}
	return rsResult{Elapsed: elapsed, MaxRSS: rss, BackupID: doc.ID}
}

// barnacleRestore runs `barnacle restore` of backup (an ID or latest) of
// the archive at url into dest (which must not exist).
func barnacleRestore(ctx context.Context, b *testing.B, bin, url, backup, dest string, env []string) rsResult {
	b.Helper()
	cmd := exec.CommandContext(ctx, bin, "restore", "--json", "--cluster-name", benchCluster, "--archive-url", url,
		"--backup", backup, "--target-dir", dest)
	cmd.Env = barnacleEnv(env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	elapsed, rss, err := runMeasured(cmd)
	if err != nil {
		b.Fatalf("barnacle restore from %s: %v\n%s%s", url, err, stdout.String(), tail(stderr.String(), 30))
	}
	return rsResult{Elapsed: elapsed, MaxRSS: rss}
}

// shellRestore creates dest and runs script (tar into dest) then `sync -f
// dest` in one bash with pipefail, timed together.
func shellRestore(ctx context.Context, b *testing.B, dest, script string) rsResult {
	b.Helper()
	if err := os.Mkdir(dest, 0o700); err != nil {
		b.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -euo pipefail; "+script+"; sync -f "+dest)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	began := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("%s: %v\n%s", script, err, out.String())
	}
	return rsResult{Elapsed: time.Since(began)}
}

func fileSize(b *testing.B, path string) int64 {
	b.Helper()
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}

// loadAvg is /proc/loadavg's first three fields: the machine is shared,
// and the figures mean less when it was busy.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
