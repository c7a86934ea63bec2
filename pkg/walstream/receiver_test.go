package walstream_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

const (
	prefix = "c1/wals/"
	mb     = 1 << 20
	// insert1MB writes a little over one MiB of WAL.
	insert1MB = "INSERT INTO walgen SELECT g, repeat('x', 500) FROM generate_series(1, 1500) g"
	// insert16MB writes about a 16 MiB segment's worth of WAL.
	insert16MB = "INSERT INTO walgen SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g"
)

// integration skips in -short mode (make test-unit); otherwise a missing
// PostgreSQL fails the test in testenv.
func integration(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL 15 (apt-get install -y postgresql-15)")
	}
}

// testLogger sends the receiver's logs to the test log.
func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: testWriter{t}})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// recordingBackend remembers the order of successful Puts and Appends and
// counts the bytes they wrote. It implements storage.Appender when the
// backend it wraps does (newArchive's fs backend does).
type recordingBackend struct {
	storage.Backend
	mu     sync.Mutex
	puts   []string
	writes []write
}

// write is one successful Put or Append.
type write struct {
	name   string
	append bool
	offset int64 // of an Append
	bytes  int64
}

func (b *recordingBackend) Put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	cr := &countingReader{r: r}
	err := b.Backend.Put(ctx, name, cr, opts)
	if err == nil {
		b.mu.Lock()
		b.puts = append(b.puts, name)
		b.writes = append(b.writes, write{name: name, bytes: cr.n})
		b.mu.Unlock()
	}
	return err
}

func (b *recordingBackend) Append(ctx context.Context, name string, offset int64, data []byte, sha256 string) error {
	a, ok := b.Backend.(storage.Appender)
	if !ok {
		return errors.New("test backend: the wrapped backend cannot append")
	}
	err := a.Append(ctx, name, offset, data, sha256)
	if err == nil {
		b.mu.Lock()
		b.puts = append(b.puts, name)
		b.writes = append(b.writes, write{name: name, append: true, offset: offset, bytes: int64(len(data))})
		b.mu.Unlock()
	}
	return err
}

// writesTo returns the successful writes to objects whose name ends with
// suffix.
func (b *recordingBackend) writesTo(suffix string) []write {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []write
	for _, w := range b.writes {
		if strings.HasSuffix(w.name, suffix) {
			out = append(out, w)
		}
	}
	return out
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (b *recordingBackend) order() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.puts)
}

func newArchive(t *testing.T) *recordingBackend {
	t.Helper()
	b, err := fs.New(filepath.Join(t.TempDir(), "archive"), fs.Options{CreateRoot: true})
	require.NoError(t, err)
	return &recordingBackend{Backend: b}
}

// running is a receiver's Run in a goroutine owned by the test.
type running struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error

	mu   sync.Mutex
	last walstream.Progress
}

func startReceiver(t *testing.T, opts walstream.Options) *running {
	t.Helper()
	run := &running{done: make(chan error, 1)}
	opts.OnProgress = func(p walstream.Progress) {
		run.mu.Lock()
		run.last = p
		run.mu.Unlock()
	}
	if opts.FlushInterval == 0 {
		opts.FlushInterval = 200 * time.Millisecond
	}
	if opts.StatusInterval == 0 {
		opts.StatusInterval = time.Second
	}
	if opts.Prefix == "" {
		opts.Prefix = prefix
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	r, err := walstream.New(opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	run.cancel = cancel
	go func() { run.done <- r.Run(ctx) }()
	t.Cleanup(func() { _ = run.stop() })
	return run
}

// stop cancels Run and returns its result.
func (r *running) stop() error {
	r.once.Do(func() {
		r.cancel()
		r.err = <-r.done
	})
	return r.err
}

// wait waits for Run to return by itself.
func (r *running) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.once.Do(func() { r.err = err })
		return err
	case <-time.After(timeout):
		t.Fatalf("receiver still running after %s", timeout)
		return nil
	}
}

// waitStreaming waits until rec streams from n (its walsender, application
// name barnacle, is in state streaming). A receiver connects in its own
// goroutine and, with an empty archive, starts at the segment holding the
// server's position at that moment: WAL a test writes before then may never
// be archived, so a test that waits for archived WAL writes it afterwards.
func waitStreaming(t *testing.T, rec *running, n *testenv.Node) {
	t.Helper()
	testenv.WaitUntil(t, 30*time.Second, "the receiver to stream from "+n.Name, func() bool {
		c, err := n.QueryInt64(t.Context(),
			"SELECT count(*) FROM pg_stat_replication WHERE application_name = 'barnacle' AND state = 'streaming'")
		return err == nil && c > 0
	})
	select {
	case err := <-rec.done:
		rec.once.Do(func() { rec.err = err })
		t.Fatalf("receiver stopped before streaming: %v", err)
	default:
	}
}

func (r *running) progress() walstream.Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

func flushLSN(t *testing.T, n *testenv.Node) wal.LSN {
	t.Helper()
	s, err := n.QueryString(t.Context(), "SELECT pg_current_wal_flush_lsn()::text")
	require.NoError(t, err)
	lsn, err := wal.ParseLSN(s)
	require.NoError(t, err)
	return lsn
}

// waitArchived waits until the receiver made everything n flushed so far
// durable.
func waitArchived(t *testing.T, rec *running, n *testenv.Node) wal.LSN {
	t.Helper()
	end := flushLSN(t, n)
	testenv.WaitUntil(t, 30*time.Second, "archive to reach "+end.String(), func() bool { return rec.progress().Flushed >= end })
	return end
}

func slotName(t *testing.T) string {
	s := strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9_]`).ReplaceAllString(t.Name(), "_"))
	return s[:min(len(s), 63)]
}

// archived is a listing of the archive, by timeline.
type archived struct {
	segments  map[wal.Timeline][]wal.SegmentNo
	partials  map[wal.Timeline][]wal.SegmentNo
	histories []wal.Timeline
	// suffixes counts complete segments by compression suffix ("" for none).
	suffixes map[string]int
}

// listArchive lists the archive and checks what must hold whatever the
// compression: every complete segment is archived under one name only and
// no .partial is compressed.
func listArchive(t *testing.T, b storage.Backend, segSize uint64) archived {
	t.Helper()
	objs, err := b.List(t.Context(), prefix)
	require.NoError(t, err)
	a := archived{segments: map[wal.Timeline][]wal.SegmentNo{}, partials: map[wal.Timeline][]wal.SegmentNo{}, suffixes: map[string]int{}}
	seen := map[string]string{}
	for _, o := range objs {
		rel := strings.TrimPrefix(o.Name, prefix)
		if wal.IsHistoryFileName(rel) {
			tli, err := wal.ParseHistoryFileName(rel)
			require.NoError(t, err)
			a.histories = append(a.histories, tli)
			continue
		}
		base, partial, comp := wal.SplitFileName(rel)
		tli, seg, err := wal.ParseSegmentFileName(base, segSize)
		require.NoError(t, err, "unexpected object %s", o.Name)
		if partial {
			require.Empty(t, comp, "a .partial is never compressed: %s", rel)
			a.partials[tli] = append(a.partials[tli], seg)
			continue
		}
		if other, ok := seen[base]; ok {
			t.Fatalf("segment %s archived twice: %s and %s", base, other, rel)
		}
		seen[base] = rel
		a.segments[tli] = append(a.segments[tli], seg)
		a.suffixes[comp]++
	}
	return a
}

func requireContiguous(t *testing.T, segs []wal.SegmentNo) {
	t.Helper()
	require.NotEmpty(t, segs)
	for i := 1; i < len(segs); i++ {
		require.Equal(t, segs[i-1]+1, segs[i], "segment missing after %d in %v", segs[i-1], segs)
	}
}

func readObject(t *testing.T, b storage.Backend, name string) []byte {
	t.Helper()
	data, err := storage.ReadAll(t.Context(), b, name)
	require.NoError(t, err)
	return data
}

// readSegment returns the WAL of a complete segment, whatever its
// compression.
func readSegment(t *testing.T, b storage.Backend, file string) []byte {
	t.Helper()
	info, err := walstream.FindSegment(t.Context(), b, prefix, file)
	require.NoError(t, err)
	rc, err := catalog.OpenSegment(t.Context(), b, info.Name)
	require.NoError(t, err)
	defer rc.Close()
	data, err := io.ReadAll(rc)
	require.NoError(t, err, "read %s", info.Name)
	return data
}

// requireSameAsServer checks that every complete segment, decompressed,
// equals the file in dataDir/pg_wal and that a .partial equals its start.
func requireSameAsServer(t *testing.T, b storage.Backend, dataDir string, segSize uint64, tli wal.Timeline, segs, partials []wal.SegmentNo) {
	t.Helper()
	for _, seg := range segs {
		name := wal.SegmentFileName(tli, seg, segSize)
		got := readSegment(t, b, name)
		want, err := os.ReadFile(filepath.Join(dataDir, "pg_wal", name))
		require.NoError(t, err, "the server no longer has %s", name)
		require.True(t, bytes.Equal(want, got), "archived %s differs from the server's", name)
	}
	for _, seg := range partials {
		name := wal.SegmentFileName(tli, seg, segSize)
		got := readObject(t, b, prefix+name+".partial")
		want, err := os.ReadFile(filepath.Join(dataDir, "pg_wal", name))
		require.NoError(t, err)
		require.NotEmpty(t, got)
		require.LessOrEqual(t, len(got), len(want))
		require.True(t, bytes.Equal(want[:len(got)], got), "archived %s.partial differs from the server's segment", name)
	}
}

func TestStreamUnderLoad(t *testing.T) {
	integration(t)
	c := testenv.NewCluster(t, testenv.ClusterOptions{})
	p := c.Primary()
	ctx := t.Context()
	require.NoError(t, p.Exec(ctx, "CREATE TABLE walgen (id int, v text)"))
	const segSize = 16 * mb
	b := newArchive(t)
	slot := slotName(t)
	rec := startReceiver(t, walstream.Options{ConnString: p.ReplConnString(), Slot: slot, CreateSlot: true, Backend: b})
	load := testenv.StartLoad(t, p, testenv.LoadOptions{Interval: 2 * time.Millisecond})
	// Bulk inserts paced over the load's life: a steady stream with bursts
	// that cross segment boundaries, without making gigabytes to compare.
	tick := time.NewTicker(400 * time.Millisecond)
	defer tick.Stop()
	for i := range 12 {
		<-tick.C
		require.NoError(t, p.Exec(ctx, insert16MB))
		if i == 3 {
			require.NoError(t, p.Exec(ctx, "SELECT pg_switch_wal()"))
		}
	}
	_, _, err := load.Stop()
	require.NoError(t, err)
	end := waitArchived(t, rec, p)
	require.NoError(t, rec.stop())

	a := listArchive(t, b, segSize)
	segs := a.segments[1]
	require.GreaterOrEqual(t, len(segs), 3, "archive: %+v", a)
	all := append(slices.Clone(segs), a.partials[1]...)
	requireContiguous(t, all)
	require.LessOrEqual(t, len(a.partials[1]), 1)
	requireSameAsServer(t, b, p.DataDir, segSize, 1, segs, a.partials[1])

	// The slot never got ahead of the archive: what the receiver reported
	// is at most the archive's end.
	archiveEnd := wal.SegmentStart(segs[len(segs)-1]+1, segSize)
	if len(a.partials[1]) == 1 {
		data := readObject(t, b, prefix+wal.SegmentFileName(1, a.partials[1][0], segSize)+".partial")
		archiveEnd = wal.SegmentStart(a.partials[1][0], segSize) + wal.LSN(len(data))
	}
	require.GreaterOrEqual(t, archiveEnd, end)
	s, err := p.QueryString(ctx, "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot)
	require.NoError(t, err)
	restart, err := wal.ParseLSN(s)
	require.NoError(t, err)
	assert.LessOrEqual(t, restart, archiveEnd)
	assert.Greater(t, restart, wal.SegmentStart(segs[0], segSize), "the slot should have advanced")
}

func TestResume(t *testing.T) {
	integration(t)
	c := testenv.NewCluster(t, testenv.ClusterOptions{WALSegmentSizeMB: 1})
	p := c.Primary()
	ctx := t.Context()
	require.NoError(t, p.Exec(ctx, "CREATE TABLE walgen (id int, v text)"))
	const segSize = mb
	b := newArchive(t)

	rec := startReceiver(t, walstream.Options{ConnString: p.ReplConnString(), Backend: b})
	for range 4 {
		require.NoError(t, p.Exec(ctx, insert1MB))
	}
	// End mid-segment, so that the first receiver leaves a .partial.
	require.NoError(t, p.Exec(ctx, "INSERT INTO walgen SELECT g, 'y' FROM generate_series(1, 100) g"))
	stop1 := waitArchived(t, rec, p)
	require.NotZero(t, wal.SegmentOffset(stop1, segSize), "the test needs to stop inside a segment")
	require.NoError(t, rec.stop())
	first := rec.progress()

	a := listArchive(t, b, segSize)
	require.Len(t, a.partials[1], 1, "archive: %+v", a)
	partialSeg := a.partials[1][0]
	require.Equal(t, wal.SegmentOf(first.Flushed, segSize), partialSeg)
	data := readObject(t, b, prefix+wal.SegmentFileName(1, partialSeg, segSize)+".partial")
	require.Equal(t, wal.SegmentOffset(first.Flushed, segSize), uint64(len(data)))

	// WAL written while no receiver runs must be picked up where the
	// archive ends.
	for range 3 {
		require.NoError(t, p.Exec(ctx, insert1MB))
	}
	rec2 := startReceiver(t, walstream.Options{ConnString: p.ReplConnString(), Backend: b})
	require.NoError(t, p.Exec(ctx, insert1MB))
	require.NoError(t, p.Exec(ctx, "SELECT pg_switch_wal()"))
	require.NoError(t, p.Exec(ctx, insert1MB))
	waitArchived(t, rec2, p)
	require.NoError(t, rec2.stop())

	a = listArchive(t, b, segSize)
	segs := a.segments[1]
	require.Contains(t, segs, partialSeg, "the resumed segment must be complete now")
	require.NotContains(t, a.partials[1], partialSeg, "the old .partial must be gone")
	requireContiguous(t, append(slices.Clone(segs), a.partials[1]...))
	require.GreaterOrEqual(t, segs[len(segs)-1], partialSeg+3)
	requireSameAsServer(t, b, p.DataDir, segSize, 1, segs, a.partials[1])
}

// TestResumeAppendsToPartial stops a receiver inside a segment and checks
// that the next one continues the .partial it left with appends, never
// rewriting it, and that the result is the server's segment byte for byte.
func TestResumeAppendsToPartial(t *testing.T) {
	integration(t)
	c := testenv.NewCluster(t, testenv.ClusterOptions{WALSegmentSizeMB: 1})
	p := c.Primary()
	ctx := t.Context()
	require.NoError(t, p.Exec(ctx, "CREATE TABLE walgen (id int, v text)"))
	require.NoError(t, p.Exec(ctx, "SELECT pg_switch_wal()"))
	const segSize = mb
	b := newArchive(t)
	small := "INSERT INTO walgen SELECT g, 'y' FROM generate_series(1, 100) g"

	rec := startReceiver(t, walstream.Options{ConnString: p.ReplConnString(), Backend: b})
	require.NoError(t, p.Exec(ctx, small))
	stop1 := waitArchived(t, rec, p)
	require.NoError(t, rec.stop())
	seg := wal.SegmentOf(stop1, segSize)
	name := prefix + wal.SegmentFileName(1, seg, segSize) + ".partial"
	first := readObject(t, b, name)
	require.NotEmpty(t, first)
	require.Less(t, uint64(len(first))+64<<10, uint64(segSize), "the test needs room left in the segment")
	before := len(b.writesTo(".partial"))

	rec2 := startReceiver(t, walstream.Options{ConnString: p.ReplConnString(), Backend: b})
	for range 3 {
		require.NoError(t, p.Exec(ctx, small))
		end := waitArchived(t, rec2, p)
		require.Equal(t, seg, wal.SegmentOf(end, segSize), "the test needs to stay inside the segment")
	}
	require.NoError(t, rec2.stop())

	writes := b.writesTo(".partial")[before:]
	require.NotEmpty(t, writes, "the resumed receiver wrote the .partial")
	offset := int64(len(first))
	for _, w := range writes {
		require.Equal(t, name, w.name)
		require.True(t, w.append, "the .partial was rewritten instead of appended to: %+v", w)
		require.Equal(t, offset, w.offset, "appends continue where the last one ended")
		offset += w.bytes
	}
	got := readObject(t, b, name)
	require.Len(t, got, int(offset))
	require.True(t, bytes.Equal(first, got[:len(first)]), "the resumed .partial keeps its start")
	a := listArchive(t, b, segSize)
	require.Equal(t, []wal.SegmentNo{seg}, a.partials[1])
	requireSameAsServer(t, b, p.DataDir, segSize, 1, nil, a.partials[1])

	// Completing the segment archives it whole and removes the .partial.
	rec3 := startReceiver(t, walstream.Options{ConnString: p.ReplConnString(), Backend: b})
	for range 2 {
		require.NoError(t, p.Exec(ctx, insert1MB))
	}
	end := waitArchived(t, rec3, p)
	require.Greater(t, wal.SegmentOf(end, segSize), seg)
	require.NoError(t, rec3.stop())
	a = listArchive(t, b, segSize)
	require.Contains(t, a.segments[1], seg)
	require.NotContains(t, a.partials[1], seg)
	requireSameAsServer(t, b, p.DataDir, segSize, 1, a.segments[1], a.partials[1])
}

// TestPartialWriteAmplification streams WAL with frequent flushes and
// counts what went into .partial objects: with appends each byte is
// written once, not once per flush as whole-object rewrites would.
func TestPartialWriteAmplification(t *testing.T) {
	integration(t)
	c := testenv.NewCluster(t, testenv.ClusterOptions{})
	p := c.Primary()
	ctx := t.Context()
	require.NoError(t, p.Exec(ctx, "CREATE TABLE walgen (id int, v text)"))
	const segSize = 16 * mb
	b := newArchive(t)
	rec := startReceiver(t, walstream.Options{ConnString: p.ReplConnString(), Backend: b, FlushInterval: 50 * time.Millisecond})
	start := waitArchived(t, rec, p)

	// About 12 MB more, paced over more than a second, so that a segment's
	// .partial is flushed many times as it grows.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for range 15 {
		<-tick.C
		require.NoError(t, p.Exec(ctx, insert1MB))
	}
	end := waitArchived(t, rec, p)
	require.NoError(t, rec.stop())

	// The receiver started at the start of the segment holding start.
	streamed := int64(end - wal.SegmentStart(wal.SegmentOf(start, segSize), segSize))
	var written, appends int64
	for _, w := range b.writesTo(".partial") {
		written += w.bytes
		if w.append {
			appends++
		}
	}
	t.Logf("streamed %.1f MB; .partial writes: %d (%d appends), %.1f MB", float64(streamed)/mb, len(b.writesTo(".partial")), appends, float64(written)/mb)
	require.Greater(t, streamed, int64(12*mb))
	require.GreaterOrEqual(t, appends, int64(10), "the .partial was flushed often")
	// Each streamed byte reaches a .partial at most once (bytes that complete
	// a segment before a flush never do). Rewriting the object would have
	// written about appends/2 times the stream.
	assert.LessOrEqual(t, written, streamed)
	assert.Greater(t, written, streamed/4)
	a := listArchive(t, b, segSize)
	requireSameAsServer(t, b, p.DataDir, segSize, 1, a.segments[1], a.partials[1])
}

// TestTimelineSwitch fails the master over to its standby and checks that
// the archive follows it, for the three places the archive can end
// relative to the switch point.
func TestTimelineSwitch(t *testing.T) {
	integration(t)
	for _, tc := range []struct {
		name string
		// before runs after WAL was archived and before the master is
		// killed; it returns the receiver still running, or nil.
		before func(t *testing.T, rec *running, primary, standby *testenv.Node) *running
	}{
		{
			// The receiver dies with the master, under load: the archive
			// ends where the standby's WAL does or close to it.
			name: "receiver dies with master",
			before: func(t *testing.T, rec *running, primary, standby *testenv.Node) *running {
				return rec
			},
		},
		{
			// The standby has WAL the archive lacks: the new master
			// streams the rest of timeline 1, then switches.
			name: "archive behind switch point",
			before: func(t *testing.T, rec *running, primary, standby *testenv.Node) *running {
				require.NoError(t, rec.stop())
				for range 2 {
					require.NoError(t, primary.Exec(t.Context(), insert1MB))
				}
				end := flushLSN(t, primary)
				testenv.WaitUntil(t, 30*time.Second, "standby to receive "+end.String(), func() bool {
					lsn, err := standby.CurrentLSN(t.Context())
					return err == nil && wal.LSN(lsn) >= end
				})
				return nil
			},
		},
		{
			// The archive has WAL the standby never got: that tail of
			// timeline 1 is a dead branch; timeline 2 starts at the
			// segment holding the switch point.
			name: "archive ahead of switch point",
			before: func(t *testing.T, rec *running, primary, standby *testenv.Node) *running {
				require.NoError(t, standby.Stop())
				for range 2 {
					require.NoError(t, primary.Exec(t.Context(), insert1MB))
				}
				waitArchived(t, rec, primary)
				require.NoError(t, rec.stop())
				return nil
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testTimelineSwitch(t, tc.before)
		})
	}
}

func testTimelineSwitch(t *testing.T, before func(t *testing.T, rec *running, primary, standby *testenv.Node) *running) {
	c := testenv.NewCluster(t, testenv.ClusterOptions{Standbys: 1, WALSegmentSizeMB: 1})
	oldPrimary, standby := c.Nodes[0], c.Nodes[1]
	ctx := t.Context()
	require.NoError(t, oldPrimary.Exec(ctx, "CREATE TABLE walgen (id int, v text)"))
	const segSize = mb
	b := newArchive(t)

	rec := startReceiver(t, walstream.Options{ConnString: oldPrimary.ReplConnString(), Backend: b})
	// Two complete segments archived before the master dies: made here,
	// after the receiver streams, not left to the load (on a busy machine
	// the receiver may connect after the inserts, and the load alone then
	// took longer than the wait to fill two segments).
	waitStreaming(t, rec, oldPrimary)
	load := testenv.StartLoad(t, oldPrimary, testenv.LoadOptions{Interval: 2 * time.Millisecond})
	for range 3 {
		require.NoError(t, oldPrimary.Exec(ctx, insert1MB))
	}
	require.NoError(t, oldPrimary.Exec(ctx, "SELECT pg_switch_wal()"))
	waitArchived(t, rec, oldPrimary)
	require.GreaterOrEqual(t, len(listArchive(t, b, segSize).segments[1]), 2)
	running := before(t, rec, oldPrimary, standby)

	// The master dies under load.
	require.NoError(t, oldPrimary.Kill())
	if running != nil {
		err := running.wait(t, 30*time.Second)
		require.Error(t, err)
		assert.True(t, walstream.IsRetryable(err), "losing the server is retryable: %v", err)
		t.Logf("receiver stopped with: %v", err)
	}
	_, _, _ = load.Stop()
	archiveEnd1 := archiveEnd(t, b, segSize, 1)

	require.NoError(t, standby.Start())
	require.NoError(t, standby.Promote(ctx))
	hist, err := standby.TimelineHistory(ctx)
	require.NoError(t, err)
	require.Len(t, hist, 1)
	switchPoint := wal.LSN(hist[0].SwitchPoint)
	switchSeg := wal.SegmentOf(switchPoint, segSize)
	t.Logf("archive of timeline 1 ends at %s, switch point %s", archiveEnd1, switchPoint)

	rec2 := startReceiver(t, walstream.Options{ConnString: standby.ReplConnString(), Backend: b})
	for range 2 {
		require.NoError(t, standby.Exec(ctx, insert1MB))
	}
	require.NoError(t, standby.Exec(ctx, "SELECT pg_switch_wal()"))
	require.NoError(t, standby.Exec(ctx, "INSERT INTO walgen VALUES (1, 'z')"))
	waitArchived(t, rec2, standby)
	require.NoError(t, rec2.stop())

	a := listArchive(t, b, segSize)
	require.Equal(t, []wal.Timeline{2}, a.histories)
	wantHistory, err := os.ReadFile(filepath.Join(standby.DataDir, "pg_wal", "00000002.history"))
	require.NoError(t, err)
	require.Equal(t, string(wantHistory), string(readObject(t, b, prefix+"00000002.history")))

	// Timeline 1: complete segments, then at most one .partial, and they
	// reach the switch point. Unless the archive was ahead, they end with
	// the switch point's segment.
	segs1 := a.segments[1]
	requireContiguous(t, append(slices.Clone(segs1), a.partials[1]...))
	require.LessOrEqual(t, len(a.partials[1]), 1)
	require.GreaterOrEqual(t, archiveEnd(t, b, segSize, 1), switchPoint)
	if archiveEnd1 <= switchPoint {
		if wal.SegmentOffset(switchPoint, segSize) == 0 {
			require.Empty(t, a.partials[1])
			require.Equal(t, switchSeg-1, segs1[len(segs1)-1])
		} else {
			require.Equal(t, []wal.SegmentNo{switchSeg}, a.partials[1])
			require.Equal(t, wal.SegmentOffset(switchPoint, segSize), uint64(len(readObject(t, b, prefix+wal.SegmentFileName(1, switchSeg, segSize)+".partial"))),
				"the final .partial must end at the switch point")
		}
	}
	requireSameAsServer(t, b, oldPrimary.DataDir, segSize, 1, segs1, a.partials[1])

	// Timeline 2: whole segments from the one holding the switch point.
	segs2 := a.segments[2]
	requireContiguous(t, segs2)
	require.Equal(t, switchSeg, segs2[0])
	require.GreaterOrEqual(t, len(segs2), 2)
	requireSameAsServer(t, b, standby.DataDir, segSize, 2, segs2, a.partials[2])

	// The history file went in before any segment of timeline 2.
	order := b.order()
	hi := slices.Index(order, prefix+"00000002.history")
	require.GreaterOrEqual(t, hi, 0)
	for _, name := range order[:hi] {
		base, _, _ := wal.SplitFileName(strings.TrimPrefix(name, prefix))
		if wal.IsSegmentFileName(base) && strings.HasPrefix(base, "00000002") {
			t.Fatalf("%s was archived before 00000002.history", name)
		}
	}

	// PostgreSQL reads the archive up to the switch and after it.
	waldump(t, b, segSize, 1, segs1, a.partials[1], wal.SegmentStart(segs1[0], segSize), switchPoint)
	waldump(t, b, segSize, 2, segs2, nil, wal.SegmentStart(switchSeg, segSize), wal.SegmentStart(segs2[len(segs2)-1]+1, segSize))
}

// archiveEnd returns the end of the archived WAL of tli.
func archiveEnd(t *testing.T, b storage.Backend, segSize uint64, tli wal.Timeline) wal.LSN {
	t.Helper()
	a := listArchive(t, b, segSize)
	var end wal.LSN
	if segs := a.segments[tli]; len(segs) > 0 {
		end = wal.SegmentStart(segs[len(segs)-1]+1, segSize)
	}
	for _, seg := range a.partials[tli] {
		data := readObject(t, b, prefix+wal.SegmentFileName(tli, seg, segSize)+".partial")
		end = max(end, wal.SegmentStart(seg, segSize)+wal.LSN(len(data)))
	}
	return end
}

// waldump copies archived segments of tli (partials padded to a whole
// segment under the plain name) to a directory and runs pg_waldump over
// [start, end) on that timeline.
func waldump(t *testing.T, b storage.Backend, segSize uint64, tli wal.Timeline, segs, partials []wal.SegmentNo, start, end wal.LSN) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), fmt.Sprintf("waldump%d", tli))
	require.NoError(t, os.Mkdir(dir, 0o755))
	for _, seg := range segs {
		name := wal.SegmentFileName(tli, seg, segSize)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), readSegment(t, b, name), 0o644))
	}
	for _, seg := range partials {
		name := wal.SegmentFileName(tli, seg, segSize)
		data := make([]byte, segSize)
		copy(data, readObject(t, b, prefix+name+".partial"))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), data, 0o644))
	}
	testenv.PGOwn(t, dir)
	cmd := testenv.PGCommand(t.Context(), t, "pg_waldump", "-q", "-p", dir,
		"-t", fmt.Sprint(uint32(tli)), "-s", start.String(), "-e", end.String())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "pg_waldump on timeline %d from %s to %s:\n%s", tli, start, end, out)
}

func TestGapAndStartErrors(t *testing.T) {
	integration(t)
	c := testenv.NewCluster(t, testenv.ClusterOptions{WALSegmentSizeMB: 1, WALKeepSize: "0"})
	p := c.Primary()
	ctx := t.Context()
	const segSize = mb

	t.Run("gap", func(t *testing.T) {
		require.NoError(t, p.Exec(ctx, "CREATE TABLE walgen (id int, v text)"))
		for range 4 {
			require.NoError(t, p.Exec(ctx, insert1MB))
		}
		require.NoError(t, p.Exec(ctx, "CHECKPOINT"))
		require.NoError(t, p.Exec(ctx, insert1MB))
		require.NoError(t, p.Exec(ctx, "CHECKPOINT"))
		oldest, err := p.OldestWALFile()
		require.NoError(t, err)
		missing := wal.SegmentFileName(1, 2, segSize)
		require.Greater(t, oldest, missing, "the server should have removed %s", missing)

		// The archive ends with segment 1, so streaming must continue at
		// segment 2, which the server removed.
		b := newArchive(t)
		_, err = storage.PutOnce(ctx, b, prefix+wal.SegmentFileName(1, 1, segSize), make([]byte, segSize))
		require.NoError(t, err)
		r, err := walstream.New(walstream.Options{ConnString: p.ReplConnString(), Backend: b, Prefix: prefix})
		require.NoError(t, err)
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		err = r.Run(rctx)
		var gap *walstream.GapError
		require.ErrorAs(t, err, &gap)
		assert.Equal(t, wal.Timeline(1), gap.Timeline)
		assert.Equal(t, wal.SegmentStart(2, segSize), gap.From)
		assert.Equal(t, missing, gap.Segment)
		assert.False(t, walstream.IsRetryable(err))
	})

	t.Run("gap recorded then skipped", func(t *testing.T) {
		oldest, err := p.OldestWALFile()
		require.NoError(t, err)
		_, oldestSeg, err := wal.ParseSegmentFileName(oldest, segSize)
		require.NoError(t, err)
		b := newArchive(t)
		_, err = storage.PutOnce(ctx, b, prefix+wal.SegmentFileName(1, 1, segSize), make([]byte, segSize))
		require.NoError(t, err)
		var gaps []walstream.Gap
		rec := startReceiver(t, walstream.Options{ConnString: p.ReplConnString(), Backend: b,
			OnGap: func(_ context.Context, g walstream.Gap) error { gaps = append(gaps, g); return nil }})
		require.NoError(t, p.Exec(ctx, insert1MB))
		testenv.WaitUntil(t, 20*time.Second, "streaming after the gap", func() bool { return rec.progress().Flushed > wal.SegmentStart(oldestSeg, segSize) })
		require.NoError(t, rec.stop())
		require.Len(t, gaps, 1, "OnGap is called once")
		g := gaps[0]
		assert.Equal(t, wal.SegmentStart(2, segSize), g.From)
		assert.Equal(t, wal.SegmentStart(oldestSeg, segSize), g.ResumeAt, "resumes at the oldest segment the server still has (%s)", oldest)
		assert.Equal(t, wal.Timeline(1), g.ResumeTimeline)
		a := listArchive(t, b, segSize)
		assert.Contains(t, append(a.segments[1], a.partials[1]...), oldestSeg, "the first segment after the gap is archived")
		assert.NotContains(t, append(a.segments[1], a.partials[1]...), wal.SegmentNo(2), "nothing is made up inside the gap")
	})

	t.Run("gap refused by OnGap", func(t *testing.T) {
		b := newArchive(t)
		_, err := storage.PutOnce(ctx, b, prefix+wal.SegmentFileName(1, 1, segSize), make([]byte, segSize))
		require.NoError(t, err)
		r, err := walstream.New(walstream.Options{ConnString: p.ReplConnString(), Backend: b, Prefix: prefix,
			OnGap: func(context.Context, walstream.Gap) error { return errors.New("archive not writable") }})
		require.NoError(t, err)
		err = r.Run(ctx)
		var gap *walstream.GapError
		require.ErrorAs(t, err, &gap, "a gap that cannot be recorded is never skipped")
		assert.Contains(t, err.Error(), "archive not writable")
	})

	t.Run("missing slot", func(t *testing.T) {
		r, err := walstream.New(walstream.Options{ConnString: p.ReplConnString(), Backend: newArchive(t), Slot: "no_such_slot"})
		require.NoError(t, err)
		err = r.Run(ctx)
		require.ErrorIs(t, err, walstream.ErrNoSlot)
		assert.True(t, walstream.IsRetryable(err))
	})

	t.Run("wrong password", func(t *testing.T) {
		conn := strings.Replace(p.ReplConnString(), "password="+p.ReplPassword, "password=wrong", 1)
		r, err := walstream.New(walstream.Options{ConnString: conn, Backend: newArchive(t)})
		require.NoError(t, err)
		err = r.Run(ctx)
		require.Error(t, err)
		assert.False(t, walstream.IsRetryable(err), "%v", err)
	})

	t.Run("cancelled before start", func(t *testing.T) {
		r, err := walstream.New(walstream.Options{ConnString: p.ReplConnString(), Backend: newArchive(t)})
		require.NoError(t, err)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		require.NoError(t, r.Run(cctx))
	})
}
