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

// rssLimit is the bound on barnacle's memory, whatever the
// database size.
const rssLimit = 200 * mb

// bbTool is one way of taking a base backup in the base backup benchmark.
type bbTool struct {
	// Name labels the row.
	Name string
	// Barnacle is set for `barnacle backup --local`, unset for
	// pg_basebackup.
	Barnacle bool
	// Compression is barnacle's compression (none, lz4, zstd), or
	// pg_basebackup's --compress value ("" for none).
	Compression string
	// CompareWith names the pg_basebackup row a barnacle row is measured
	// against.
	CompareWith string
}

// bbTools run in this order, each into a fresh directory, one after the
// other, so each barnacle run follows the pg_basebackup run it is compared
// with and both see the same state of the machine.
var bbTools = []bbTool{
	{Name: "pg_basebackup -Ft"},
	{Name: "barnacle none", Barnacle: true, Compression: "none", CompareWith: "pg_basebackup -Ft"},
	{Name: "pg_basebackup client-lz4", Compression: "client-lz4"},
	{Name: "barnacle lz4", Barnacle: true, Compression: "lz4", CompareWith: "pg_basebackup client-lz4"},
	{Name: "pg_basebackup client-zstd:1", Compression: "client-zstd:1"},
	{Name: "barnacle zstd", Barnacle: true, Compression: "zstd", CompareWith: "pg_basebackup client-zstd:1"},
}

// bbResult is one measured backup.
type bbResult struct {
	Tool    bbTool
	Elapsed time.Duration
	// OutputBytes is everything the tool wrote: archives, manifest, WAL
	// (pg_wal.tar or the archive's wals/), catalog files.
	OutputBytes int64
	// MaxRSS is the process's peak resident set in bytes (rusage).
	MaxRSS int64
}

// bbReport is the base backup benchmark's outcome. DBBytes, the size of
// the uncompressed archives, is the amount of work for every row, so
// rates compare directly.
type bbReport struct {
	DBBytes int64
	Results []bbResult
	// Rounds are every round's times, for the paired ratios.
	Rounds roundTimes
}

func (r bbReport) find(name string) (bbResult, bool) {
	return findRow(r.Results, name, func(res bbResult) string { return res.Tool.Name })
}

// rate is the database bytes moved per second.
func (r bbReport) rate(res bbResult) float64 { return rateOf(r.DBBytes, res.Elapsed) }

// write prints the table and the goal checks.
func (r bbReport) write(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tool\tseconds\tMB/s\toutput MB\tof data\tvs\trate ratio\tsize ratio\tpeak RSS MB\t")
	for _, res := range r.Results {
		vs, rateRatio, sizeRatio := "", "", ""
		if c, ok := r.find(res.Tool.CompareWith); ok {
			vs = c.Tool.Name
			rateRatio = ratio(r.rate(res), r.rate(c))
			sizeRatio = ratio(float64(res.OutputBytes), float64(c.OutputBytes))
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t%.1f\t\n", res.Tool.Name, res.Elapsed.Seconds(), r.rate(res)/mb,
			float64(res.OutputBytes)/mb, ratio(float64(res.OutputBytes), float64(r.DBBytes)), vs, rateRatio, sizeRatio, float64(res.MaxRSS)/mb)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "MB/s is %.0f MB of uncompressed archives over the wall time of the process (connect, checkpoint, data, WAL, fsync).\n",
		float64(r.DBBytes)/mb)
	fmt.Fprintf(w, "Both tools ask PostgreSQL for %s manifest checksums.\n", strings.ToUpper(benchManifestChecksums))
	for _, res := range r.Results {
		if line := r.Rounds.pairedLine(res.Tool.Name, res.Tool.CompareWith); res.Tool.Barnacle && line != "" {
			fmt.Fprintln(w, line)
		}
	}
	for _, g := range r.goals() {
		fmt.Fprintln(w, g)
	}
}

// goals checks the targets: uncompressed at least 0.95x
// pg_basebackup's rate; zstd at least as fast as client-zstd:1 and no
// larger; every barnacle run under rssLimit.
func (r bbReport) goals() []string {
	var out []string
	for _, res := range r.Results {
		if !res.Tool.Barnacle {
			continue
		}
		c, ok := r.find(res.Tool.CompareWith)
		if ok {
			rr := r.rate(res) / r.rate(c)
			switch res.Tool.Compression {
			case "none":
				out = append(out, fmt.Sprintf("goal %s: %.3fx the rate of %s (>= 0.95): %s", res.Tool.Name, rr, c.Tool.Name, verdict(rr >= 0.95)))
			case "zstd":
				sr := float64(res.OutputBytes) / float64(c.OutputBytes)
				out = append(out, fmt.Sprintf("goal %s: %.3fx the rate (>= 1) and %.3fx the size (<= 1) of %s: %s",
					res.Tool.Name, rr, sr, c.Tool.Name, verdict(rr >= 1 && sr <= 1)))
			}
		}
		out = append(out, fmt.Sprintf("goal %s: peak RSS %.1f MB (< %d MB): %s", res.Tool.Name, float64(res.MaxRSS)/mb,
			rssLimit/mb, verdict(res.MaxRSS > 0 && res.MaxRSS < rssLimit)))
	}
	return out
}

func TestBBReportGoals(t *testing.T) {
	rep := bbReport{DBBytes: 1000 * mb, Results: []bbResult{
		{Tool: bbTools[0], Elapsed: 10 * time.Second, OutputBytes: 1020 * mb, MaxRSS: 8 * mb},
		{Tool: bbTools[1], Elapsed: 10400 * time.Millisecond, OutputBytes: 1030 * mb, MaxRSS: 40 * mb},
		{Tool: bbTools[4], Elapsed: 8 * time.Second, OutputBytes: 600 * mb, MaxRSS: 9 * mb},
		{Tool: bbTools[5], Elapsed: 8 * time.Second, OutputBytes: 610 * mb, MaxRSS: 250 * mb},
	}}
	got := rep.goals()
	require.Len(t, got, 4)
	assert.True(t, strings.HasSuffix(got[0], ": met"), got[0])
	assert.True(t, strings.HasSuffix(got[1], ": met"), got[1])
	assert.Contains(t, got[2], "1.017x the size")
	assert.True(t, strings.HasSuffix(got[2], ": NOT met"), got[2])
	assert.True(t, strings.HasSuffix(got[3], ": NOT met"), got[3])
	var b strings.Builder
	rep.write(&b)
	assert.Contains(t, b.String(), "peak RSS MB")
	assert.Contains(t, b.String(), "barnacle zstd")
	assert.Contains(t, b.String(), "1000 MB of uncompressed archives")
	assert.NotContains(t, b.String(), "per round", "one round has no paired ratios")

	rep.Rounds.add(0, "pg_basebackup -Ft", 12*time.Second)
	rep.Rounds.add(0, "barnacle none", 6*time.Second)
	rep.Rounds.add(1, "pg_basebackup -Ft", 10*time.Second)
	rep.Rounds.add(1, "barnacle none", 10*time.Second)
	b.Reset()
	rep.write(&b)
	assert.Contains(t, b.String(), "per round, barnacle none vs pg_basebackup -Ft: 2.00 1.00 (median 1.50)")
	assert.NotContains(t, b.String(), "per round, barnacle zstd", "no rounds recorded for it")
}
