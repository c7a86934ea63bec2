package bench

import (
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const mb = 1 << 20

// tpsPattern matches pgbench's result line. PostgreSQL 15 prints only the
// figure without connection time (14 printed "excluding connections
// establishing" as a second line); that is the one to compare, since
// connecting is not what a receiver slows down.
var tpsPattern = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)`)

// parseTPS returns the throughput pgbench reported in out.
func parseTPS(out string) (float64, error) {
	m := tpsPattern.FindStringSubmatch(out)
	if m == nil {
		return 0, errors.New("pgbench output has no \"tps = ... (without initial connection time)\" line")
	}
	return strconv.ParseFloat(m[1], 64)
}

// lagStats summarises lag samples in bytes.
type lagStats struct {
	N             int
	P50, P99, Max float64
}

// summarise returns nearest-rank percentiles of samples (bytes). With the
// ~120 samples of a 60 s phase, p99 is the second largest sample: one
// unlucky sample does not decide it, two do.
func summarise(samples []float64) lagStats {
	if len(samples) == 0 {
		return lagStats{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	return lagStats{N: len(s), P50: percentile(s, 0.50), P99: percentile(s, 0.99), Max: s[len(s)-1]}
}

// percentile is the nearest-rank percentile of sorted, which is not empty.
func percentile(sorted []float64, p float64) float64 {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// result is what one phase measured.
type result struct {
	Phase phase
	TPS   float64
	// WALBytes is the WAL the primary generated during pgbench, which ran
	// for Elapsed.
	WALBytes uint64
	Elapsed  time.Duration
	// Writes counts barnacle's archive writes; zero for other phases.
	Writes writeCounter
	Lag    lagStats
	// Missing counts samples in which the receiver was not in
	// pg_stat_replication or had not reported a flush position yet.
	Missing int
}

// report is the benchmark's outcome: the table, and whether the goals of
// the issue are met.
type report struct {
	Results []result
}

func (r report) find(name string) (result, bool) {
	return findRow(r.Results, name, func(res result) string { return res.Phase.Name })
}

// findRow returns the first of rows whose nameOf is name; the benchmarks'
// reports look up the row each one is compared with by its name.
func findRow[T any](rows []T, name string, nameOf func(T) string) (T, bool) {
	for _, row := range rows {
		if nameOf(row) == name {
			return row, true
		}
	}
	var zero T
	return zero, false
}

// roundTimes holds each round's elapsed time of every tool, by name. The
// tools of a round run one after the other, each barnacle run right after
// the run it is compared with, so the ratio within a round compares two
// runs that saw the same state of the machine; across rounds that state
// moves by more than the difference between the tools (the page cache's
// warmth, the host's neighbours).
type roundTimes []map[string]time.Duration

// add records tool's time in round (0-based), growing rt as needed.
func (rt *roundTimes) add(round int, tool string, elapsed time.Duration) {
	for len(*rt) <= round {
		*rt = append(*rt, map[string]time.Duration{})
	}
	(*rt)[round][tool] = elapsed
}

// speedups returns, for each round with both tools, how many times faster
// tool ran than base (base's time over tool's).
func (rt roundTimes) speedups(tool, base string) []float64 {
	var out []float64
	for _, times := range rt {
		t, ok1 := times[tool]
		b, ok2 := times[base]
		if ok1 && ok2 && t > 0 {
			out = append(out, b.Seconds()/t.Seconds())
		}
	}
	return out
}

// pairedLine words the per-round speed-ups of tool over base with their
// median, or returns "" for fewer than two rounds.
func (rt roundTimes) pairedLine(tool, base string) string {
	s := rt.speedups(tool, base)
	if len(s) < 2 {
		return ""
	}
	words := make([]string, len(s))
	for i, v := range s {
		words[i] = fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("per round, %s vs %s: %s (median %.2f)", tool, base, strings.Join(words, " "), median(s))
}

// median of values (the mean of the middle two for an even count).
func median(values []float64) float64 {
	s := slices.Clone(values)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// verdict words a goal check.
func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// rateOf is bytes per second over elapsed, 0 for a run that took no time.
func rateOf(bytes int64, elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 0
	}
	return float64(bytes) / elapsed.Seconds()
}

// baselineTPS is the mean tps of the runs without a receiver. There are two,
// first and last, so that drift over the run (table growth, page cache,
// neighbours on the machine) shows and is averaged out.
func (r report) baselineTPS() float64 {
	var sum float64
	var n int
	for _, res := range r.Results {
		if res.Phase.Kind == kindNone {
			sum += res.TPS
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// walRate is the WAL generated per second during pgbench.
func (res result) walRate() float64 {
	if res.Elapsed <= 0 {
		return 0
	}
	return float64(res.WALBytes) / res.Elapsed.Seconds()
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", a/b)
}

func mbs(v float64) string { return fmt.Sprintf("%.2f", v/mb) }

// write prints the table and the goal checks.
func (r report) write(w io.Writer) {
	base := r.baselineTPS()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\ttps\ttps/none\tWAL MB/s\tlag p50 MB\tlag p99 MB\tlag max MB\tsamples\tp99 vs\tp99 ratio\t")
	for _, res := range r.Results {
		if res.Phase.Kind == kindNone {
			fmt.Fprintf(tw, "%s\t%.1f\t%s\t%.2f\t-\t-\t-\t-\t\t\t\n", res.Phase.Name, res.TPS, ratio(res.TPS, base), res.walRate()/mb)
			continue
		}
		vs, vsRatio := "", ""
		if c, ok := r.find(res.Phase.CompareWith); ok {
			vs, vsRatio = c.Phase.Name, ratio(res.Lag.P99, c.Lag.P99)
		}
		samples := strconv.Itoa(res.Lag.N)
		if res.Missing > 0 {
			samples += fmt.Sprintf(" (+%d none)", res.Missing)
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t\n", res.Phase.Name, res.TPS, ratio(res.TPS, base),
			res.walRate()/mb, mbs(res.Lag.P50), mbs(res.Lag.P99), mbs(res.Lag.Max), samples, vs, vsRatio)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "tps/none is against the mean of the runs without a receiver (%.1f tps).\n", base)
	fmt.Fprintln(w, "lag is pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn) from pg_stat_replication, sampled every 0.5 s: the RPO.")
	for _, res := range r.Results {
		if wc := res.Writes; wc.count > 0 {
			secs := res.Elapsed.Seconds()
			fmt.Fprintf(w, "%s: %d archive writes (%.1f/s), %d complete segments, %.0f MB written (%.1f MB/s) for %.0f MB of WAL: %s times the WAL\n",
				res.Phase.Name, wc.count, float64(wc.count)/secs, wc.segments, float64(wc.bytes)/mb, float64(wc.bytes)/mb/secs,
				float64(res.WALBytes)/mb, ratio(float64(wc.bytes), float64(res.WALBytes)))
		}
	}
	for _, g := range r.goals() {
		fmt.Fprintln(w, g)
	}
}

// goals checks the targets: barnacle's flushed position at most
// 1 MB behind at p99 with at most 3% tps cost, and in synchronous mode no
// more tps cost than pg_receivewal --synchronous.
func (r report) goals() []string {
	base := r.baselineTPS()
	var out []string
	for _, res := range r.Results {
		if res.Phase.Kind != kindBarnacle || base == 0 {
			continue
		}
		cost := 1 - res.TPS/base
		if !res.Phase.Sync {
			ok := res.Lag.N > 0 && res.Lag.P99 <= mb && cost <= 0.03
			out = append(out, fmt.Sprintf("goal %s: p99 lag %.2f MB (<= 1 MB), tps cost %.1f%% (<= 3%%): %s",
				res.Phase.Name, res.Lag.P99/mb, 100*cost, verdict(ok)))
			continue
		}
		c, ok := r.find(res.Phase.CompareWith)
		if !ok {
			continue
		}
		ccost := 1 - c.TPS/base
		out = append(out, fmt.Sprintf("goal %s: tps cost %.1f%% vs %s %.1f%% (no more): %s",
			res.Phase.Name, 100*cost, c.Phase.Name, 100*ccost, verdict(cost <= ccost)))
	}
	return out
}

func TestParseTPS(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      float64
		wantErr   bool
	}{
		{name: "pg15", out: "latency average = 3.1 ms\ninitial connection time = 5.2 ms\ntps = 1288.412345 (without initial connection time)\n", want: 1288.412345},
		{name: "pg14", out: "tps = 900.5 (including connections establishing)\ntps = 901.25 (excluding connections establishing)\n", want: 901.25},
		{name: "missing", out: "pgbench: error: connection failed\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseTPS(tc.out)
			if tc.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.InDelta(t, tc.want, got, 1e-9)
		})
	}
}

func TestSummarise(t *testing.T) {
	for _, tc := range []struct {
		name    string
		samples []float64
		want    lagStats
	}{
		{name: "empty", want: lagStats{}},
		{name: "one", samples: []float64{7}, want: lagStats{N: 1, P50: 7, P99: 7, Max: 7}},
		{name: "unsorted", samples: []float64{5, 1, 4, 2, 3}, want: lagStats{N: 5, P50: 3, P99: 5, Max: 5}},
		{
			// 120 samples, as in a 60 s phase: p99 is the second largest.
			name: "hundred and twenty",
			samples: func() []float64 {
				s := make([]float64, 120)
				for i := range s {
					s[i] = float64(i + 1)
				}
				return s
			}(),
			want: lagStats{N: 120, P50: 60, P99: 119, Max: 120},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, summarise(tc.samples))
		})
	}
}

func TestReportGoals(t *testing.T) {
	rep := report{Results: []result{
		{Phase: phase{Name: "none", Kind: kindNone}, TPS: 1000},
		{Phase: phase{Name: "pg_receivewal --synchronous", Kind: kindPGReceiveWAL, Sync: true}, TPS: 950},
		{Phase: phase{Name: "barnacle 200ms", Kind: kindBarnacle}, TPS: 980, Lag: lagStats{N: 10, P99: 0.5 * mb},
			WALBytes: 10 * mb, Elapsed: 10 * time.Second, Writes: writeCounter{count: 50, segments: 1, bytes: 40 * mb}},
		{Phase: phase{Name: "barnacle 1s", Kind: kindBarnacle}, TPS: 990, Lag: lagStats{N: 10, P99: 3 * mb}},
		{Phase: phase{Name: "barnacle sync", Kind: kindBarnacle, Sync: true, CompareWith: "pg_receivewal --synchronous"}, TPS: 940},
		{Phase: phase{Name: "none again", Kind: kindNone}, TPS: 1000},
	}}
	got := rep.goals()
	require.Len(t, got, 3)
	assert.True(t, strings.HasSuffix(got[0], ": met"), got[0])
	assert.True(t, strings.HasSuffix(got[1], ": NOT met"), got[1])
	assert.True(t, strings.HasSuffix(got[2], ": NOT met"), got[2])
	var b strings.Builder
	rep.write(&b)
	assert.Contains(t, b.String(), "tps/none")
	assert.Contains(t, b.String(), "barnacle 200ms: 50 archive writes (5.0/s), 1 complete segments, 40 MB written (4.0 MB/s) for 10 MB of WAL: 4.000 times the WAL")
}
