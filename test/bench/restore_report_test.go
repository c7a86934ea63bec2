package bench

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pgBackRestOverTar is the reference for pgBackRest: its zstd
// restore with two processes took about 2.5 s where tar -x took 3.7 s on
// the same machine and backup, so "as fast as pgBackRest" is read as at
// least 3.7/2.5 times the rate of tar -x measured in the same run.
const pgBackRestOverTar = 3.7 / 2.5

// Names of the restore benchmark's rows that others are compared with.
const (
	rowTar     = "tar -x"
	rowZstdTar = "zstd -d | tar -x"
)

// rsTool is one way of restoring the benchmark's database.
type rsTool struct {
	// Name labels the row.
	Name string
	// Barnacle is set for `barnacle restore`, unset for tar.
	Barnacle bool
	// Compression is barnacle's backup compression (none, lz4, zstd);
	// for tar, "" or "zstd" (pg_basebackup --compress=client-zstd:1).
	Compression string
	// S3 marks a barnacle row whose archive is on the S3 server.
	S3 bool
	// Alt marks a row run by BENCH_BARNACLE_ALT.
	Alt bool
}

// rsTools run in this order, once per round: the two tar rows, then
// barnacle from file:// archives, then from s3:// archives.
var rsTools = []rsTool{
	{Name: rowTar},
	{Name: rowZstdTar, Compression: "zstd"},
	{Name: "barnacle none", Barnacle: true, Compression: "none"},
	{Name: "barnacle lz4", Barnacle: true, Compression: "lz4"},
	{Name: "barnacle zstd", Barnacle: true, Compression: "zstd"},
	{Name: "barnacle none s3", Barnacle: true, Compression: "none", S3: true},
	{Name: "barnacle zstd s3", Barnacle: true, Compression: "zstd", S3: true},
}

// fileTwin is the file:// row an s3:// row is compared with.
func (t rsTool) fileTwin() string { return strings.TrimSuffix(t.Name, " s3") }

// rsResult is one measured restore (or, in Backups, one backup).
type rsResult struct {
	Tool    rsTool
	Elapsed time.Duration
	// MaxRSS is the peak resident set of barnacle's process; 0 for tar.
	MaxRSS int64
	// BackupID is the backup a `barnacle backup --local` run took.
	BackupID string
}

// rsReport is the restore benchmark's outcome. DBBytes, the size of
// pg_basebackup's uncompressed base.tar, is the work of every row.
type rsReport struct {
	DBBytes int64
	Results []rsResult
	// Backups are the `barnacle backup --local` runs that made the
	// archives, for the file:// vs s3:// table.
	Backups []rsResult
	// Rounds are every round's restore times, for the paired ratios.
	Rounds roundTimes
}

func findResult(rs []rsResult, name string) (rsResult, bool) {
	return findRow(rs, name, func(r rsResult) string { return r.Tool.Name })
}

func (r rsReport) rate(res rsResult) float64 { return rateOf(r.DBBytes, res.Elapsed) }

// write prints the restore table, the file:// vs s3:// table and the goal
// checks.
func (r rsReport) write(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "restore\tseconds\tMB/s\tvs tar -x\tvs zstd|tar\tpeak RSS MB\t")
	tar, _ := findResult(r.Results, rowTar)
	ztar, _ := findResult(r.Results, rowZstdTar)
	for _, res := range r.Results {
		rss := "-"
		if res.Tool.Barnacle {
			rss = fmt.Sprintf("%.1f", float64(res.MaxRSS)/mb)
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.0f\t%s\t%s\t%s\t\n", res.Tool.Name, res.Elapsed.Seconds(), r.rate(res)/mb,
			ratio(r.rate(res), r.rate(tar)), ratio(r.rate(res), r.rate(ztar)), rss)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "MB/s is %.0f MB (the uncompressed base.tar) over the wall time, fsync of the result included "+
		"(tar: `sync -f DIR` after it; barnacle fsyncs every file and directory itself); ratios are of rates. "+
		"The tar rows unpack base.tar only, not pg_wal.tar: barnacle restores no WAL either (restore_command fetches it).\n",
		float64(r.DBBytes)/mb)

	if len(r.Backups) > 0 {
		fmt.Fprintln(w, "\nfile:// vs s3:// (versitygw on 127.0.0.1):")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "operation\tcompression\tfile:// s\tfile:// MB/s\ts3:// s\ts3:// MB/s\ts3/file rate\ts3 peak RSS MB\t")
		for _, set := range []struct {
			op   string
			rows []rsResult
		}{{"backup --local", r.Backups}, {"restore", r.Results}} {
			for _, s3 := range set.rows {
				if !s3.Tool.S3 {
					continue
				}
				f, ok := findResult(set.rows, s3.Tool.fileTwin())
				if !ok {
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.0f\t%.2f\t%.0f\t%s\t%.1f\t\n", set.op, s3.Tool.Compression,
					f.Elapsed.Seconds(), r.rate(f)/mb, s3.Elapsed.Seconds(), r.rate(s3)/mb, ratio(r.rate(s3), r.rate(f)), float64(s3.MaxRSS)/mb)
			}
		}
		_ = tw.Flush()
	}
	for _, res := range r.Results {
		if line := r.Rounds.pairedLine(res.Tool.Name, rowTar); res.Tool.Barnacle && line != "" {
			fmt.Fprintln(w, line)
		}
	}
	for _, g := range r.goals() {
		fmt.Fprintln(w, g)
	}
}

// goals checks the targets for every file:// barnacle restore:
// faster than tar -x, as fast as pgBackRest with two processes (see
// pgBackRestOverTar), and peak RSS under rssLimit.
func (r rsReport) goals() []string {
	tar, ok := findResult(r.Results, rowTar)
	var out []string
	for _, res := range r.Results {
		if !res.Tool.Barnacle || res.Tool.S3 {
			continue
		}
		if ok && r.rate(tar) > 0 {
			rr := r.rate(res) / r.rate(tar)
			out = append(out, fmt.Sprintf("goal %s: %.3fx the rate of tar -x (> 1, faster than tar): %s; (>= %.2f, as fast as pgBackRest with two processes): %s",
				res.Tool.Name, rr, verdict(rr > 1), pgBackRestOverTar, verdict(rr >= pgBackRestOverTar)))
		}
		out = append(out, fmt.Sprintf("goal %s: peak RSS %.1f MB (< %d MB): %s", res.Tool.Name, float64(res.MaxRSS)/mb,
			rssLimit/mb, verdict(res.MaxRSS > 0 && res.MaxRSS < rssLimit)))
	}
	return out
}

func TestRestoreReportGoals(t *testing.T) {
	rep := rsReport{DBBytes: 1000 * mb, Results: []rsResult{
		{Tool: rsTools[0], Elapsed: 4 * time.Second},
		{Tool: rsTools[1], Elapsed: 5 * time.Second},
		{Tool: rsTools[2], Elapsed: 3900 * time.Millisecond, MaxRSS: 30 * mb},
		{Tool: rsTools[4], Elapsed: 2500 * time.Millisecond, MaxRSS: 250 * mb},
		{Tool: rsTools[6], Elapsed: 5 * time.Second, MaxRSS: 40 * mb},
	}, Backups: []rsResult{
		{Tool: rsTools[4], Elapsed: 10 * time.Second},
		{Tool: rsTools[6], Elapsed: 20 * time.Second},
	}}
	got := rep.goals()
	require.Len(t, got, 4)
	assert.Contains(t, got[0], "1.026x the rate of tar -x")
	assert.Contains(t, got[0], "faster than tar): met;")
	assert.True(t, strings.HasSuffix(got[0], ": NOT met"), got[0])
	assert.True(t, strings.HasSuffix(got[1], ": met"), got[1])
	assert.Contains(t, got[2], "1.600x")
	assert.True(t, strings.HasSuffix(got[2], "two processes): met"), got[2])
	assert.True(t, strings.HasSuffix(got[3], ": NOT met"), got[3])
	var b strings.Builder
	rep.write(&b)
	assert.Contains(t, b.String(), "file:// vs s3://")
	assert.Contains(t, b.String(), "backup --local")
	assert.Contains(t, b.String(), "0.500") // s3/file rate of backup and restore

	for round, times := range [][2]time.Duration{{4 * time.Second, 2 * time.Second}, {6 * time.Second, 4 * time.Second}, {5 * time.Second, 5 * time.Second}} {
		rep.Rounds.add(round, rowTar, times[0])
		rep.Rounds.add(round, rsTools[2].Name, times[1])
	}
	b.Reset()
	rep.write(&b)
	assert.Contains(t, b.String(), "per round, "+rsTools[2].Name+" vs tar -x: 2.00 1.50 1.00 (median 1.50)")
}

func TestMedian(t *testing.T) {
	assert.InDelta(t, 2.0, median([]float64{3, 1, 2}), 1e-9)
	assert.InDelta(t, 2.5, median([]float64{4, 1, 3, 2}), 1e-9)
	assert.Zero(t, median(nil))
	in := []float64{3, 1, 2}
	median(in)
	assert.Equal(t, []float64{3, 1, 2}, in, "the caller's slice is not sorted")
}

// rpResult is one measured archive recovery.
type rpResult struct {
	Archive  string // "file" or "s3"
	Prefetch int
	Elapsed  time.Duration
}

// rpReport is the replay benchmark's outcome: the same WAL replayed with
// and without prefetch, from each archive.
type rpReport struct {
	Segments float64 // WAL replayed, in segments
	Results  []rpResult
}

func (r rpReport) find(archive string, prefetch bool) (rpResult, bool) {
	for _, res := range r.Results {
		if res.Archive == archive && (res.Prefetch > 0) == prefetch {
			return res, true
		}
	}
	return rpResult{}, false
}

func (r rpReport) write(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "archive\tprefetch\tseconds\tsegments/s\tMB/s\tspeed-up vs prefetch 0\t")
	for _, res := range r.Results {
		vs := ""
		if res.Prefetch > 0 {
			if c, ok := r.find(res.Archive, false); ok {
				vs = ratio(c.Elapsed.Seconds(), res.Elapsed.Seconds())
			}
		}
		secs := res.Elapsed.Seconds()
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.1f\t%.0f\t%s\t\n", res.Archive, res.Prefetch, secs, r.Segments/secs, r.Segments*16/secs, vs)
	}
	_ = tw.Flush()
	for _, g := range r.goals() {
		fmt.Fprintln(w, g)
	}
}

// goals: replay is faster with prefetch than without, per archive.
func (r rpReport) goals() []string {
	var out []string
	for _, res := range r.Results {
		if res.Prefetch == 0 {
			continue
		}
		c, ok := r.find(res.Archive, false)
		if !ok {
			continue
		}
		v := "NOT met"
		if res.Elapsed < c.Elapsed {
			v = "met"
		}
		out = append(out, fmt.Sprintf("goal replay from %s faster with prefetch %d (%.2f s) than without (%.2f s): %s",
			res.Archive, res.Prefetch, res.Elapsed.Seconds(), c.Elapsed.Seconds(), v))
	}
	return out
}

func TestReplayReportGoals(t *testing.T) {
	rep := rpReport{Segments: 64, Results: []rpResult{
		{Archive: "file", Prefetch: 0, Elapsed: 8 * time.Second},
		{Archive: "file", Prefetch: 4, Elapsed: 4 * time.Second},
		{Archive: "s3", Prefetch: 0, Elapsed: 8 * time.Second},
		{Archive: "s3", Prefetch: 4, Elapsed: 9 * time.Second},
	}}
	got := rep.goals()
	require.Len(t, got, 2)
	assert.True(t, strings.HasSuffix(got[0], ": met"), got[0])
	assert.True(t, strings.HasSuffix(got[1], ": NOT met"), got[1])
	var b strings.Builder
	rep.write(&b)
	assert.Contains(t, b.String(), "2.000")
}
