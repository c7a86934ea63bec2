package walstream_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/compress"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// BenchmarkCompressSegment compresses real 16 MiB WAL segments the way the
// receiver does (one reused compress.Encoder per algorithm) and reports
// throughput (MB/s) and ratio (input/output size). The segments come from
// a PostgreSQL 15 started for the benchmark:
//
//   - pgbench: pgbench's TPC-B-like transactions after a checkpoint
//     (updates, full-page images, index entries, commits), a busy OLTP
//     server's WAL;
//   - random-rows: bulk inserts of random text, WAL that compresses poorly
//     and costs the compressor the most time per byte.
//
// BARNACLE_WAL_SEGMENT names a segment file to use instead.
//
//	go test -run '^$' -bench CompressSegment -benchtime 20x ./pkg/walstream/
func BenchmarkCompressSegment(b *testing.B) {
	for _, seg := range realWALSegments(b) {
		for _, alg := range []string{compress.Zstd, compress.LZ4} {
			b.Run(seg.name+"/"+alg, func(b *testing.B) {
				enc, err := compress.NewEncoder(alg)
				if err != nil {
					b.Fatal(err)
				}
				out, err := enc.Compress(seg.data) // warm the encoder's buffers
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(len(seg.data)))
				b.ResetTimer()
				for b.Loop() {
					if out, err = enc.Compress(seg.data); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(len(seg.data))/float64(len(out)), "ratio")
			})
		}
	}
}

type walSegment struct {
	name string
	data []byte
}

// realWALSegments returns one complete segment of each workload.
func realWALSegments(b *testing.B) []walSegment {
	b.Helper()
	if path := os.Getenv("BARNACLE_WAL_SEGMENT"); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			b.Fatalf("read BARNACLE_WAL_SEGMENT: %v", err)
		}
		return []walSegment{{name: filepath.Base(path), data: data}}
	}
	c := testenv.NewCluster(b, testenv.ClusterOptions{})
	p := c.Primary()
	ctx := b.Context()
	const segSize = 16 << 20
	// segmentOf runs work and returns the first segment it filled whole.
	segmentOf := func(work func()) []byte {
		start := benchFlushLSN(b, p)
		work()
		end := benchFlushLSN(b, p)
		seg := wal.SegmentOf(start, segSize) + 1
		if wal.SegmentStart(seg+1, segSize) > end {
			b.Fatalf("the workload wrote too little wal: %s to %s", start, end)
		}
		name := wal.SegmentFileName(1, seg, segSize)
		data, err := os.ReadFile(filepath.Join(p.DataDir, "pg_wal", name))
		if err != nil {
			b.Fatalf("read %s: %v", name, err)
		}
		return data
	}
	pgbench := func(args ...string) {
		b.Helper()
		cmd := testenv.PGCommand(ctx, b, "pgbench", append(args, p.DSN("postgres"))...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
	}
	exec := func(sql string) {
		b.Helper()
		if err := p.Exec(ctx, sql); err != nil {
			b.Fatal(err)
		}
	}

	pgbench("-i", "-q", "-s", "4")
	exec("CHECKPOINT")
	oltp := segmentOf(func() { pgbench("-n", "-c", "2", "-t", "4000") })
	exec("CREATE TABLE random_rows (id int PRIMARY KEY, a text, b float8, c timestamptz)")
	random := segmentOf(func() {
		exec(`INSERT INTO random_rows SELECT g, md5(random()::text) || md5(random()::text), random(),
			now() - random() * interval '1 year' FROM generate_series(1, 300000) g`)
	})
	return []walSegment{{name: "pgbench", data: oltp}, {name: "random-rows", data: random}}
}

func benchFlushLSN(b *testing.B, n *testenv.Node) wal.LSN {
	b.Helper()
	s, err := n.QueryString(b.Context(), "SELECT pg_current_wal_flush_lsn()::text")
	if err != nil {
		b.Fatal(err)
	}
	lsn, err := wal.ParseLSN(s)
	if err != nil {
		b.Fatal(err)
	}
	return lsn
}
