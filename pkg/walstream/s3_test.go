package walstream_test

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/s3"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

// putLog is a backend without storage.Appender that records every
// successful Put: when it started and ended, and how many bytes it sent.
type putLog struct {
	storage.Backend
	mu   sync.Mutex
	puts []timedPut
}

type timedPut struct {
	name       string
	start, end time.Time
	bytes      int64
}

func (b *putLog) Put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	start := time.Now()
	cr := &countingReader{r: r}
	err := b.Backend.Put(ctx, name, cr, opts)
	if err == nil {
		b.mu.Lock()
		b.puts = append(b.puts, timedPut{name: name, start: start, end: time.Now(), bytes: cr.n})
		b.mu.Unlock()
	}
	return err
}

// sum returns the Puts of objects whose name ends (or not) with
// ".partial", and their bytes.
func (b *putLog) sum(partial bool) (n int, bytes int64, puts []timedPut) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.puts {
		if strings.HasSuffix(p.name, ".partial") == partial {
			n++
			bytes += p.bytes
			puts = append(puts, p)
		}
	}
	return n, bytes, puts
}

func newS3Archive(t *testing.T, srv *testenv.S3Server, maxRetries int) *s3.Backend {
	t.Helper()
	b, err := s3.New(t.Context(), s3.Options{
		Endpoint: srv.Endpoint, Bucket: srv.Bucket, Region: testenv.S3Region, PathStyle: true,
		Credentials: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
		MaxRetries:  maxRetries,
	})
	require.NoError(t, err)
	return b
}

// TestS3PartialCost streams a pgbench-like load (small transactions plus
// bulk inserts, about 2.5 MB/s of WAL, so that a segment takes longer to
// fill than the rewrite interval) into a real S3 server with the default
// flush interval, and reports what the .partial rewrites cost. They never
// come closer than the interval after the previous write ended.
func TestS3PartialCost(t *testing.T) {
	integration(t)
	srv := testenv.StartS3(t)
	c := testenv.NewCluster(t, testenv.ClusterOptions{})
	p := c.Primary()
	ctx := t.Context()
	require.NoError(t, p.Exec(ctx, "CREATE TABLE walgen (id int, v text)"))
	const segSize = 16 * mb
	b := &putLog{Backend: newS3Archive(t, srv, 0)}
	// The default for a backend that cannot append (startReceiver's own
	// default is shorter).
	rec := startReceiver(t, walstream.Options{ConnString: p.ReplConnString(), Slot: slotName(t), CreateSlot: true, Backend: b,
		FlushInterval: walstream.DefaultRewriteFlushInterval})
	start := waitArchived(t, rec, p)

	load := testenv.StartLoad(t, p, testenv.LoadOptions{Interval: 2 * time.Millisecond})
	began := time.Now()
	tick := time.NewTicker(400 * time.Millisecond)
	defer tick.Stop()
	for range 30 {
		<-tick.C
		require.NoError(t, p.Exec(ctx, insert1MB))
	}
	rows, _, err := load.Stop()
	require.NoError(t, err)
	elapsed := time.Since(began)
	walBytes := flushLSN(t, p) - start
	nPartial, partialBytes, partials := b.sum(true)
	nSeg, segBytes, _ := b.sum(false)
	end := waitArchived(t, rec, p)
	require.NoError(t, rec.stop())

	secs := elapsed.Seconds()
	t.Logf("%.1f s of load (%d small transactions + bulk inserts): WAL %.2f MB/s; PUT %.2f MB/s in all: "+
		"%d segment PUTs %.2f MB/s, %d .partial rewrites %.2f MB/s (interval %s)",
		secs, rows, float64(walBytes)/mb/secs, float64(partialBytes+segBytes)/mb/secs,
		nSeg, float64(segBytes)/mb/secs, nPartial, float64(partialBytes)/mb/secs, walstream.DefaultRewriteFlushInterval)
	for i := 1; i < len(partials); i++ {
		gap := partials[i].start.Sub(partials[i-1].end)
		assert.GreaterOrEqual(t, gap, walstream.DefaultRewriteFlushInterval-50*time.Millisecond,
			"rewrite %d started %s after the previous one ended", i, gap)
	}
	// At most one rewrite per interval (plus the one that waitArchived
	// waits for), each at most a segment: flushing every 512 KiB, as with
	// an appending backend, would have meant one rewrite per 512 KiB of WAL.
	maxRewrites := int(secs/walstream.DefaultRewriteFlushInterval.Seconds()) + 2
	assert.LessOrEqual(t, nPartial, maxRewrites)
	assert.LessOrEqual(t, partialBytes, int64(maxRewrites)*segSize)

	a := listArchive(t, b, segSize)
	requireContiguous(t, append(a.segments[1], a.partials[1]...))
	requireSameAsServer(t, b, p.DataDir, segSize, 1, a.segments[1], a.partials[1])
	require.GreaterOrEqual(t, archiveEnd(t, b, segSize, 1), end)
}

// TestS3Outage stops the S3 server while WAL streams: the receiver fails
// with errors IsRetryable accepts, is run again as the agent does, and once
// the server is back the archive continues without a hole.
func TestS3Outage(t *testing.T) {
	integration(t)
	srv := testenv.StartS3(t)
	c := testenv.NewCluster(t, testenv.ClusterOptions{})
	p := c.Primary()
	ctx := t.Context()
	require.NoError(t, p.Exec(ctx, "CREATE TABLE walgen (id int, v text)"))
	const segSize = 16 * mb
	// Few retries inside the client, so that each failure surfaces fast.
	b := newS3Archive(t, srv, 1)
	slot := slotName(t)
	var mu sync.Mutex
	var last walstream.Progress
	r, err := walstream.New(walstream.Options{ConnString: p.ReplConnString(), Slot: slot, CreateSlot: true, Backend: b,
		Prefix: prefix, FlushInterval: 200 * time.Millisecond, StatusInterval: time.Second, Logger: testLogger(t),
		OnProgress: func(pr walstream.Progress) { mu.Lock(); last = pr; mu.Unlock() }})
	require.NoError(t, err)
	flushed := func() wal.LSN { mu.Lock(); defer mu.Unlock(); return last.Flushed }

	// The agent's loop: run again after any retryable error.
	runCtx, cancel := context.WithCancel(context.Background())
	var errs []error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for runCtx.Err() == nil {
			err := r.Run(runCtx)
			if err == nil {
				continue
			}
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
			if !walstream.IsRetryable(err) {
				return
			}
			select {
			case <-runCtx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	end := flushLSN(t, p)
	testenv.WaitUntil(t, 30*time.Second, "archive to reach "+end.String(), func() bool { return flushed() >= end })

	srv.Stop()
	for range 6 {
		require.NoError(t, p.Exec(ctx, insert1MB))
	}
	testenv.WaitUntil(t, 30*time.Second, "a storage error", func() bool { mu.Lock(); defer mu.Unlock(); return len(errs) > 0 })
	require.NoError(t, p.Exec(ctx, insert16MB))
	stoppedFor := time.Now()
	require.NoError(t, srv.Start())
	end = flushLSN(t, p)
	testenv.WaitUntil(t, 60*time.Second, "archive to reach "+end.String(), func() bool { return flushed() >= end })
	t.Logf("archive caught up %s after the server came back", time.Since(stoppedFor))
	cancel()
	<-done
	mu.Lock()
	for _, err := range errs {
		assert.True(t, walstream.IsRetryable(err), "%v", err)
	}
	t.Logf("%d failed runs while the server was down; first: %v", len(errs), errs[0])
	mu.Unlock()

	a := listArchive(t, b, segSize)
	requireContiguous(t, append(a.segments[1], a.partials[1]...))
	requireSameAsServer(t, b, p.DataDir, segSize, 1, a.segments[1], a.partials[1])
}
