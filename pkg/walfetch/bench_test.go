package walfetch_test

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walfetch"
)

// BenchmarkReplay plays PostgreSQL's archive recovery against an archive
// whose every call (Get, List, Stat) takes `latency`, as an object store's
// round trip does: for each of `segments` consecutive segments one Fetch,
// then `replay` of work standing for PostgreSQL replaying the segment.
// With prefetch, every Fetch is followed by a Prefetch in the background,
// as the CLI's detached child does. It reports the time per segment.
//
//	go test -run '^$' -bench Replay -benchtime 3x ./pkg/walfetch/
func BenchmarkReplay(b *testing.B) {
	const segments = 24
	for _, latency := range []time.Duration{0, 50 * time.Millisecond} {
		for _, replay := range []time.Duration{0, 50 * time.Millisecond} {
			for _, prefetch := range []int{0, 4} {
				name := fmt.Sprintf("latency=%s/replay=%s/prefetch=%d", latency, replay, prefetch)
				b.Run(name, func(b *testing.B) {
					a := newBenchArchive(b, segments)
					a.b.latency = latency
					for b.Loop() {
						replaySegments(b, a, segments, replay, walfetch.Options{SpoolDir: filepath.Join(b.TempDir(), "spool"), Prefetch: prefetch})
					}
					b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N*segments), "ms/segment")
				})
			}
		}
	}
}

func newBenchArchive(b *testing.B, segments int) *archive {
	b.Helper()
	a := newArchive(b)
	for i := 1; i <= segments; i++ {
		a.put(b, seg(1, wal.SegmentNo(i))+".zst", segmentData(uint64(i)))
	}
	return a
}

func replaySegments(b *testing.B, a *archive, segments int, replay time.Duration, opts walfetch.Options) {
	b.Helper()
	dest := filepath.Join(b.TempDir(), "RECOVERYXLOG")
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := 1; i <= segments; i++ {
		name := seg(1, wal.SegmentNo(i))
		if err := walfetch.Fetch(b.Context(), a.b, cluster, name, dest, opts); err != nil {
			b.Fatal(err)
		}
		if opts.Prefetch > 0 {
			wg.Go(func() {
				if err := walfetch.Prefetch(b.Context(), a.b, cluster, name, opts); err != nil {
					b.Error(err)
				}
			})
		}
		if replay > 0 {
			busy(replay)
		}
	}
}

// busy stands for PostgreSQL's replay work.
func busy(d time.Duration) {
	t := time.NewTimer(d)
	<-t.C
}
