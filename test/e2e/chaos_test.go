package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/check"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Fault kinds of the chaos schedule.
const (
	faultAgentKill   = "agent-kill"
	faultFailover    = "master-kill-failover"
	faultEtcdRestart = "etcd-restart"
	faultArchiveFull = "archive-full"
	faultCorrupt     = "corrupt-object"
	faultIsolate     = "leader-isolated"
)

// chaosFaults is the schedule's menu, in a fixed order so that a seed
// draws the same schedule on every machine; the weights make the cheap
// faults frequent and the failover (a promotion plus a resync of the old
// master) rarer.
var chaosFaults = []struct {
	kind   string
	weight int
}{
	{faultAgentKill, 4},
	{faultFailover, 2},
	{faultEtcdRestart, 2},
	{faultArchiveFull, 2},
	{faultCorrupt, 1},
	{faultIsolate, 2},
}

// chaosSettings reads BARNACLE_CHAOS_SEED and BARNACLE_CHAOS_DURATION: the
// default is a new seed and 2 minutes of faults, which keeps the whole test
// under about 3 minutes.
func chaosSettings(t *testing.T) (seed uint64, d time.Duration) {
	t.Helper()
	seed = uint64(time.Now().UnixNano())
	if s := os.Getenv("BARNACLE_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "BARNACLE_CHAOS_SEED must be an unsigned integer")
		seed = v
	}
	d = 2 * time.Minute
	if s := os.Getenv("BARNACLE_CHAOS_DURATION"); s != "" {
		v, err := time.ParseDuration(s)
		require.NoError(t, err, "BARNACLE_CHAOS_DURATION must be a Go duration")
		d = v
	}
	return seed, d
}

// chaosWriter is the continuous writer: ids 1, 2, 3, ... one transaction
// each, into chaos(id), on whichever node is the master. testenv.Load stops
// at the first error and restarts at 1, so it cannot follow a failover;
// this one reconnects to the current master and continues after the
// highest id that node has, so the table stays an unbroken sequence on the
// cluster's current timeline.
type chaosWriter struct {
	master func() *testenv.Node
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once

	// acked is the highest id committed on the current timeline, as far
	// as the writer knows.
	acked atomic.Int64
	// commits counts inserts PostgreSQL acknowledged, all timelines.
	commits atomic.Int64
	// rolledBack counts acknowledged commits that a failover discarded:
	// the old master committed them but the promoted standby never
	// received them (asynchronous replication, not the archive's doing).
	rolledBack atomic.Int64
	reconnects atomic.Int64
}

func startChaosWriter(t *testing.T, master func() *testenv.Node) *chaosWriter {
	t.Helper()
	require.NoError(t, master().Exec(t.Context(), "CREATE TABLE chaos (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"))
	w := &chaosWriter{master: master, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	t.Cleanup(w.Stop)
	return w
}

func (w *chaosWriter) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

func (w *chaosWriter) pause(d time.Duration) {
	select {
	case <-w.stop:
	case <-time.After(d):
	}
}

func (w *chaosWriter) run() {
	defer close(w.done)
	for !w.stopped() {
		w.session()
		w.pause(100 * time.Millisecond)
	}
}

// session writes on one connection to the current master until an insert
// fails.
func (w *chaosWriter) session() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	conn, err := w.master().Connect(ctx)
	cancel()
	if err != nil {
		return
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	}()
	w.reconnects.Add(1)
	var top int64
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	err = conn.QueryRow(ctx, "SELECT coalesce(max(id), 0) FROM chaos").Scan(&top)
	cancel()
	if err != nil {
		return
	}
	if a := w.acked.Load(); top < a {
		w.rolledBack.Add(a - top)
	}
	w.acked.Store(top)
	for !w.stopped() {
		id := w.acked.Load() + 1
		// Not cancelled by Stop: a cancelled insert might commit without
		// being acknowledged.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := conn.Exec(ctx, "INSERT INTO chaos (id) VALUES ($1)", id)
		cancel()
		if err != nil {
			return
		}
		w.acked.Store(id)
		w.commits.Add(1)
		w.pause(5 * time.Millisecond)
	}
}

// Stop stops the writer and waits for it.
func (w *chaosWriter) Stop() {
	w.once.Do(func() { close(w.stop) })
	<-w.done
}

// streamSampler samples every 100 ms how many barnacle walsenders stream
// from the current master (the ground truth of "who streams") and how many
// agent records in etcd say they lead and stream, and keeps the worst.
type streamSampler struct {
	env    *archiveEnv
	master func() *testenv.Node
	stop   func()

	mu          sync.Mutex
	samples     int
	maxSenders  int
	maxRecords  int
	worstRecord string
}

func sampleStreams(env *archiveEnv, master func() *testenv.Node) *streamSampler {
	s := &streamSampler{env: env, master: master}
	cli := env.etcd.Client(env.t)
	keys := coordinator.NewKeys("barnacle", cluster).Agents()
	s.stop = everyTick(100*time.Millisecond, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		senders, err := s.master().QueryInt64(ctx,
			"SELECT count(*) FROM pg_stat_replication WHERE application_name = 'barnacle' AND state IN ('streaming', 'catchup')")
		if err != nil {
			senders = -1
		}
		var streaming []string
		resp, rerr := cli.Get(ctx, keys, clientv3.WithPrefix())
		cancel()
		if rerr == nil {
			for _, kv := range resp.Kvs {
				var rec struct {
					Name      string `json:"name"`
					Role      string `json:"role"`
					Streaming bool   `json:"streaming"`
				}
				if json.Unmarshal(kv.Value, &rec) == nil && rec.Role == "leader" && rec.Streaming {
					streaming = append(streaming, rec.Name)
				}
			}
		}
		s.mu.Lock()
		s.samples++
		s.maxSenders = max(s.maxSenders, int(senders))
		if len(streaming) > s.maxRecords {
			s.maxRecords, s.worstRecord = len(streaming), strings.Join(streaming, ",")
		}
		s.mu.Unlock()
	})
	return s
}

// Stop stops sampling and returns the number of samples, the most barnacle
// walsenders seen on the master at once, and the most agent records that
// said they lead and stream at once (with their names).
func (s *streamSampler) Stop() (samples, senders, records int, worst string) {
	s.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples, s.maxSenders, s.maxRecords, s.worstRecord
}

// chaosRun is the state of one chaos run: the cluster, the schedule's
// random source and what was injected.
type chaosRun struct {
	t   *testing.T
	env *archiveEnv
	rng *rand.Rand

	mu     sync.Mutex
	master *testenv.Node

	// corruptible are complete segments older than the base backup, so the
	// restore of the newest point never needs them; corrupted are those
	// flipped so far.
	corruptible []string
	corrupted   []string
	injected    map[string]int
	skipped     map[string]string // fault kind -> why it cannot run here
	isolation   *isolation
}

func (r *chaosRun) currentMaster() *testenv.Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.master
}

// draw returns a number in [0, n) and always consumes one draw, so that the
// schedule a seed makes does not depend on the cluster's state.
func (r *chaosRun) draw(n int) int {
	v := r.rng.IntN(1 << 30)
	if n <= 0 {
		return 0
	}
	return v % n
}

// between returns a duration in [lo, hi).
func (r *chaosRun) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.rng.Int64N(int64(hi-lo)))
}

func (r *chaosRun) pickFault() string {
	total := 0
	for _, f := range chaosFaults {
		total += f.weight
	}
	n := r.draw(total)
	for _, f := range chaosFaults {
		if n < f.weight {
			return f.kind
		}
		n -= f.weight
	}
	panic("unreachable")
}

func (r *chaosRun) agentsSorted() []*agentProc {
	as := r.env.list()
	sort.Slice(as, func(i, j int) bool { return as[i].name < as[j].name })
	return as
}

// inject runs one fault and its recovery; it returns false when the fault
// cannot run in this environment or state (the draws are consumed anyway).
func (r *chaosRun) inject(kind string) bool {
	t, env := r.t, r.env
	ctx := t.Context()
	if _, skip := r.skipped[kind]; skip {
		return false
	}
	switch kind {
	case faultAgentKill:
		as := r.agentsSorted()
		a := as[r.draw(len(as))]
		down := r.between(500*time.Millisecond, 3*time.Second)
		t.Logf("chaos: kill -9 %s, restart after %s", a.name, down.Round(time.Millisecond))
		a.signal(syscall.SIGKILL)
		_, ok := a.wait(10 * time.Second)
		require.True(t, ok, "%s did not die", a.name)
		time.Sleep(down)
		r.startAgent(a)
	case faultFailover:
		old := r.currentMaster()
		var standbys []*testenv.Node
		for _, n := range env.pg.Nodes {
			if n != old {
				standbys = append(standbys, n)
			}
		}
		// Stolon's sentinel promotes the standby that received the most
		// WAL; another choice would leave a standby that cannot follow
		// (its timeline forked after the new master's switch point).
		next := standbys[r.draw(len(standbys))]
		require.NoError(t, old.Kill())
		var best uint64
		for _, n := range standbys {
			lsn, err := n.CurrentLSN(ctx)
			require.NoError(t, err)
			if lsn > best {
				best, next = lsn, n
			}
		}
		t.Logf("chaos: kill -9 PostgreSQL of master %s, fail over to %s, resync %s as a standby", old.Name, next.Name, old.Name)
		fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		require.NoError(t, env.stolon.Failover(fctx, next))
		r.mu.Lock()
		r.master = next
		r.mu.Unlock()
		// Stolon's keeper resyncs the old master as a standby of the new
		// one, so the next failover again has two candidates.
		require.NoError(t, env.pg.Rejoin(fctx, old, next))
		require.NoError(t, env.stolon.Rejoin(fctx, old))
		if r.isolation != nil {
			r.isolation.refresh(t)
		}
	case faultEtcdRestart:
		down := r.between(500*time.Millisecond, 3*time.Second)
		t.Logf("chaos: restart etcd, down %s", down.Round(time.Millisecond))
		require.NoError(t, env.etcd.Restart(down))
	case faultArchiveFull:
		hold := r.between(3*time.Second, 8*time.Second)
		t.Logf("chaos: fill the archive filesystem for %s", hold.Round(time.Millisecond))
		filler := filepath.Join(env.dir, "chaos-filler")
		require.NoError(t, fillDisk(filler))
		// The full filesystem is what check's free-space line is for.
		out, _ := runCheck(t, env)
		assert.Contains(t, checkLines(out)[check.NameFreeSpace], check.NameFreeSpace+": FAILED", "check while the archive is full:\n%s", out)
		time.Sleep(hold)
		require.NoError(t, os.Remove(filler))
	case faultCorrupt:
		i := r.draw(len(r.corruptible))
		if len(r.corruptible) == 0 {
			return false
		}
		name := r.corruptible[i]
		r.corruptible = slices.Delete(r.corruptible, i, i+1)
		off := r.draw(1 << 20)
		path := r.objectPath(name)
		t.Logf("chaos: flip a byte of archived %s at offset %d", filepath.Base(path), off)
		testenv.FlipByte(t, path, int64(off))
		r.corrupted = append(r.corrupted, name)
		r.requireFetchRefused(name)
	case faultIsolate:
		if r.isolation == nil {
			return false
		}
		hold := r.between(4*time.Second, 10*time.Second)
		leader := r.leader()
		if leader == nil {
			return false
		}
		t.Logf("chaos: cut %s off from etcd for %s", leader.name, hold.Round(time.Millisecond))
		r.isolation.cut(leader.name, true)
		// The cut leader must give up leading once its lease cannot be
		// renewed (the sampler checks that nobody else leads before).
		cutAt, stepped := time.Now(), time.Duration(0)
		for time.Since(cutAt) < hold {
			if st, ok := leader.status(); ok && !st.Leading && stepped == 0 {
				stepped = time.Since(cutAt)
			}
			time.Sleep(100 * time.Millisecond)
		}
		r.isolation.cut(leader.name, false)
		if stepped > 0 {
			t.Logf("chaos: %s stopped leading %s after the cut", leader.name, stepped.Round(100*time.Millisecond))
		} else {
			t.Logf("chaos: %s still said it led when the link came back", leader.name)
		}
	default:
		t.Fatalf("unknown fault %s", kind)
	}
	r.injected[kind]++
	return true
}

// leader is the agent that says it leads, or nil.
func (r *chaosRun) leader() *agentProc {
	for _, a := range r.agentsSorted() {
		if st, ok := a.status(); ok && st.Leading {
			return a
		}
	}
	return nil
}

func (r *chaosRun) startAgent(a *agentProc) {
	if r.isolation != nil {
		r.isolation.start(r.t, a)
		return
	}
	a.start(r.t)
}

// objectPath finds the file of an archived segment, whatever its
// compression suffix.
func (r *chaosRun) objectPath(segment string) string {
	r.t.Helper()
	dir := filepath.Join(r.env.dir, catalog.WALPrefix(cluster))
	for _, ext := range []string{"", ".zst", ".lz4"} {
		if _, err := os.Stat(filepath.Join(dir, segment+ext)); err == nil {
			return filepath.Join(dir, segment+ext)
		}
	}
	r.t.Fatalf("archived segment %s not found in %s", segment, dir)
	return ""
}

// requireFetchRefused: wal-fetch must not hand a corrupted segment to
// PostgreSQL.
func (r *chaosRun) requireFetchRefused(segment string) {
	t := r.t
	t.Helper()
	dest := filepath.Join(t.TempDir(), segment)
	out, stderr, code := barnacle(t, "wal-fetch", "--cluster-name", cluster, "--archive-url", "file://"+r.env.dir, segment, dest)
	assert.NotEqual(t, 0, code, "wal-fetch of corrupted %s must fail: %s", segment, out)
	// The zstd decoder may fail before the checksum is compared at the
	// end of the object: either way the segment is refused.
	assert.Contains(t, stderr, segment, "wal-fetch of corrupted %s names it", segment)
	assert.NoFileExists(t, dest, "wal-fetch left the corrupted %s in place", segment)
}

// fillDisk writes path until the filesystem is full.
func fillDisk(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for {
		if _, err = f.Write(buf); err != nil {
			break
		}
	}
	_ = f.Close()
	if !errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("fill %s: %w", path, err)
	}
	// The last partial write may have left a few bytes: use them up.
	f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, n := range []int{64 << 10, 4 << 10, 512, 1} {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
	return nil
}

// mountArchiveTmpfs puts the archive on a small tmpfs, so that it can run
// out of space; it returns why not when it cannot.
func mountArchiveTmpfs(t *testing.T, env *archiveEnv, size string) error {
	t.Helper()
	if os.Geteuid() != 0 {
		return errors.New("not root: cannot mount a tmpfs (and storage/fs has no ENOSPC injection hook)")
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "barnacle-chaos", env.dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", env.dir).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s; lazy unmount", env.dir, err, out)
			_ = exec.Command("umount", "-l", env.dir).Run()
		}
	})
	b, err := fs.New(env.dir, fs.Options{})
	require.NoError(t, err)
	env.backend = b
	return nil
}

// TestChaos is the reliability scenario of issue 8: a continuous writer,
// a seeded random schedule of faults (agents killed, the master's
// PostgreSQL killed and failed over, etcd restarted, the archive full, an
// archived object corrupted, the leader cut off from etcd), then the
// newest point restored and every row the archive acknowledged found
// exactly once. Rerun a schedule with BARNACLE_CHAOS_SEED; make it longer
// with BARNACLE_CHAOS_DURATION.
func TestChaos(t *testing.T) {
	seed, duration := chaosSettings(t)
	t.Logf("chaos seed %d, faults for %s (rerun: BARNACLE_CHAOS_SEED=%d BARNACLE_CHAOS_DURATION=%s go test -race -run Chaos ./test/e2e)",
		seed, duration, seed, duration)
	began := time.Now()
	ctx := t.Context()

	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 2, WALKeepSize: "1GB"}, "--compression", "zstd")
	r := &chaosRun{
		t: t, env: env, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		master:   env.pg.Primary(),
		injected: map[string]int{}, skipped: map[string]string{},
	}
	if err := mountArchiveTmpfs(t, env, "2g"); err != nil {
		r.skipped[faultArchiveFull] = err.Error()
	}
	shareArchiveWithPostgres(t, env.dir)
	iso, err := newIsolation(t, env)
	if err != nil {
		r.skipped[faultIsolate] = err.Error()
	} else {
		r.isolation = iso
	}
	for kind, why := range r.skipped {
		t.Logf("chaos: fault %s skipped: %s", kind, why)
	}
	for _, n := range env.pg.Nodes {
		keeper := env.stolon.KeeperUID(n)
		if r.isolation != nil {
			a := newAgentProc(t, "agent-"+keeper, append([]string{"--keeper-uid", keeper}, env.common...)...)
			env.agents[keeper] = a
			r.isolation.start(t, a)
		} else {
			env.startAgent(keeper)
		}
	}
	primary := env.pg.Primary()
	env.leaderFor(primary)

	// Old segments to corrupt: complete before the base backup starts, so
	// the restore of the newest point never reads them.
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE chaos_pad (v text)"))
	for range 4 {
		require.NoError(t, primary.Exec(ctx, "INSERT INTO chaos_pad SELECT repeat('p', 100) FROM generate_series(1, 1000)"))
		require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
	}
	env.waitArchived(primary, 30*time.Second)
	for name := range listWAL(t, env.backend).segments {
		r.corruptible = append(r.corruptible, name)
	}
	sort.Strings(r.corruptible)
	require.NotEmpty(t, r.corruptible)
	store := env.store()
	bst := backupWait(t, store...)
	t.Logf("base backup %s from %s; corruptible segments %v", bst.Result.ID, bst.Result.StartLSN, r.corruptible)

	w := startChaosWriter(t, r.currentMaster)
	leaders := sampleLeaders(env.list())
	streams := sampleStreams(env, r.currentMaster)

	// The schedule.
	var schedule []string
	for end := time.Now().Add(duration); ; {
		pause := r.between(1*time.Second, 4*time.Second)
		kind := r.pickFault()
		// A fault takes up to about 10 s: none starts that would end
		// well after the duration.
		if time.Now().Add(pause + 5*time.Second).After(end) {
			break
		}
		time.Sleep(pause)
		if r.inject(kind) {
			schedule = append(schedule, kind)
		}
	}
	t.Logf("chaos: faults over after %s: %v", time.Since(began).Round(time.Second), schedule)

	// Catch up: one leader, the archive at the master's flushed position;
	// every row committed before that position was read is acknowledged.
	for _, a := range env.list() {
		require.True(t, a.running(), "%s runs", a.name)
	}
	master := r.currentMaster()
	waitFor(t, 60*time.Second, "the master's agent to lead", func() bool {
		return leaderIs(env.list(), env.agents[env.stolon.KeeperUID(master)].name)
	})
	acked := w.acked.Load()
	flush, err := master.QueryString(ctx, "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::text")
	require.NoError(t, err)
	flushLSN, err := strconv.ParseUint(flush, 10, 64)
	require.NoError(t, err)
	caughtUp := waitFor(t, 90*time.Second, "the archive to reach the master's flush position", func() bool {
		return archiveEnd(t, env.backend) >= wal.LSN(flushLSN)
	})
	w.Stop()
	written, rolledBack := w.commits.Load(), w.rolledBack.Load()
	maxLeading, worstLeading := leaders.Stop()
	samples, senders, records, worstRecords := streams.Stop()
	t.Logf("archive caught up %s after the faults: %d rows acknowledged (flush %s); %d commits in all, %d discarded by failovers (never replicated to the promoted standby)",
		caughtUp.Round(time.Millisecond), acked, wal.LSN(flushLSN), written, rolledBack)

	// At no sampled moment did two agents lead or stream.
	assert.LessOrEqual(t, maxLeading, 1, "agents %s believed they led at the same time", worstLeading)
	assert.LessOrEqual(t, senders, 1, "barnacle walsenders streaming from the master at once")
	assert.LessOrEqual(t, records, 1, "agent records leading and streaming at once: %s", worstRecords)
	assert.Greater(t, samples, int(duration/(200*time.Millisecond)), "the sampler ran")

	// No gap: nothing in the schedule forces one (the standbys keep the
	// WAL the archive lacks; a full archive holds WAL back on the master).
	gaps, err := catalog.ReadGaps(ctx, env.backend, cluster)
	require.NoError(t, err)
	assert.Empty(t, gaps, "gaps.json")

	// The persistent problems: corrupted objects stay corrupted, and
	// wal-fetch still refuses them. check lists the archive, it does not
	// read old segments back, so it does not see them (reported to the
	// lead); everything else must be OK again.
	for _, name := range r.corrupted {
		r.requireFetchRefused(name)
	}
	out, _ := waitCheck(t, env, 60*time.Second, "the cluster healthy again", func(l map[string]string) bool {
		for _, name := range []string{check.NameStreaming, check.NameWALContinuity, check.NameFreeSpace, check.NameAgents,
			check.NameArchive, check.NameSlot, check.NameStandbySlots} {
			if l[name] != name+": OK" {
				return false
			}
		}
		return true
	})
	t.Logf("barnacle check after the faults:\n%s", out)

	// Restore the newest point and count.
	dir := filepath.Join(t.TempDir(), "restored")
	out, stderr, code := barnacle(t, "restore", "--target-dir", dir, "--target-action", "promote",
		"--cluster-name", cluster, "--archive-url", "file://"+env.dir)
	require.Equal(t, 0, code, "restore:\n%s\n%s", out, stderr)
	restored := testenv.StartRestored(t, dir)
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	how, err := restored.WaitRecoveryEnd(rctx)
	require.NoError(t, err)
	require.Equal(t, testenv.RecoveryPromoted, how)
	var count, distinct, top, total int64
	require.NoError(t, restored.QueryRow(ctx, `SELECT count(*) FILTER (WHERE id <= $1), count(DISTINCT id) FILTER (WHERE id <= $1),
		coalesce(max(id) FILTER (WHERE id <= $1), 0), count(*) FROM chaos`, acked).Scan(&count, &distinct, &top, &total))
	lost := acked - distinct
	assert.Equal(t, acked, count, "acknowledged rows present")
	assert.Equal(t, count, distinct, "no acknowledged row twice")
	assert.Equal(t, acked, top, "the highest acknowledged row")
	assert.Zero(t, lost, "rows lost")

	var kinds []string
	for _, f := range chaosFaults {
		if _, skip := r.skipped[f.kind]; skip {
			kinds = append(kinds, f.kind+"=skipped")
			continue
		}
		kinds = append(kinds, fmt.Sprintf("%s=%d", f.kind, r.injected[f.kind]))
	}
	t.Logf("CHAOS SUMMARY seed=%d duration=%s faults=%d (%s) rows_written=%d rows_acknowledged=%d rows_restored=%d rows_lost=%d rows_discarded_by_failover=%d gaps=%d samples=%d max_leaders=%d max_streaming=%d test_time=%s",
		seed, duration, len(schedule), strings.Join(kinds, " "), written, acked, total, lost, rolledBack, len(gaps), samples,
		maxLeading, max(senders, records), time.Since(began).Round(time.Second))
}

// isolation runs every agent in its own network namespace that has only a
// loopback interface; the test process forwards the agent's connections to
// etcd and to the PostgreSQL nodes (listening on the same 127.0.0.1 ports
// inside the namespace) and /status back out. Cutting an agent off from
// etcd drops every byte on its etcd connections, as a partition does (no
// reset: the client must notice by itself), and closes them when the link
// comes back.
type isolation struct {
	t      *testing.T
	pg     *testenv.Cluster
	hostNS *os.File
	etcd   int
	mu     sync.Mutex
	agents map[string]*nsAgent
}

type nsAgent struct {
	nsName string
	ns     *os.File
	etcd   *testenv.Gate
	ports  map[int]bool // forwarded PostgreSQL ports
}

func newIsolation(t *testing.T, env *archiveEnv) (*isolation, error) {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil, errors.New("not root: cannot create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, errors.New("no ip command (iproute2) for ip netns")
	}
	host, err := os.Open("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("open the host network namespace: %w", err)
	}
	t.Cleanup(func() { host.Close() })
	u := strings.TrimPrefix(env.etcd.Endpoints()[0], "http://")
	_, p, _ := strings.Cut(u, ":")
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, fmt.Errorf("etcd endpoint %s: %w", u, err)
	}
	iso := &isolation{t: t, pg: env.pg, hostNS: host, etcd: port, agents: map[string]*nsAgent{}}
	// Probe: a namespace can be made and entered here.
	probe := fmt.Sprintf("bnc-probe-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add: %v: %s", err, strings.TrimSpace(string(out)))
	}
	_ = exec.Command("ip", "netns", "del", probe).Run()
	return iso, nil
}

// inNS runs fn on an OS thread that is in ns; sockets fn creates stay
// there, and processes it starts are born there.
func (iso *isolation) inNS(ns *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		err := fn()
		if berr := unix.Setns(int(iso.hostNS.Fd()), unix.CLONE_NEWNET); berr != nil {
			// Leave the thread locked: it ends with this goroutine.
			errc <- errors.Join(err, fmt.Errorf("setns back: %w", berr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// start starts a (again) inside its namespace, making the namespace and
// its forwarders the first time.
func (iso *isolation) start(t *testing.T, a *agentProc) {
	t.Helper()
	iso.mu.Lock()
	na := iso.agents[a.name]
	if na == nil {
		na = iso.setup(t, a)
		iso.agents[a.name] = na
	}
	iso.mu.Unlock()
	iso.forwardPG(t, na)
	require.NoError(t, iso.inNS(na.ns, func() error { a.start(t); return nil }))
}

func (iso *isolation) setup(t *testing.T, a *agentProc) *nsAgent {
	t.Helper()
	name := fmt.Sprintf("bnc-%d-%s", os.Getpid(), strings.TrimPrefix(a.name, "agent-"))
	out, err := exec.Command("ip", "netns", "add", name).CombinedOutput()
	require.NoError(t, err, "ip netns add %s: %s", name, out)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	out, err = exec.Command("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up").CombinedOutput()
	require.NoError(t, err, "loopback up in %s: %s", name, out)
	ns, err := os.Open("/run/netns/" + name)
	require.NoError(t, err)
	t.Cleanup(func() { ns.Close() })
	na := &nsAgent{nsName: name, ns: ns, etcd: testenv.NewGate(), ports: map[int]bool{}}
	addr := fmt.Sprintf("127.0.0.1:%d", iso.etcd)
	iso.forwardIn(t, na, addr, na.etcd)
	// /status and /metrics: from the host into the namespace.
	ln, err := net.Listen("tcp", a.metrics)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	open := testenv.NewGate()
	go testenv.ServeGated(ln, open, func() (net.Conn, error) {
		var c net.Conn
		err := iso.inNS(ns, func() error {
			var err error
			c, err = net.DialTimeout("tcp", a.metrics, time.Second)
			return err
		})
		return c, err
	})
	return na
}

// forwardPG forwards every node's PostgreSQL port into the namespace
// (again after a resync, which may move a node to another port).
func (iso *isolation) forwardPG(t *testing.T, na *nsAgent) {
	t.Helper()
	for _, n := range iso.pg.Nodes {
		if !na.ports[n.Port] {
			iso.forwardIn(t, na, fmt.Sprintf("127.0.0.1:%d", n.Port), testenv.NewGate())
			na.ports[n.Port] = true
		}
	}
}

// refresh forwards the PostgreSQL ports of every namespace again.
func (iso *isolation) refresh(t *testing.T) {
	t.Helper()
	iso.mu.Lock()
	defer iso.mu.Unlock()
	for _, na := range iso.agents {
		iso.forwardPG(t, na)
	}
}

// forwardIn listens on addr inside the namespace and forwards to addr in
// the host namespace.
func (iso *isolation) forwardIn(t *testing.T, na *nsAgent, addr string, g *testenv.Gate) {
	t.Helper()
	var ln net.Listener
	require.NoError(t, iso.inNS(na.ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}))
	t.Cleanup(func() { ln.Close() })
	go testenv.ServeGated(ln, g, func() (net.Conn, error) { return net.DialTimeout("tcp", addr, time.Second) })
}

// cut cuts (or restores) agent name's link to etcd.
func (iso *isolation) cut(name string, down bool) {
	iso.mu.Lock()
	na := iso.agents[name]
	iso.mu.Unlock()
	if na != nil {
		na.etcd.Set(down)
	}
}
