package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func keysOf(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func obj(t *testing.T, v any, path string) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	require.Truef(t, ok, "%s is %T, want an object", path, v)
	return m
}

func decodeMap(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	return m
}

// dbShape returns the field names of a db entry: its own, spec's, status'.
func dbShape(t *testing.T, db map[string]any) [3][]string {
	return [3][]string{keysOf(db), keysOf(obj(t, db["spec"], "spec")), keysOf(obj(t, db["status"], "status"))}
}

func keeperShape(t *testing.T, k map[string]any) [2][]string {
	return [2][]string{keysOf(k), keysOf(obj(t, k["status"], "status"))}
}

// slotState returns restart_lsn IS NULL for slot name, or ok=false.
func slotState(ctx context.Context, n *Node, name string) (exists, restartNull bool, err error) {
	var isNull bool
	err = n.QueryRow(ctx, "SELECT restart_lsn IS NULL FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&isNull)
	if err != nil {
		if isNoRows(err) {
			return false, false, nil
		}
		return false, false, err
	}
	return true, isNull, nil
}

func isNoRows(err error) bool {
	return err != nil && regexp.MustCompile(`no rows in result set`).MatchString(err.Error())
}

func waitRows(t *testing.T, ctx context.Context, n *Node, table string, want int64) {
	t.Helper()
	eventually(t, 15*time.Second, fmt.Sprintf("%s has %d rows in %s", n.Name, want, table), func() error {
		got, err := n.QueryInt64(ctx, "SELECT count(*) FROM "+table)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("%d rows", got)
		}
		return nil
	})
}

// TestStolon runs one cluster through the simulator's life: initial
// clusterdata, additional master slots, failover, rejoin. The subtests
// build on each other.
func TestStolon(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	etcd := StartEtcd(t)
	c := NewCluster(t, ClusterOptions{Standbys: 2})
	s := NewStolon(t, etcd, c, StolonOptions{UpdateInterval: 200 * time.Millisecond, PromoteDelay: time.Second})
	cli := etcd.Client(t)
	require.Equal(t, "stolon/cluster/stolon-cluster/clusterdata", s.Key())
	p, s1, s2 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	require.NoError(t, p.Exec(ctx, "CREATE TABLE t (v int)"))

	t.Run("initial clusterdata has Stolon's shape", func(t *testing.T) {
		raw, err := s.Snapshot(ctx)
		require.NoError(t, err)
		got := decodeMap(t, raw)
		tmpl := decodeMap(t, stolonClusterdataTemplate)

		assert.Equal(t, keysOf(tmpl), keysOf(got), "top level")
		gc, tc := obj(t, got["cluster"], "cluster"), obj(t, tmpl["cluster"], "cluster")
		assert.Equal(t, keysOf(tc), keysOf(gc), "cluster")
		assert.Equal(t, keysOf(obj(t, tc["spec"], "spec")), keysOf(obj(t, gc["spec"], "spec")), "cluster.spec")
		assert.Equal(t, keysOf(obj(t, tc["status"], "status")), keysOf(obj(t, gc["status"], "status")), "cluster.status")
		assert.Equal(t, keysOf(obj(t, tmpl["proxy"], "proxy")), keysOf(obj(t, got["proxy"], "proxy")), "proxy")

		tmplShape := map[string][3][]string{}
		for _, v := range obj(t, tmpl["dbs"], "dbs") {
			db := obj(t, v, "db")
			tmplShape[obj(t, db["spec"], "spec")["role"].(string)] = dbShape(t, db)
		}
		var tk map[string]any
		for _, v := range obj(t, tmpl["keepers"], "keepers") {
			tk = obj(t, v, "keeper")
		}

		keepers := obj(t, got["keepers"], "keepers")
		assert.Equal(t, []string{"keeper0", "keeper1", "keeper2"}, keysOf(keepers))
		for uid, v := range keepers {
			k := obj(t, v, uid)
			assert.Equal(t, keeperShape(t, tk), keeperShape(t, k), "keeper %s", uid)
			assert.Equal(t, true, obj(t, k["status"], "status")["healthy"])
		}

		sys, err := p.SystemID(ctx)
		require.NoError(t, err)
		master := gc["status"].(map[string]any)["master"].(string)
		dbs := obj(t, got["dbs"], "dbs")
		require.Len(t, dbs, 3)
		byKeeper := map[string]string{}
		for uid, v := range dbs {
			db := obj(t, v, uid)
			spec, status := obj(t, db["spec"], "spec"), obj(t, db["status"], "status")
			assert.Regexp(t, `^[0-9a-f]{8}$`, uid)
			assert.Equal(t, tmplShape[spec["role"].(string)], dbShape(t, db), "db %s (%s)", uid, spec["role"])
			assert.IsType(t, "", status["port"], "port must be a string")
			assert.Equal(t, "127.0.0.1", status["listenAddress"])
			assert.Equal(t, sys, status["systemdID"])
			assert.EqualValues(t, 1, status["timelineID"])
			assert.Greater(t, status["xLogPos"].(float64), float64(0))
			assert.Equal(t, db["generation"], status["currentGeneration"])
			byKeeper[spec["keeperUID"].(string)] = uid
			if uid == master {
				assert.Equal(t, "master", spec["role"])
			} else {
				assert.Equal(t, "standby", spec["role"])
				assert.Equal(t, map[string]any{"type": "internal", "dbuid": master}, spec["followConfig"])
			}
		}
		assert.Equal(t, byKeeper["keeper0"], master)
		assert.Equal(t, "keeper0", s.MasterKeeper())
		assert.Equal(t, fmt.Sprint(p.Port), obj(t, dbs[master], "db")["status"].(map[string]any)["port"])
		assert.Equal(t, master, obj(t, obj(t, got["proxy"], "proxy")["spec"], "proxy.spec")["masterDbUid"])
	})

	t.Run("additional master slots", func(t *testing.T) {
		require.ErrorContains(t, s.SetAdditionalMasterSlots(ctx, []string{"stolon_x"}), "reserved")
		require.ErrorContains(t, s.SetAdditionalMasterSlots(ctx, []string{"Bad-Name"}), "wrong replication slot name")

		// A stolon_ slot nobody wants is dropped; other slots are kept.
		require.NoError(t, p.Exec(ctx, "SELECT pg_create_physical_replication_slot('stolon_manual_test')"))
		require.NoError(t, p.Exec(ctx, "SELECT pg_create_physical_replication_slot('manual_slot')"))
		require.NoError(t, s.SetAdditionalMasterSlots(ctx, []string{"barman_slot"}))
		eventually(t, 10*time.Second, "stolon_barman_slot on the master", func() error {
			ok, null, err := slotState(ctx, p, "stolon_barman_slot")
			if err != nil || !ok {
				return fmt.Errorf("exists=%v err=%v", ok, err)
			}
			if !null {
				return fmt.Errorf("restart_lsn is set; the keeper creates slots without reserving WAL")
			}
			if ok, _, _ := slotState(ctx, p, "stolon_manual_test"); ok {
				return fmt.Errorf("stolon_manual_test not dropped yet")
			}
			return nil
		})
		ok, _, err := slotState(ctx, p, "manual_slot")
		require.NoError(t, err)
		assert.True(t, ok, "non-stolon slots are kept")
		for _, f := range []*Node{s1, s2} {
			ok, _, err := slotState(ctx, p, "stolon_"+s.DBUID(f))
			require.NoError(t, err)
			assert.True(t, ok, "follower slot for %s", f.Name)
			ok, _, err = slotState(ctx, f, "stolon_barman_slot")
			require.NoError(t, err)
			assert.False(t, ok, "no stolon_barman_slot on standby %s", f.Name)
		}
		require.NoError(t, p.Exec(ctx, "SELECT pg_drop_replication_slot('manual_slot')"))

		raw, err := s.Snapshot(ctx)
		require.NoError(t, err)
		cd, err := decodeClusterdata(raw)
		require.NoError(t, err)
		assert.JSONEq(t, `["barman_slot"]`, string(cd.Cluster.Spec.vals["additionalMasterReplicationSlots"]))
		assert.Equal(t, []string{"barman_slot"}, cd.DBs[cd.Cluster.Status.Master].Spec.AdditionalReplicationSlots)
		for uid, db := range cd.DBs {
			if uid != cd.Cluster.Status.Master {
				assert.Nil(t, db.Spec.AdditionalReplicationSlots)
			}
		}
	})

	t.Run("failover", func(t *testing.T) {
		resp, err := cli.Get(ctx, s.Key())
		require.NoError(t, err)
		rev := resp.Kvs[0].ModRevision
		oldMaster := s.MasterDBUID()
		s1UID, s2UID := s.DBUID(s1), s.DBUID(s2)

		// Watch clusterdata: when it first names keeper1's DB master, s1
		// must still be in recovery (election before promotion).
		wctx, wcancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var electedSeen, inRecoveryAtElection bool
		var proxyAtElection string
		var recErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			for wr := range cli.Watch(wctx, s.Key(), clientv3.WithRev(rev+1)) {
				for _, ev := range wr.Events {
					cd, err := decodeClusterdata(ev.Kv.Value)
					if err != nil || cd.Cluster.Status.Master != s1UID {
						continue
					}
					mu.Lock()
					if !electedSeen {
						electedSeen = true
						proxyAtElection = cd.Proxy.Spec.MasterDBUID
						inRecoveryAtElection, recErr = s1.IsInRecovery(ctx)
					}
					mu.Unlock()
				}
			}
		}()

		require.NoError(t, p.Kill())
		start := time.Now()
		require.NoError(t, s.Failover(ctx, s1))
		t.Logf("failover took %s", time.Since(start))
		wcancel()
		wg.Wait()

		mu.Lock()
		assert.True(t, electedSeen, "watch saw the election")
		require.NoError(t, recErr)
		assert.True(t, inRecoveryAtElection, "clusterdata named the new master before it was promoted")
		assert.Equal(t, "", proxyAtElection, "proxy.spec.masterDbUid is cleared at election")
		mu.Unlock()

		assert.Same(t, s1, c.Primary())
		assert.Equal(t, "keeper1", s.MasterKeeper())
		tli, err := s1.Timeline(ctx)
		require.NoError(t, err)
		assert.EqualValues(t, 2, tli)

		raw, err := s.Snapshot(ctx)
		require.NoError(t, err)
		cd, err := decodeClusterdata(raw)
		require.NoError(t, err)
		assert.Equal(t, s1UID, cd.Cluster.Status.Master)
		assert.NotContains(t, cd.DBs, oldMaster, "old master db removed")
		assert.Nil(t, cd.findDB("keeper0"))
		assert.False(t, cd.Keepers["keeper0"].Status.Healthy)
		m := cd.DBs[s1UID]
		require.NotNil(t, m)
		assert.Equal(t, "master", m.Spec.Role)
		assert.Nil(t, m.Spec.FollowConfig)
		assert.Equal(t, []string{s2UID}, m.Spec.Followers)
		assert.True(t, m.Status.Healthy)
		assert.Equal(t, m.Generation, m.Status.CurrentGeneration, "converged")
		assert.EqualValues(t, 2, m.Status.TimelineID)
		require.Len(t, m.Status.TimelinesHistory, 1)
		assert.EqualValues(t, 1, m.Status.TimelinesHistory[0].TimelineID)
		assert.Equal(t, s1UID, cd.Proxy.Spec.MasterDBUID)
		sb := cd.DBs[s2UID]
		require.NotNil(t, sb, "the remaining standby keeps its db uid, as in the recorded failover")
		assert.Equal(t, &cdFollowConfig{Type: "internal", DBUID: s1UID}, sb.Spec.FollowConfig)

		ok, null, err := slotState(ctx, s1, "stolon_barman_slot")
		require.NoError(t, err)
		assert.True(t, ok && null, "stolon_barman_slot on the new master, restart_lsn NULL")

		n, err := s1.QueryInt64(ctx, "SELECT count(*) FROM t")
		require.NoError(t, err)
		require.NoError(t, s1.Exec(ctx, "INSERT INTO t SELECT generate_series(1, 10)"))
		waitRows(t, ctx, s2, "t", n+10)
		tli, err = s2.Timeline(ctx)
		require.NoError(t, err)
		assert.EqualValues(t, 2, tli)
	})

	t.Run("rejoin", func(t *testing.T) {
		require.NoError(t, c.Rejoin(ctx, p, s1))
		require.NoError(t, s.Rejoin(ctx, p))
		uid := s.DBUID(p)
		require.NotEmpty(t, uid)
		raw, err := s.Snapshot(ctx)
		require.NoError(t, err)
		cd, err := decodeClusterdata(raw)
		require.NoError(t, err)
		db := cd.DBs[uid]
		require.NotNil(t, db)
		assert.Equal(t, "standby", db.Spec.Role)
		assert.Equal(t, s.MasterDBUID(), db.Spec.FollowConfig.DBUID)
		assert.Contains(t, cd.DBs[s.MasterDBUID()].Spec.Followers, uid)
		eventually(t, 10*time.Second, "slot for the rejoined standby", func() error {
			if ok, _, err := slotState(ctx, s1, "stolon_"+uid); err != nil || !ok {
				return fmt.Errorf("exists=%v err=%v", ok, err)
			}
			return nil
		})
		n, err := s1.QueryInt64(ctx, "SELECT count(*) FROM t")
		require.NoError(t, err)
		require.NoError(t, s1.Exec(ctx, "INSERT INTO t VALUES (42)"))
		waitRows(t, ctx, p, "t", n+1)
	})
}

// Another writer (stolonctl update, an agent) patching the cluster spec
// between the simulator's writes must not be lost: the simulator re-reads
// and retries its CAS, and acts on the patch like the sentinel.
func TestStolonHonoursExternalSpecPatch(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	etcd := StartEtcd(t)
	c := NewCluster(t, ClusterOptions{})
	s := NewStolon(t, etcd, c, StolonOptions{ClusterName: "other", StorePrefix: "custom/prefix", UpdateInterval: 100 * time.Millisecond})
	require.Equal(t, "custom/prefix/other/clusterdata", s.Key())
	cli := etcd.Client(t)

	// stolonctl update --patch: read, patch, CAS on mod revision, retry.
	for attempt := 0; ; attempt++ {
		require.Less(t, attempt, 20)
		resp, err := cli.Get(ctx, s.Key())
		require.NoError(t, err)
		cd := decodeMap(t, resp.Kvs[0].Value)
		obj(t, obj(t, cd["cluster"], "cluster")["spec"], "spec")["additionalMasterReplicationSlots"] = []string{"ext_slot"}
		b, err := json.Marshal(cd)
		require.NoError(t, err)
		tx, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.Key()), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(s.Key(), string(b))).Commit()
		require.NoError(t, err)
		if tx.Succeeded {
			break
		}
	}
	eventually(t, 10*time.Second, "stolon_ext_slot on the master", func() error {
		ok, null, err := slotState(ctx, c.Primary(), "stolon_ext_slot")
		if err != nil || !ok || !null {
			return fmt.Errorf("exists=%v restart_lsn_null=%v err=%v", ok, null, err)
		}
		return nil
	})
	raw, err := s.Snapshot(ctx)
	require.NoError(t, err)
	cd, err := decodeClusterdata(raw)
	require.NoError(t, err)
	m := cd.DBs[cd.Cluster.Status.Master]
	assert.Equal(t, []string{"ext_slot"}, m.Spec.AdditionalReplicationSlots)
	eventually(t, 10*time.Second, "master converged", func() error {
		raw, err := s.Snapshot(ctx)
		if err != nil {
			return err
		}
		cd, err := decodeClusterdata(raw)
		if err != nil {
			return err
		}
		m := cd.DBs[cd.Cluster.Status.Master]
		if m.Status.CurrentGeneration != m.Generation {
			return fmt.Errorf("generation %d, current %d", m.Generation, m.Status.CurrentGeneration)
		}
		return nil
	})
}

func TestExpandDataDir(t *testing.T) {
	for in, want := range map[string]string{
		"barnacle restore --target-dir %d":    "barnacle restore --target-dir /data/postgres",
		"echo 100%% > %d/x":                   "echo 100% > /data/postgres/x",
		"trailing %":                          "trailing %",
		"%f stays for restore_command, %d ok": "%f stays for restore_command, /data/postgres ok",
	} {
		if got := expandDataDir(in, "/data/postgres"); got != want {
			t.Errorf("expandDataDir(%q) = %q, want %q", in, got, want)
		}
	}
}
