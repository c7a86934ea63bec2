package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// replayBatch is the rows one INSERT of the WAL generator writes (about
// 40 MB of WAL).
const replayBatch = 200_000

// BenchmarkReplayPrefetch is the replay benchmark of the restore issue:
// PostgreSQL's archive recovery of BENCH_SEGMENTS (default 64) segments
// of WAL, with restore_command = barnacle wal-fetch --prefetch 0 and with
// the default prefetch, from a file:// archive and from an s3:// archive
// (versitygw on 127.0.0.1, where every object costs HTTP round trips).
// For each archive: a small database, `barnacle backup --local` (zstd),
// then INSERTs until the WAL has grown by BENCH_SEGMENTS segments, then a
// second backup --local on the same slot, which archives all that WAL.
// Each run restores the first backup into a fresh directory, then times
// PostgreSQL from its start to the end of recovery (promoted at the end
// of the archived WAL) and checks that every row came back.
// BENCH_BARNACLE_ALT, another barnacle binary, repeats the runs with it as
// restore_command, as "(alt)" rows. Run it once:
//
//	go test -run '^$' -bench ReplayPrefetch -benchtime 1x -timeout 30m ./test/bench
//
// It ignores b.N.
func BenchmarkReplayPrefetch(b *testing.B) {
	segments := envInt(b, "BENCH_SEGMENTS", 64)
	ctx := b.Context()
	start := time.Now()
	bin := buildBarnacle(b)
	if os.Getenv("BENCH_BARNACLE") == "" {
		// PostgreSQL runs restore_command as the postgres OS user.
		testenv.PGOwn(b, filepath.Dir(bin))
	}
	s3 := testenv.StartS3(b)
	c := testenv.NewCluster(b, testenv.ClusterOptions{Params: map[string]string{
		"max_wal_size":       "'8GB'",
		"checkpoint_timeout": "'30min'",
	}})
	node := c.Primary()
	root := b.TempDir()
	testenv.PGOwn(b, root)
	pw := filepath.Join(root, "password")
	if err := os.WriteFile(pw, []byte(c.ReplPassword()), 0o600); err != nil {
		b.Fatal(err)
	}
	// The S3 credentials for restore_command, which runs in PostgreSQL's
	// minimal environment: a shared credentials file it can read.
	creds := filepath.Join(root, "aws-credentials")
	if err := os.WriteFile(creds, fmt.Appendf(nil, "[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n",
		s3.AccessKey, s3.SecretKey), 0o600); err != nil {
		b.Fatal(err)
	}
	testenv.PGOwn(b, creds)
	fileDir := filepath.Join(root, "archive")
	if err := os.Mkdir(fileDir, 0o700); err != nil {
		b.Fatal(err)
	}
	shareWithPostgres(b, fileDir)
	archives := []struct {
		name, url, slot string
		env             []string
		backupID        string
	}{
		{name: "file", url: "file://" + fileDir, slot: "bench_file"},
		{name: "s3", url: s3.URL("archive", ""), slot: "bench_s3", env: s3.Env()},
	}

	if out, err := pgbench(ctx, b, node, "-i", "-s", "1", "-q"); err != nil {
		b.Fatalf("pgbench init: %v\n%s", err, out)
	}
	if err := node.Exec(ctx, "CREATE TABLE replay_fill (id bigint, filler text)"); err != nil {
		b.Fatal(err)
	}
	for i := range archives {
		a := &archives[i]
		if err := node.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", a.slot); err != nil {
			b.Fatalf("create slot %s: %v", a.slot, err)
		}
		res := barnacleBackup(ctx, b, bin, node, a.url, pw, "zstd", a.env, "--slot-name", a.slot)
		a.backupID = res.BackupID
		progress("first backup into %s: %s in %.1f s", a.name, a.backupID, res.Elapsed.Seconds())
	}

	// The WAL to replay.
	segSize, err := node.QueryInt64(ctx, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'")
	if err != nil {
		b.Fatal(err)
	}
	startLSN, err := node.QueryString(ctx, "SELECT pg_current_wal_lsn()::text")
	if err != nil {
		b.Fatal(err)
	}
	var rows int64
	for {
		grown, err := node.QueryInt64(ctx, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint", startLSN)
		if err != nil {
			b.Fatal(err)
		}
		if grown >= int64(segments)*segSize {
			break
		}
		if err := node.Exec(ctx, "INSERT INTO replay_fill SELECT g, repeat(md5(g::text), 3) FROM generate_series($1::bigint, $2::bigint) g",
			rows+1, rows+replayBatch); err != nil {
			b.Fatal(err)
		}
		rows += replayBatch
	}
	progress("%d rows, %d segments of WAL written in %s", rows, segments, time.Since(start).Round(time.Second))
	for _, a := range archives {
		res := barnacleBackup(ctx, b, bin, node, a.url, pw, "zstd", a.env, "--slot-name", a.slot)
		progress("second backup into %s (archives the WAL): %.1f s", a.name, res.Elapsed.Seconds())
	}
	replayed, err := node.QueryInt64(ctx, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint", startLSN)
	if err != nil {
		b.Fatal(err)
	}
	for _, a := range archives {
		dropSlot(ctx, b, node, a.slot)
	}
	if err := node.Stop(); err != nil {
		b.Fatal(err)
	}
	// Every run reads the archive from the page cache, the first as the
	// last.
	warm(b, fileDir)
	warm(b, s3.Root)

	load := loadAvg()
	rep := rpReport{Segments: float64(replayed) / float64(segSize)}
	bins := []struct{ suffix, path string }{{"", bin}}
	if alt := os.Getenv("BENCH_BARNACLE_ALT"); alt != "" {
		bins = append(bins, struct{ suffix, path string }{" (alt)", alt})
	}
	for _, bn := range bins {
		for _, a := range archives {
			for _, prefetch := range []int{0, 4} {
				dest := filepath.Join(root, fmt.Sprintf("replay-%s-%d", a.name, prefetch))
				// restore_command runs the binary that restored.
				barnacleRestore(ctx, b, bn.path, a.url, a.backupID, dest, a.env)
				cmd := "wal-fetch --prefetch " + strconv.Itoa(prefetch)
				if prefetch == 4 {
					cmd = "wal-fetch" // the default, as users get it
				}
				prefix := ""
				if a.name == "s3" {
					prefix = "env AWS_SHARED_CREDENTIALS_FILE=" + creds + " "
				}
				editRestoreCommand(b, dest, prefix, cmd)
				elapsed := replay(ctx, b, dest, rows)
				waitPrefetchers(b, a.url)
				rep.Results = append(rep.Results, rpResult{Archive: a.name + bn.suffix, Prefetch: prefetch, Elapsed: elapsed})
				progress("replay from %s%s with prefetch %d: %.2f s", a.name, bn.suffix, prefetch, elapsed.Seconds())
				if err := os.RemoveAll(dest); err != nil {
					b.Fatal(err)
				}
			}
		}
	}

	var out bytes.Buffer
	fmt.Fprintf(&out, "\nReplay: %.1f segments of WAL (%d MB, INSERTs) from the first backup's start to the archive's end, zstd-compressed in the archive; "+
		"timed from PostgreSQL's start to the end of recovery (%s in all); load average before the replays: %s\n",
		rep.Segments, replayed/mb, time.Since(start).Round(time.Second), load)
	rep.write(&out)
	fmt.Print(out.String())
	for _, res := range rep.Results {
		id := strings.NewReplacer(" ", "", "(", "_", ")", "").Replace(res.Archive)
		b.ReportMetric(res.Elapsed.Seconds(), fmt.Sprintf("%s_prefetch%d_s", id, res.Prefetch))
	}
}

// shareWithPostgres lets the postgres OS user read the archive that
// barnacle writes as root: the directory is postgres's and setgid, so
// everything below gets its group, which the archive's modes let read.
func shareWithPostgres(b *testing.B, dir string) {
	b.Helper()
	testenv.PGOwn(b, dir)
	st, err := os.Stat(dir)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.Chmod(dir, st.Mode().Perm()|os.ModeSetgid|0o050); err != nil {
		b.Fatal(err)
	}
}

// editRestoreCommand rewrites the restore_command that barnacle restore
// appended to dest's postgresql.auto.conf: prefix before the command and
// fetch instead of "wal-fetch".
func editRestoreCommand(b *testing.B, dest, prefix, fetch string) {
	b.Helper()
	path := filepath.Join(dest, "postgresql.auto.conf")
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	var out strings.Builder
	found := false
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "restore_command = '"); ok && strings.Contains(rest, " wal-fetch ") {
			line = "restore_command = '" + prefix + strings.Replace(rest, " wal-fetch ", " "+fetch+" ", 1)
			found = true
		}
		out.WriteString(line)
	}
	if !found {
		b.Fatalf("no restore_command running wal-fetch in %s:\n%s", path, data)
	}
	if err := os.WriteFile(path, []byte(out.String()), 0o600); err != nil {
		b.Fatal(err)
	}
}

// replay starts PostgreSQL on the restored dest and returns the time from
// its start to the end of recovery; the server must have promoted with all
// rows of replay_fill.
func replay(ctx context.Context, b *testing.B, dest string, rows int64) time.Duration {
	b.Helper()
	syscall.Sync()
	began := time.Now()
	r := testenv.StartRestored(b, dest)
	wctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	end, err := r.WaitRecoveryEnd(wctx)
	elapsed := time.Since(began)
	if err != nil {
		b.Fatal(err)
	}
	if end != testenv.RecoveryPromoted {
		b.Fatalf("recovery ended %s, want promoted\n%s", end, r.LogTail(40))
	}
	got, err := r.QueryInt64(ctx, "SELECT count(*) FROM replay_fill")
	if err != nil {
		b.Fatal(err)
	}
	if got != rows {
		b.Fatalf("replay_fill has %d rows after recovery, want %d\n%s", got, rows, r.LogTail(40))
	}
	if err := r.Stop(); err != nil {
		b.Fatal(err)
	}
	return elapsed
}

// waitPrefetchers waits until no wal-fetch prefetcher of the archive at
// url runs any more (they are detached from PostgreSQL and end on their
// own), so that none works during the next run.
func waitPrefetchers(b *testing.B, url string) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		n := 0
		procs, _ := os.ReadDir("/proc")
		for _, p := range procs {
			if _, err := strconv.Atoi(p.Name()); err != nil {
				continue
			}
			cl, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
			if err == nil && bytes.Contains(cl, []byte("--prefetch-worker")) && bytes.Contains(cl, []byte(url)) {
				n++
			}
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d wal-fetch prefetchers of %s still run a minute after recovery ended", n, url)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
}

// warm reads every file under dir once, so that all runs find them in the
// page cache.
func warm(b *testing.B, dir string) {
	b.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(io.Discard, f)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
}
