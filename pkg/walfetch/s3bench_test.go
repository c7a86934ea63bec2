package walfetch_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walfetch"
)

// BenchmarkServePartialS3 measures what wal-fetch pays, against a real S3
// server (versitygw), to decide whether the archive's .partial is served
// and to serve it, in an archive of BENCH_WAL_SEGMENTS segments (default
// 10,000): "whole" is the listing of the whole WAL prefix that wal-fetch
// made before (catalog.IndexWAL of a List), "page" is catalog.ServeSegment,
// and "fetch" is a whole walfetch.Fetch of the .partial.
//
//	BENCH_WAL_SEGMENTS=100000 go test -run '^$' -bench ServePartialS3 -benchtime 5x ./pkg/walfetch/
func BenchmarkServePartialS3(b *testing.B) {
	n := 10000
	if v := os.Getenv("BENCH_WAL_SEGMENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatalf("BENCH_WAL_SEGMENTS=%q: %v", v, err)
		}
	}
	srv := testenv.StartS3(b)
	srv.SetEnv(b)
	s3, err := backends.Open(b.Context(), srv.URL("arch", ""))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := catalog.EnsureIdentity(b.Context(), s3, catalog.Identity{Cluster: cluster, SystemID: "7000000000000000001", WALSegmentSize: segSize}); err != nil {
		b.Fatal(err)
	}
	// Tiny objects under segment names: listings do not read them.
	var g errgroup.Group
	g.SetLimit(16)
	for i := 1; i <= n; i++ {
		g.Go(func() error {
			name := prefix + seg(1, wal.SegmentNo(i))
			return s3.Put(b.Context(), name, strings.NewReader(name), storage.PutOptions{})
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	end := wal.SegmentNo(n + 1)
	file := seg(1, end)
	data := segmentData(uint64(end))[:100000]
	if err := s3.Put(b.Context(), prefix+file+".partial", strings.NewReader(string(data)), storage.PutOptions{}); err != nil {
		b.Fatal(err)
	}
	named, err := s3.List(b.Context(), prefix+file)
	if err != nil {
		b.Fatal(err)
	}
	b.Run(fmt.Sprintf("segments=%d/whole", n), func(b *testing.B) {
		for b.Loop() {
			all, err := s3.List(b.Context(), prefix)
			if err != nil {
				b.Fatal(err)
			}
			if _, ok, why := catalog.IndexWAL(all, prefix, segSize).Serve(1, end); !ok {
				b.Fatal(why)
			}
		}
	})
	b.Run(fmt.Sprintf("segments=%d/page", n), func(b *testing.B) {
		for b.Loop() {
			_, ok, why, err := catalog.ServeSegment(b.Context(), s3, prefix, named, file, segSize)
			if err != nil || !ok {
				b.Fatal(err, why)
			}
		}
	})
	b.Run(fmt.Sprintf("segments=%d/fetch", n), func(b *testing.B) {
		dest := b.TempDir() + "/RECOVERYXLOG"
		for b.Loop() {
			if err := walfetch.Fetch(b.Context(), s3, cluster, file, dest, walfetch.Options{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
