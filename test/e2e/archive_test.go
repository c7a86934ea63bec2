package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/check"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

const cluster = "stolon-cluster"

// archiveEnv is a harness cluster with an agent beside every node and a
// file:// archive.
type archiveEnv struct {
	t       *testing.T
	etcd    *testenv.Etcd
	pg      *testenv.Cluster
	stolon  *testenv.Stolon
	dir     string
	backend storage.Backend
	agents  map[string]*agentProc // by keeper UID
	common  []string
	env     []string // for the agents: the S3 credentials of an s3:// archive
}

func newArchiveEnv(t *testing.T, opts testenv.ClusterOptions, extraArgs ...string) *archiveEnv {
	t.Helper()
	e := &archiveEnv{t: t, etcd: testenv.StartEtcd(t), agents: map[string]*agentProc{}}
	e.pg = testenv.NewCluster(t, opts)
	e.stolon = testenv.NewStolon(t, e.etcd, e.pg, testenv.StolonOptions{})
	e.dir = filepath.Join(t.TempDir(), "archive")
	require.NoError(t, os.MkdirAll(e.dir, 0o755))
	b, err := fs.New(e.dir, fs.Options{})
	require.NoError(t, err)
	e.backend = b
	pw := e.pg.ReplPasswordFile(t)
	e.common = append([]string{
		"--cluster-name", cluster,
		"--store-endpoints", strings.Join(e.etcd.Endpoints(), ","),
		"--pg-user", testenv.ReplUser, "--pg-password-file", pw,
		"--lease-ttl", "3s", "--leader-takeover-delay", "3s",
		"--archive-url", "file://" + e.dir,
		"--log-level", "debug",
	}, extraArgs...)
	return e
}

func (e *archiveEnv) startAgents() {
	for _, n := range e.pg.Nodes {
		e.startAgent(e.stolon.KeeperUID(n))
	}
}

func (e *archiveEnv) startAgent(keeper string) *agentProc {
	if a, ok := e.agents[keeper]; ok {
		a.start(e.t)
		return a
	}
	a := newAgentProc(e.t, "agent-"+keeper, append([]string{"--keeper-uid", keeper}, e.common...)...)
	a.env = e.env
	a.start(e.t)
	e.agents[keeper] = a
	return a
}

func (e *archiveEnv) list() []*agentProc {
	var out []*agentProc
	for _, a := range e.agents {
		out = append(out, a)
	}
	return out
}

// leaderFor waits until node's agent leads. The deadline only stops a
// hang: on a machine loaded by parallel scenarios an election after a
// failover (lease TTL, takeover delay, the agents' polling) can take
// several times its quiet length.
func (e *archiveEnv) leaderFor(node *testenv.Node) *agentProc {
	a := e.agents[e.stolon.KeeperUID(node)]
	waitFor(e.t, 60*time.Second, a.name+" to lead", func() bool { return leaderIs(e.list(), a.name) })
	return a
}

// waitArchived waits until the archive holds node's WAL up to its current
// position.
func (e *archiveEnv) waitArchived(node *testenv.Node, within time.Duration) wal.LSN {
	e.t.Helper()
	ctx := e.t.Context()
	cur, err := node.CurrentLSN(ctx)
	require.NoError(e.t, err)
	var end wal.LSN
	waitFor(e.t, within, fmt.Sprintf("the archive to reach %s", wal.LSN(cur)), func() bool {
		end = archiveEnd(e.t, e.backend)
		return end >= wal.LSN(cur)
	})
	return end
}

// archived lists the WAL objects by kind.
type archived struct {
	segments  map[string]bool // complete segment file names
	partials  map[string]bool // segment names that have a .partial
	histories map[string]bool
}

func listWAL(t *testing.T, b storage.Backend) archived {
	t.Helper()
	objs, err := b.List(t.Context(), catalog.WALPrefix(cluster))
	require.NoError(t, err)
	a := archived{segments: map[string]bool{}, partials: map[string]bool{}, histories: map[string]bool{}}
	for _, o := range objs {
		rel := strings.TrimPrefix(o.Name, catalog.WALPrefix(cluster))
		switch base, partial, _ := wal.SplitFileName(rel); {
		case wal.IsHistoryFileName(rel):
			a.histories[rel] = true
		case partial:
			a.partials[base] = true
		case wal.IsSegmentFileName(base):
			a.segments[base] = true
		default:
			t.Errorf("unexpected object in the archive: %s", o.Name)
		}
	}
	return a
}

// archiveEnd is the end of the highest timeline's WAL in the archive.
func archiveEnd(t *testing.T, b storage.Backend) wal.LSN {
	t.Helper()
	objs, err := b.List(t.Context(), catalog.WALPrefix(cluster))
	require.NoError(t, err)
	var bestTLI wal.Timeline
	var end wal.LSN
	for _, o := range objs {
		rel := strings.TrimPrefix(o.Name, catalog.WALPrefix(cluster))
		base, partial, _ := wal.SplitFileName(rel)
		if !wal.IsSegmentFileName(base) {
			continue
		}
		tli, seg, err := wal.ParseSegmentFileName(base, wal.DefaultSegmentSize)
		require.NoError(t, err)
		e := wal.SegmentStart(seg+1, wal.DefaultSegmentSize)
		if partial {
			e = wal.SegmentStart(seg, wal.DefaultSegmentSize) + wal.LSN(o.Size)
		}
		if tli > bestTLI || (tli == bestTLI && e > end) {
			bestTLI, end = tli, e
		}
	}
	return end
}

func readObject(t *testing.T, b storage.Backend, name string) []byte {
	t.Helper()
	data, err := storage.ReadAll(t.Context(), b, name)
	require.NoError(t, err, name)
	return data
}

// requireSameAsServer checks every complete segment of timeline tli in the
// archive against node's pg_wal, and the .partial against the file's
// start. It returns how many segments it compared.
func requireSameAsServer(t *testing.T, b storage.Backend, a archived, node *testenv.Node, tli wal.Timeline) int {
	t.Helper()
	prefix := fmt.Sprintf("%08X", uint32(tli))
	compared := 0
	for name := range a.segments {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		server, err := os.ReadFile(filepath.Join(node.DataDir, "pg_wal", name))
		if os.IsNotExist(err) {
			continue // recycled by the server since
		}
		require.NoError(t, err)
		got := readObject(t, b, catalog.WALPrefix(cluster)+name)
		require.True(t, bytes.Equal(server, got), "archived segment %s differs from the server's", name)
		compared++
	}
	for name := range a.partials {
		if !strings.HasPrefix(name, prefix) || a.segments[name] {
			continue
		}
		// The archive first, then the server: the server may write more
		// WAL (a running-xacts record, a checkpoint) between the two reads,
		// and the receiver may archive it. Every byte the archive holds was
		// flushed by the server before, so a later read of the server's file
		// holds it too; the other order can catch the archive ahead of an
		// earlier read of the server's file.
		got := readObject(t, b, catalog.WALPrefix(cluster)+name+".partial")
		server, err := os.ReadFile(filepath.Join(node.DataDir, "pg_wal", name))
		if os.IsNotExist(err) {
			server, err = os.ReadFile(filepath.Join(node.DataDir, "pg_wal", name+".partial"))
		}
		require.NoError(t, err, name)
		require.LessOrEqual(t, len(got), len(server))
		require.True(t, bytes.Equal(server[:len(got)], got), "archived %s.partial differs from the server's segment", name)
	}
	return compared
}

// requireContiguous checks that timeline tli's segments have no hole.
func requireContiguous(t *testing.T, a archived, tli wal.Timeline) (first, last wal.SegmentNo) {
	t.Helper()
	var segs []int
	for name := range a.segments {
		if got, seg, err := wal.ParseSegmentFileName(name, wal.DefaultSegmentSize); err == nil && got == tli {
			segs = append(segs, int(seg))
		}
	}
	for name := range a.partials {
		if got, seg, err := wal.ParseSegmentFileName(name, wal.DefaultSegmentSize); err == nil && got == tli && !a.segments[name] {
			segs = append(segs, int(seg))
		}
	}
	require.NotEmpty(t, segs, "no segments on timeline %d", tli)
	sort.Ints(segs)
	for i := 1; i < len(segs); i++ {
		require.Equal(t, segs[i-1]+1, segs[i], "segment missing on timeline %d after %X", tli, segs[i-1])
	}
	return wal.SegmentNo(segs[0]), wal.SegmentNo(segs[len(segs)-1])
}

// walGenerator writes WAL fast on node until stopped: bulk inserts in a
// loop, next to testenv's row-per-transaction load.
type walGenerator struct {
	stop chan struct{}
	done chan error
	once sync.Once
	err  error
}

func generateWAL(t *testing.T, node *testenv.Node) *walGenerator {
	t.Helper()
	require.NoError(t, node.Exec(t.Context(), "CREATE TABLE IF NOT EXISTS walgen (id int, v text)"))
	g := &walGenerator{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		for {
			select {
			case <-g.stop:
				g.done <- nil
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := node.Exec(ctx, "INSERT INTO walgen SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g")
			cancel()
			if err != nil {
				g.done <- err
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { _ = g.Stop() })
	return g
}

// Stop ends the generator and returns the error that stopped it early.
func (g *walGenerator) Stop() error {
	g.once.Do(func() {
		close(g.stop)
		g.err = <-g.done
	})
	return g.err
}

// waldump runs pg_waldump over the archived WAL of timeline tli from
// start to end, with the .partial files padded as PostgreSQL would read
// them.
func waldump(t *testing.T, b storage.Backend, a archived, tli wal.Timeline, start, end wal.LSN) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pg_wal")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	prefix := fmt.Sprintf("%08X", uint32(tli))
	for name := range a.segments {
		if strings.HasPrefix(name, prefix) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, name), readObject(t, b, catalog.WALPrefix(cluster)+name), 0o644))
		}
	}
	for name := range a.partials {
		if strings.HasPrefix(name, prefix) && !a.segments[name] {
			data := make([]byte, wal.DefaultSegmentSize)
			copy(data, readObject(t, b, catalog.WALPrefix(cluster)+name+".partial"))
			require.NoError(t, os.WriteFile(filepath.Join(dir, name), data, 0o644))
		}
	}
	testenv.PGOwn(t, dir)
	out, err := testenv.PGCommand(t.Context(), t, "pg_waldump", "-q", "-p", dir, "-t", fmt.Sprint(uint32(tli)),
		"-s", start.String(), "-e", end.String()).CombinedOutput()
	require.NoError(t, err, "pg_waldump on timeline %d from %s to %s:\n%s", tli, start, end, out)
}

// requireArchivedAcrossSwitch checks the archive after a failover to
// newMaster (timeline 2): 00000002.history archived and identical to the
// server's, timeline 1 contiguous up to the switch segment, timeline 2
// contiguous from it and byte-identical to the server's pg_wal. It returns
// the switch point, the listing and timeline 2's last segment.
func requireArchivedAcrossSwitch(t *testing.T, b storage.Backend, newMaster *testenv.Node) (wal.LSN, archived, wal.SegmentNo) {
	t.Helper()
	hist, err := newMaster.TimelineHistory(t.Context())
	require.NoError(t, err)
	require.NotEmpty(t, hist)
	switchPoint := wal.LSN(hist[len(hist)-1].SwitchPoint)
	a := listWAL(t, b)
	require.True(t, a.histories["00000002.history"], "00000002.history is archived")
	serverHistory, err := os.ReadFile(filepath.Join(newMaster.DataDir, "pg_wal", "00000002.history"))
	require.NoError(t, err)
	require.Equal(t, serverHistory, readObject(t, b, catalog.WALPrefix(cluster)+"00000002.history"))
	_, last1 := requireContiguous(t, a, 1)
	require.Equal(t, wal.SegmentOf(switchPoint, wal.DefaultSegmentSize), last1, "timeline 1 is archived up to the switch point %s", switchPoint)
	first2, last2 := requireContiguous(t, a, 2)
	require.Equal(t, wal.SegmentOf(switchPoint, wal.DefaultSegmentSize), first2, "timeline 2 starts at the switch segment")
	require.Positive(t, requireSameAsServer(t, b, a, newMaster, 2))
	return switchPoint, a, last2
}

// TestArchiveAcrossFailover is the WAL archiver end to end: agents as
// processes archive under a write load, survive a kill -9 of the leader,
// and follow a failover across the timeline switch.
func TestArchiveAcrossFailover(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: 2, WALKeepSize: "2GB"})
	env.startAgents()
	primary := env.pg.Primary()
	leader := env.leaderFor(primary)

	load := testenv.StartLoad(t, primary, testenv.LoadOptions{Interval: 5 * time.Millisecond})
	gen := generateWAL(t, primary)
	// 10 s of load fill far more than the segments compared below (the
	// switches after it close six more in any case); a longer load proves
	// nothing more and costs CPU the parallel scenarios share.
	loadFor := 10 * time.Second
	// Half way, kill -9 the leader mid-segment and start it again.
	time.Sleep(loadFor / 2)
	leader.signal(syscall.SIGKILL)
	_, _ = leader.wait(5 * time.Second)
	leader.start(t)
	env.leaderFor(primary)
	time.Sleep(loadFor / 2)
	require.NoError(t, gen.Stop())
	rows, _, err := load.Stop()
	require.NoError(t, err)
	// Complete segments to compare however little the load wrote on a
	// busy machine: each write and switch closes one.
	for range 6 {
		require.NoError(t, primary.Exec(ctx, "INSERT INTO walgen VALUES (0, 'switch')"))
		require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
	}
	require.NoError(t, primary.Exec(ctx, "CHECKPOINT"))
	end1 := env.waitArchived(primary, 60*time.Second)

	a := listWAL(t, env.backend)
	first, last := requireContiguous(t, a, 1)
	compared := requireSameAsServer(t, env.backend, a, primary, 1)
	t.Logf("%d rows written; timeline 1 archived from segment %X to %X (%d complete segments byte-identical to pg_wal), end %s",
		rows, first, last, compared, end1)
	require.Greater(t, compared, 5, "the load should have filled several segments")
	id, err := catalog.ReadIdentity(ctx, env.backend, cluster)
	require.NoError(t, err)
	sysID, err := primary.SystemID(ctx)
	require.NoError(t, err)
	require.Equal(t, sysID, id.SystemID)

	// The leader publishes what it archived; the followers' standby slots
	// follow it, never past it.
	standby := env.pg.Standbys()[0]
	waitFor(t, 15*time.Second, "the standby slot to reach the archived position", func() bool {
		s, err := standby.QueryString(ctx, "select coalesce(restart_lsn::text, '') from pg_replication_slots where slot_name = 'barnacle'")
		if err != nil || s == "" {
			return false
		}
		lsn, err := wal.ParseLSN(s)
		// Never past what the archive holds (which grows on: checkpoints
		// and background records keep writing WAL).
		return err == nil && lsn >= wal.SegmentStart(wal.SegmentOf(end1, wal.DefaultSegmentSize), wal.DefaultSegmentSize) &&
			lsn <= archiveEnd(t, env.backend)
	})

	// Failover: WAL written just before the master dies must be archived
	// too, then the new master's timeline.
	load = testenv.StartLoad(t, primary, testenv.LoadOptions{Interval: 5 * time.Millisecond})
	time.Sleep(2 * time.Second)
	require.NoError(t, primary.Kill())
	_, _, _ = load.Stop()
	require.NoError(t, env.stolon.Failover(ctx, standby))
	env.leaderFor(standby)
	require.NoError(t, standby.Exec(ctx, "INSERT INTO walgen SELECT g, repeat('y', 200) FROM generate_series(1, 50000) g"))
	require.NoError(t, standby.Exec(ctx, "SELECT pg_switch_wal()"))
	env.waitArchived(standby, 30*time.Second)

	switchPoint, a, _ := requireArchivedAcrossSwitch(t, env.backend, standby)
	waldump(t, env.backend, a, 1, wal.SegmentStart(first, wal.DefaultSegmentSize), switchPoint)
	// The archive keeps growing: take its end first, then a listing that
	// holds everything up to that end.
	end2 := archiveEnd(t, env.backend)
	waldump(t, env.backend, listWAL(t, env.backend), 2, switchPoint, end2)
	gaps, err := catalog.ReadGaps(ctx, env.backend, cluster)
	require.NoError(t, err)
	require.Empty(t, gaps)

	// The leader's record says what it archived.
	resp, err := env.etcd.Client(t).Get(ctx, coordinator.NewKeys("barnacle", cluster).Agent(env.agents[env.stolon.KeeperUID(standby)].name))
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	var rec coordinator.AgentStatus
	require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &rec))
	assert.Equal(t, "leader", rec.Role)
	assert.Equal(t, uint32(2), rec.Timeline)
	assert.NotEmpty(t, rec.ArchivedLSN)
	t.Logf("after failover: switch point %s, timeline 2 archived to %s; leader record archived=%s", switchPoint, end2, rec.ArchivedLSN)
}

// TestForcedGap: WAL the archive needs is gone from the new master. With
// standby slots the promoted standby still has it; without them the gap is
// recorded, alarmed, a base backup is requested, and archiving goes on.
func TestForcedGap(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		standbySlots bool
		// standbys: with 2, the second standby still has the old timeline's
		// WAL (it makes no restartpoint) and the leader fetches it there.
		standbys int
		wantGap  bool
	}{
		{"standby slots keep the wal", true, 1, false},
		{"without standby slots the gap is recorded", false, 1, true},
		{"another standby still has the wal", false, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			env := newArchiveEnv(t, testenv.ClusterOptions{Standbys: tc.standbys, WALKeepSize: "0",
				Params: map[string]string{"min_wal_size": "'32MB'", "max_wal_size": "'64MB'"}},
				fmt.Sprintf("--standby-slots=%t", tc.standbySlots))
			env.startAgents()
			primary, standby := env.pg.Primary(), env.pg.Standbys()[0]
			env.leaderFor(primary)
			require.NoError(t, primary.Exec(ctx, "CREATE TABLE walgen (id int, v text)"))
			require.NoError(t, primary.Exec(ctx, "INSERT INTO walgen SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g"))
			if tc.wantGap {
				// A done backup before the gap: WAL continuity from it
				// fails until the backup after the gap is done, then
				// passes with the gap as history.
				store := env.store()
				_, stderr, code := barnacle(t, append([]string{"backup", "--wait", "--label", "before-gap"}, store...)...)
				require.Equal(t, 0, code, "backup --wait: %s", stderr)
				// Only the leader's request after the gap is looked for below.
				_, err := env.etcd.Client(t).Delete(ctx, coordinator.NewKeys("barnacle", cluster).Prefix+"requests/backup/", clientv3.WithPrefix())
				require.NoError(t, err)
			}
			end := env.waitArchived(primary, 20*time.Second)
			if tc.standbySlots {
				waitFor(t, 15*time.Second, "the standby slot to follow the archive", func() bool {
					s, err := standby.QueryString(ctx, "select coalesce(restart_lsn::text, '') from pg_replication_slots where slot_name = 'barnacle'")
					lsn, perr := wal.ParseLSN(s)
					return err == nil && perr == nil && lsn >= wal.SegmentStart(wal.SegmentOf(end, wal.DefaultSegmentSize), wal.DefaultSegmentSize)
				})
			}
			// Every agent stops: nothing archives while the master writes
			// on and both servers recycle their WAL.
			for _, a := range env.agents {
				a.signal(syscall.SIGKILL)
				_, _ = a.wait(5 * time.Second)
			}
			rounds := 6
			if tc.standbys > 1 {
				rounds = 2 // below max_wal_size: the other standby makes no restartpoint
			}
			for range rounds {
				require.NoError(t, primary.Exec(ctx, "INSERT INTO walgen SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g"))
				require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
			}
			require.NoError(t, primary.Exec(ctx, "CHECKPOINT"))
			cur, err := primary.CurrentLSN(ctx)
			require.NoError(t, err)
			waitFor(t, 20*time.Second, "the standby to replay", func() bool {
				replayed, err := standby.QueryInt64(ctx, "select (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")
				return err == nil && uint64(replayed) >= cur
			})
			require.NoError(t, standby.Exec(ctx, "CHECKPOINT"))
			require.NoError(t, primary.Kill())
			require.NoError(t, env.stolon.Failover(ctx, standby))
			newLeader := env.agents[env.stolon.KeeperUID(standby)]
			alarm := sampleGapAlarm(t, env, newLeader)
			env.startAgents()
			env.leaderFor(standby)
			require.NoError(t, standby.Exec(ctx, "INSERT INTO walgen SELECT g, 'after' FROM generate_series(1, 1000) g"))
			env.waitArchived(standby, 30*time.Second)

			gaps, err := catalog.ReadGaps(ctx, env.backend, cluster)
			require.NoError(t, err)
			reqs, err := env.etcd.Client(t).Get(ctx, coordinator.NewKeys("barnacle", cluster).Prefix+"requests/backup/", clientv3.WithPrefix())
			require.NoError(t, err)
			metrics := scrape(t, env.agents[env.stolon.KeeperUID(standby)])
			if !tc.wantGap {
				require.Empty(t, gaps, "standby slots must keep the WAL the archive lacks")
				require.Empty(t, reqs.Kvs)
				require.Contains(t, metrics, "barnacle_wal_gap_bytes 0\n")
				a := listWAL(t, env.backend)
				requireContiguous(t, a, 1)
				requireContiguous(t, a, 2)
				if tc.standbys > 1 {
					leaderLog, err := os.ReadFile(env.agents[env.stolon.KeeperUID(standby)].logPath)
					require.NoError(t, err)
					require.Contains(t, string(leaderLog), "fetched missing wal from another keeper", "the WAL came from the other standby")
				}
				return
			}
			require.Len(t, gaps, 1, "the gap is recorded in gaps.json")
			g := gaps[0]
			assert.Equal(t, wal.Timeline(1), g.Timeline)
			assert.Equal(t, end, g.StartLSN, "the gap starts where the archive ended")
			assert.Positive(t, g.Bytes)
			require.Len(t, reqs.Kvs, 1, "a base backup is requested")
			assert.Contains(t, string(reqs.Kvs[0].Value), `"from":"any"`)
			assert.Contains(t, metrics, fmt.Sprintf("barnacle_wal_gap_bytes %g\n", float64(g.Bytes)))
			t.Logf("gap recorded: %+v; request %s", g, reqs.Kvs[0].Key)

			// The leader takes the backup it asked for, with no operator
			// step; until it is done the gap stays in the leader's record
			// and /readyz, then both clear.
			keys := coordinator.NewKeys("barnacle", cluster)
			id := strings.TrimPrefix(string(reqs.Kvs[0].Key), keys.Prefix+"requests/backup/")
			var st request.BackupStatus
			waitFor(t, 90*time.Second, "the backup after the gap", func() bool {
				resp, err := env.etcd.Client(t).Get(ctx, reqKeys(keys).Status(request.KindBackup, id))
				if err != nil || len(resp.Kvs) == 0 {
					return false
				}
				require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &st))
				return st.FinishedAt != nil
			})
			require.Equal(t, request.StateDone, st.State, "status of %s: %s", id, st.Error)
			doc, err := catalog.ReadBackup(ctx, env.backend, cluster, st.Result.ID)
			require.NoError(t, err)
			assert.GreaterOrEqual(t, doc.StartLSN, g.EndLSN, "the backup starts after the gap")
			waitFor(t, 20*time.Second, "the gap alarm to end", func() bool {
				rec := leaderRecord(t, env, newLeader.name)
				code, _ := readyz(newLeader)
				return rec.Role == "leader" && !strings.Contains(rec.LastError, "wal gap") && code == 200
			})
			sawRecord, sawReadyz := alarm.Stop()
			assert.True(t, sawRecord, "while streaming after the gap, the leader's lastError named it")
			assert.True(t, sawReadyz, "while streaming after the gap, /readyz answered 503 naming it")
			// Resolved: gaps.json keeps the gap as history, the gauges
			// count it no more, and WAL continuity from the backup before
			// the gap passes, naming it.
			waitFor(t, 20*time.Second, "the gap gauges to drop to 0", func() bool {
				m := scrape(t, env.agents[env.stolon.KeeperUID(standby)])
				return strings.Contains(m, "barnacle_wal_gap_bytes 0\n") && strings.Contains(m, "barnacle_wal_gaps 0\n")
			})
			gaps, err = catalog.ReadGaps(ctx, env.backend, cluster)
			require.NoError(t, err)
			assert.Len(t, gaps, 1, "gaps.json keeps the gap")
			js, _ := runCheck(t, env, "--json")
			var results []check.Result
			require.NoError(t, json.Unmarshal([]byte(js), &results), js)
			var continuity *check.Result
			for i := range results {
				if results[i].Name == check.NameWALContinuity {
					continuity = &results[i]
				}
			}
			require.NotNil(t, continuity, js)
			assert.True(t, continuity.OK, "WAL continuity after the backup after the gap: %s", continuity.Hint)
			assert.Contains(t, continuity.Detail, "is history")
			t.Logf("WAL continuity: %s", continuity.Detail)
			t.Logf("backup %s after the gap: start %s, gap end %s", doc.ID, doc.StartLSN, g.EndLSN)
		})
	}
}

// gapAlarmSampler watches a leader's record and /readyz for the gap alarm
// while it streams.
type gapAlarmSampler struct {
	stop                 chan struct{}
	done                 chan struct{}
	sawRecord, sawReadyz bool
}

func sampleGapAlarm(t *testing.T, env *archiveEnv, a *agentProc) *gapAlarmSampler {
	t.Helper()
	s := &gapAlarmSampler{stop: make(chan struct{}), done: make(chan struct{})}
	cli := env.etcd.Client(t)
	key := coordinator.NewKeys("barnacle", cluster).Agent(a.name)
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			resp, err := cli.Get(ctx, key)
			cancel()
			var rec coordinator.AgentStatus
			if err == nil && len(resp.Kvs) == 1 && json.Unmarshal(resp.Kvs[0].Value, &rec) == nil &&
				rec.Streaming && rec.ArchivedLSN != wal.InvalidLSN && strings.Contains(rec.LastError, "wal gap") {
				s.sawRecord = true
			}
			if code, body := readyz(a); code == 503 && strings.Contains(body, "wal gap") {
				s.sawReadyz = true
			}
		}
	}()
	t.Cleanup(func() { s.Stop() })
	return s
}

// Stop ends the sampling and says what it saw.
func (s *gapAlarmSampler) Stop() (sawRecord, sawReadyz bool) {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	return s.sawRecord, s.sawReadyz
}

// readyz returns the agent's /readyz status code and body; 0 when it does
// not answer.
func readyz(a *agentProc) (int, string) {
	resp, err := httpClient.Get("http://" + a.metrics + "/readyz")
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

func scrape(t *testing.T, a *agentProc) string {
	t.Helper()
	resp, err := httpClient.Get("http://" + a.metrics + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	require.NoError(t, err)
	return b.String()
}

// backupWait runs `barnacle backup --wait --json` with args (the store
// flags, and more) and returns the status it prints, that of a done backup.
func backupWait(t *testing.T, args ...string) request.BackupStatus {
	t.Helper()
	out, stderr, code := barnacle(t, append([]string{"backup", "--wait", "--json"}, args...)...)
	require.Equal(t, 0, code, "backup --wait: %s %s", out, stderr)
	var st request.BackupStatus
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.Equal(t, request.StateDone, st.State, st.Error)
	require.NotNil(t, st.Result, out)
	return st
}

// store is the flags that name the cluster and its etcd, for the CLI's
// request commands.
func (e *archiveEnv) store() []string {
	return []string{"--cluster-name", cluster, "--store-endpoints", strings.Join(e.etcd.Endpoints(), ",")}
}

// scratchRoot makes an empty directory for restores or drills (name),
// owned by the OS user PostgreSQL runs as, as restore-root must be.
func scratchRoot(t *testing.T, name string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.MkdirAll(root, 0o755))
	testenv.PGOwn(t, root)
	return root
}

// newPostgresReadableEnv is an archive environment of one primary whose
// archive PostgreSQL's user can read (for a restored server's
// restore_command), with its agent leading.
func newPostgresReadableEnv(t *testing.T) (env *archiveEnv, leader *agentProc, primary *testenv.Node) {
	t.Helper()
	env = newArchiveEnv(t, testenv.ClusterOptions{})
	shareArchiveWithPostgres(t, env.dir)
	env.startAgents()
	primary = env.pg.Primary()
	return env, env.leaderFor(primary), primary
}
