// Package bench holds the benchmarks that need a real PostgreSQL 15: they
// measure barnacle side by side with PostgreSQL's own tools on one cluster
// started by internal/testenv. `make bench` runs them; `go test ./...`
// compiles them and runs only the unit tests of their helpers.
package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

// sampleInterval is how often the receiver's lag is read, as the issue
// asks: fine enough that a 1 s flush cycle shows in p99.
const sampleInterval = 500 * time.Millisecond

type receiverKind int

const (
	kindNone receiverKind = iota
	kindPGReceiveWAL
	kindBarnacle
)

// phase is one pgbench run with at most one receiver beside it.
type phase struct {
	// Name labels the row; for a receiver it is also its application_name
	// (with spaces and dashes turned into underscores) and slot name.
	Name string
	Kind receiverKind
	Sync bool
	// FlushInterval is barnacle's Options.FlushInterval.
	FlushInterval time.Duration
	// CompareWith names the phase whose p99 lag this one is compared to.
	CompareWith string
}

// ident is the phase's name as an application_name and slot name.
func (p phase) ident() string {
	r := strings.NewReplacer(" ", "_", "-", "", ".", "_")
	return "bench_" + r.Replace(p.Name)
}

// phases run in this order on the same cluster. The baseline runs first and
// last so that drift over the run is visible and averaged out.
var phases = []phase{
	{Name: "none", Kind: kindNone},
	{Name: "pg_receivewal", Kind: kindPGReceiveWAL},
	{Name: "pg_receivewal --synchronous", Kind: kindPGReceiveWAL, Sync: true},
	{Name: "barnacle 100ms", Kind: kindBarnacle, CompareWith: "pg_receivewal"}, // the default flush interval
	{Name: "barnacle 200ms", Kind: kindBarnacle, FlushInterval: 200 * time.Millisecond, CompareWith: "pg_receivewal"},
	{Name: "barnacle synchronous", Kind: kindBarnacle, Sync: true, CompareWith: "pg_receivewal --synchronous"},
	{Name: "none again", Kind: kindNone},
}

// benchConfig holds the environment knobs.
type benchConfig struct {
	Scale, Seconds, Clients, Jobs int
}

func loadConfig(b *testing.B) benchConfig {
	b.Helper()
	c := benchConfig{Scale: envInt(b, "BENCH_SCALE", 100), Seconds: envInt(b, "BENCH_SECONDS", 60), Clients: envInt(b, "BENCH_CLIENTS", 4)}
	c.Jobs = envInt(b, "BENCH_JOBS", min(2, c.Clients))
	return c
}

func envInt(b *testing.B, name string, def int) int {
	b.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return v
}

// BenchmarkWALStreaming is the WAL streaming benchmark of the issue: one
// pgbench database, the same load with no receiver, with pg_receivewal
// (async and --synchronous) and with barnacle's walstream.Receiver (flush
// every 1 s, every 200 ms, synchronous), one after the other. For each it
// prints the tps against no receiver and how far the receiver's flushed
// position trails the server's WAL end (p50, p99, max), which is the RPO.
//
// No receiver is a synchronous standby for PostgreSQL
// (synchronous_standby_names stays empty): "synchronous" is the receiver's
// flush policy, so commits never wait for it. Run it once:
//
//	go test -run '^$' -bench WALStreaming -benchtime 1x -timeout 60m ./test/bench
//
// It ignores b.N: one run takes minutes.
func BenchmarkWALStreaming(b *testing.B) {
	cfg := loadConfig(b)
	ctx := b.Context()
	start := time.Now()
	c := testenv.NewCluster(b, testenv.ClusterOptions{Params: map[string]string{
		// Room for the data set and no checkpoint inside a phase: each
		// phase starts after a CHECKPOINT, so each pays the same burst of
		// full-page writes and nothing else.
		"shared_buffers":     "'256MB'",
		"max_wal_size":       "'8GB'",
		"checkpoint_timeout": "'30min'",
	}})
	node := c.Primary()
	root := b.TempDir()
	testenv.PGOwn(b, root)

	progress("pgbench -i -s %d", cfg.Scale)
	// Server-side data generation (G) is the quickest way to the data set.
	if out, err := pgbench(ctx, b, node, "-i", "-s", strconv.Itoa(cfg.Scale), "-I", "dtGvp", "-q"); err != nil {
		b.Fatalf("pgbench init: %v\n%s", err, out)
	}
	progress("initialised in %s; %d phases of %d s, -c %d -j %d", time.Since(start).Round(time.Second), len(phases), cfg.Seconds, cfg.Clients, cfg.Jobs)

	// Warm the caches so that the first phase is not the slowest for that
	// reason alone.
	warm := strconv.Itoa(max(5, cfg.Seconds/4))
	if out, err := pgbench(ctx, b, node, "-c", strconv.Itoa(cfg.Clients), "-j", strconv.Itoa(cfg.Jobs), "-T", warm); err != nil {
		b.Fatalf("pgbench warm-up: %v\n%s", err, out)
	}

	var rep report
	for _, p := range phases {
		res := runPhase(ctx, b, cfg, node, root, p)
		progress("%s: %.1f tps, %.2f MB/s WAL, lag p50 %s p99 %s max %s MB (%d samples)",
			p.Name, res.TPS, res.walRate()/mb, mbs(res.Lag.P50), mbs(res.Lag.P99), mbs(res.Lag.Max), res.Lag.N)
		rep.Results = append(rep.Results, res)
	}

	var out bytes.Buffer
	fmt.Fprintf(&out, "\nWAL streaming: pgbench scale %d, -c %d -j %d -T %d, one phase after the other on one cluster (%s in all)\n",
		cfg.Scale, cfg.Clients, cfg.Jobs, cfg.Seconds, time.Since(start).Round(time.Second))
	rep.write(&out)
	fmt.Print(out.String())

	base := rep.baselineTPS()
	for _, res := range rep.Results {
		id := strings.TrimPrefix(res.Phase.ident(), "bench_")
		b.ReportMetric(res.TPS, id+"_tps")
		if res.Phase.Kind == kindNone {
			continue
		}
		if base > 0 {
			b.ReportMetric(res.TPS/base, id+"_tps/none")
		}
		b.ReportMetric(res.Lag.P99/mb, id+"_p99_lag_MB")
	}
}

// runPhase runs one phase: checkpoint, start the receiver and wait until it
// streams, run pgbench while sampling the lag, stop the receiver, drop its
// slot and archive.
func runPhase(ctx context.Context, b *testing.B, cfg benchConfig, node *testenv.Node, root string, p phase) result {
	b.Helper()
	if err := node.Exec(ctx, "CHECKPOINT"); err != nil {
		b.Fatalf("%s: checkpoint: %v", p.Name, err)
	}
	app := p.ident()
	dir := filepath.Join(root, app)
	var rcv *receiver
	switch p.Kind {
	case kindPGReceiveWAL:
		rcv = startPGReceiveWAL(ctx, b, node, dir, app, p.Sync)
	case kindBarnacle:
		rcv = startBarnacle(ctx, b, node, dir, app, p)
	}
	if rcv != nil {
		waitStreaming(ctx, b, node, app, rcv)
	}

	sampler := startSampler(ctx, b, node)
	walStart, err := node.CurrentLSN(ctx)
	if err != nil {
		b.Fatalf("%s: %v", p.Name, err)
	}
	began := time.Now()
	out, err := pgbench(ctx, b, node, "-c", strconv.Itoa(cfg.Clients), "-j", strconv.Itoa(cfg.Jobs), "-T", strconv.Itoa(cfg.Seconds))
	elapsed := time.Since(began)
	samples, missing, serr := sampler.stop(app)
	if err != nil {
		b.Fatalf("%s: pgbench: %v\n%s", p.Name, err, out)
	}
	if serr != nil {
		b.Fatalf("%s: sample pg_stat_replication: %v", p.Name, serr)
	}
	walEnd, err := node.CurrentLSN(ctx)
	if err != nil {
		b.Fatalf("%s: %v", p.Name, err)
	}
	tps, err := parseTPS(out)
	if err != nil {
		b.Fatalf("%s: %v\n%s", p.Name, err, out)
	}

	if rcv != nil {
		select {
		case <-rcv.exited:
			b.Fatalf("%s: the receiver stopped during the run: %v\n%s", p.Name, rcv.err, rcv.logTail())
		default:
		}
		if err := rcv.stop(); err != nil {
			b.Fatalf("%s: stop the receiver: %v\n%s", p.Name, err, rcv.logTail())
		}
		dropSlot(ctx, b, node, app)
		// The archives are not needed once measured; at full size each is
		// hundreds of MB.
		if err := os.RemoveAll(dir); err != nil {
			b.Fatalf("%s: remove %s: %v", p.Name, dir, err)
		}
	}
	res := result{Phase: p, TPS: tps, WALBytes: walEnd - walStart, Elapsed: elapsed}
	if rcv != nil {
		res.Lag, res.Missing = summarise(samples), missing
	}
	if rcv != nil && rcv.writes != nil {
		res.Writes = *rcv.writes
	}
	return res
}

// progress prints a line to stderr at once: b.Log's output appears only
// when the benchmark ends, and is cut to a few lines without -v.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// pgbench runs pgbench against node's database postgres as superuser and
// returns its combined output.
func pgbench(ctx context.Context, b *testing.B, node *testenv.Node, args ...string) (string, error) {
	b.Helper()
	cmd := testenv.PGCommand(ctx, b, "pgbench", args...)
	cmd.Env = append(cmd.Env, "PGHOST="+node.Host, "PGPORT="+strconv.Itoa(node.Port), "PGUSER=postgres", "PGDATABASE=postgres")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// receiver is a running WAL receiver: a pg_receivewal process or a
// walstream.Receiver goroutine.
type receiver struct {
	// exited is closed when the receiver stopped, by stop or by itself;
	// err is then its error.
	exited chan struct{}
	err    error
	// stop stops the receiver gracefully and waits for it.
	stop    func() error
	logTail func() string
	// writes counts barnacle's durable writes; nil for pg_receivewal.
	writes *writeCounter
}

// writeCounter adds up walstream's OnProgress reports. Only Run's goroutine
// writes it; it is read after Run returned.
type writeCounter struct {
	count, segments int
	bytes           uint64
	lastSegment     string
	lastFlushed     wal.LSN
}

// add counts one durable write: the bytes appended to the .partial since
// the last report, plus the whole segment when one was completed (stored
// as its own object).
func (w *writeCounter) add(p walstream.Progress) {
	if !p.Durable {
		return
	}
	w.count++
	if w.lastFlushed != 0 && p.Flushed > w.lastFlushed {
		w.bytes += uint64(p.Flushed - w.lastFlushed)
	}
	w.lastFlushed = p.Flushed
	if p.LastSegment != w.lastSegment {
		w.lastSegment = p.LastSegment
		w.segments++
		w.bytes += p.SegmentSize
	}
}

// startPGReceiveWAL starts pg_receivewal on a new slot reserved now,
// writing to dir, with application_name app. --no-loop makes it exit
// instead of reconnecting, so a failure shows.
func startPGReceiveWAL(ctx context.Context, b *testing.B, node *testenv.Node, dir, app string, sync bool) *receiver {
	b.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	testenv.PGOwn(b, dir)
	if err := node.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", app); err != nil {
		b.Fatalf("create slot %s: %v", app, err)
	}
	// No dbname: pg_receivewal refuses a database-specific connection. The
	// password goes by environment, not on the command line.
	conn := fmt.Sprintf("host=%s port=%d user=%s sslmode=disable application_name=%s", node.Host, node.Port, node.ReplUser, app)
	args := []string{"-D", dir, "-S", app, "--no-loop", "-d", conn}
	if sync {
		args = append(args, "--synchronous")
	}
	// Not tied to ctx: stop interrupts it, so that it exits cleanly.
	cmd := testenv.PGCommand(context.WithoutCancel(ctx), b, "pg_receivewal", args...)
	cmd.Env = append(cmd.Env, "PGPASSWORD="+node.ReplPassword)
	logPath := filepath.Join(filepath.Dir(dir), app+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		b.Fatalf("start pg_receivewal: %v", err)
	}
	r := &receiver{exited: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		logf.Close()
		close(r.exited)
	}()
	r.logTail = func() string {
		out, _ := os.ReadFile(logPath)
		return string(out)
	}
	r.stop = func() error {
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-r.exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-r.exited
			return errors.New("pg_receivewal did not exit within 30s of SIGINT")
		}
		var ee *exec.ExitError
		if errors.As(r.err, &ee) && ee.ExitCode() == 0 {
			return nil
		}
		return r.err
	}
	b.Cleanup(func() { _ = r.stop() })
	return r
}

// startBarnacle runs a walstream.Receiver into a fresh fs archive in dir,
// creating its slot, with application_name app.
func startBarnacle(ctx context.Context, b *testing.B, node *testenv.Node, dir, app string, p phase) *receiver {
	b.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	backend, err := fs.New(dir, fs.Options{})
	if err != nil {
		b.Fatal(err)
	}
	writes := &writeCounter{}
	rcv, err := walstream.New(walstream.Options{
		OnProgress:    writes.add,
		ConnString:    node.ReplConnString() + " application_name=" + app,
		Slot:          app,
		CreateSlot:    true,
		Backend:       backend,
		FlushInterval: p.FlushInterval,
		Synchronous:   p.Sync,
	})
	if err != nil {
		b.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r := &receiver{exited: make(chan struct{}), logTail: func() string { return "" }, writes: writes}
	go func() {
		r.err = rcv.Run(rctx)
		close(r.exited)
	}()
	var once sync.Once
	r.stop = func() error {
		once.Do(cancel)
		<-r.exited
		return r.err
	}
	b.Cleanup(func() { _ = r.stop() })
	return r
}

// waitStreaming waits until app streams and has reported a flush position,
// so that pgbench starts against a receiver that is up.
func waitStreaming(ctx context.Context, b *testing.B, node *testenv.Node, app string, r *receiver) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for {
		n, err := node.QueryInt64(ctx,
			"SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming' AND flush_lsn IS NOT NULL", app)
		if err == nil && n > 0 {
			return
		}
		last = err
		select {
		case <-r.exited:
			b.Fatalf("%s stopped before it streamed: %v\n%s", app, r.err, r.logTail())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s is not streaming after 30s (last error %v)\n%s", app, last, r.logTail())
		}
	}
}

// dropSlot drops the phase's slot once its walsender has let go of it,
// so that it holds no WAL back in later phases.
func dropSlot(ctx context.Context, b *testing.B, node *testenv.Node, slot string) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := node.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", slot)
		if err != nil {
			b.Fatalf("drop slot %s: %v", slot, err)
		}
		n, err := node.QueryInt64(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", slot)
		if err == nil && n == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("slot %s still exists 30s after its receiver stopped (error %v)", slot, err)
		}
		time.Sleep(100 * time.Millisecond) // polling with a deadline
	}
}

// sampler reads pg_stat_replication every sampleInterval on its own
// connection, in every phase (also without a receiver, so that its own cost
// is the same everywhere).
type sampler struct {
	cancel context.CancelFunc
	done   chan struct{}
	// Written by the goroutine, read after done is closed.
	lags map[string][]float64
	// tickSeen holds, per tick, the applications that had a flush position.
	tickSeen []map[string]bool
	err      error
}

func startSampler(ctx context.Context, b *testing.B, node *testenv.Node) *sampler {
	b.Helper()
	conn, err := node.Connect(ctx)
	if err != nil {
		b.Fatalf("sampler: %v", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &sampler{cancel: cancel, done: make(chan struct{}), lags: map[string][]float64{}}
	go s.run(sctx, conn)
	return s
}

func (s *sampler) run(ctx context.Context, conn *pgx.Conn) {
	defer close(s.done)
	defer conn.Close(context.WithoutCancel(ctx))
	tick := time.NewTicker(sampleInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		seen, err := s.sample(ctx, conn)
		if err != nil {
			if ctx.Err() == nil {
				s.err = err
			}
			return
		}
		s.tickSeen = append(s.tickSeen, seen)
	}
}

// sample reads every walsender's lag once.
func (s *sampler) sample(ctx context.Context, conn *pgx.Conn) (map[string]bool, error) {
	rows, err := conn.Query(ctx,
		"SELECT application_name, pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::float8 FROM pg_stat_replication")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	seen := map[string]bool{}
	for rows.Next() {
		var app string
		var lag *float64
		if err := rows.Scan(&app, &lag); err != nil {
			return nil, err
		}
		if lag != nil {
			s.lags[app] = append(s.lags[app], *lag)
			seen[app] = true
		}
	}
	return seen, rows.Err()
}

// stop ends sampling and returns app's lag samples and the number of ticks
// in which app had no flush position in pg_stat_replication.
func (s *sampler) stop(app string) (lags []float64, missing int, err error) {
	s.cancel()
	<-s.done
	for _, seen := range s.tickSeen {
		if !seen[app] {
			missing++
		}
	}
	return s.lags[app], missing, s.err
}
