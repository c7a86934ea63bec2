package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrClusterdataModified is returned when the clusterdata key kept changing
// under a compare-and-swap write, three times in a row (stolonctl's limit).
var ErrClusterdataModified = errors.New("testenv: clusterdata modified concurrently")

// StolonOptions configures NewStolon.
type StolonOptions struct {
	// ClusterName is Stolon's --cluster-name; default "stolon-cluster".
	ClusterName string
	// StorePrefix is Stolon's --store-prefix; default "stolon/cluster"
	// (no leading slash, like Stolon's).
	StorePrefix string
	// KeeperUIDs name the keepers of Cluster.Nodes, in order; default
	// the node names keeper0..keeperN.
	KeeperUIDs []string
	// UpdateInterval is how often the simulated sentinel and keepers
	// refresh status (xLogPos, timeline, healthy) and replication slots;
	// default 1s.
	UpdateInterval time.Duration
	// PromoteDelay is the time between the clusterdata write that elects
	// the new master and its promotion; default 1s.
	PromoteDelay time.Duration
}

// Stolon plays the part of Stolon's sentinel and keepers for a Cluster: it
// keeps <StorePrefix>/<ClusterName>/clusterdata in Stolon's exact JSON
// format (cloned from a recorded value), refreshes the DB statuses, keeps
// the stolon_* replication slots as the keeper does, and fails over the
// way the sentinel and keeper do: clusterdata first, promotion a moment
// later. Every write is a compare-and-swap on the key's mod revision, like
// Stolon's AtomicPutClusterData. Keeper, sentinel and proxy info keys are
// not written.
type Stolon struct {
	t          testing.TB
	cli        *clientv3.Client
	c          *Cluster
	opts       StolonOptions
	key        string
	keeperUIDs map[*Node]string
	pgVersion  cdPGVersion

	tmplKeeper  *cdKeeper
	tmplMaster  *cdDB
	tmplStandby *cdDB

	// mu serializes the simulator's writers: updater, Failover, Rejoin,
	// SetAdditionalMasterSlots.
	mu sync.Mutex

	curMu sync.Mutex
	cur   *cdData

	kick    chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}
	lastErr string
}

var replSlotNameRE = regexp.MustCompile(`^[a-z0-9_]+$`)

// NewStolon writes the initial clusterdata for c (c.Primary() is master,
// every other node a standby following it, all healthy and converged) and
// starts the updater, which t.Cleanup stops. It fails the test if the key
// already exists.
func NewStolon(t testing.TB, etcd *Etcd, c *Cluster, opts StolonOptions) *Stolon {
	t.Helper()
	if opts.ClusterName == "" {
		opts.ClusterName = "stolon-cluster"
	}
	if opts.StorePrefix == "" {
		opts.StorePrefix = "stolon/cluster"
	}
	if opts.UpdateInterval <= 0 {
		opts.UpdateInterval = time.Second
	}
	if opts.PromoteDelay <= 0 {
		opts.PromoteDelay = time.Second
	}
	if len(opts.KeeperUIDs) == 0 {
		for _, n := range c.Nodes {
			opts.KeeperUIDs = append(opts.KeeperUIDs, n.Name)
		}
	}
	if len(opts.KeeperUIDs) != len(c.Nodes) {
		t.Fatalf("NewStolon: %d keeper UIDs for %d nodes", len(opts.KeeperUIDs), len(c.Nodes))
	}
	s := &Stolon{
		t:          t,
		cli:        etcd.Client(t),
		c:          c,
		opts:       opts,
		key:        path.Join(opts.StorePrefix, opts.ClusterName, "clusterdata"),
		keeperUIDs: map[*Node]string{},
		pgVersion:  postgresVersion(c.env),
		kick:       make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
	for i, n := range c.Nodes {
		s.keeperUIDs[n] = opts.KeeperUIDs[i]
	}
	if err := s.loadTemplate(); err != nil {
		t.Fatalf("NewStolon: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.create(ctx); err != nil {
		t.Fatalf("NewStolon: %v", err)
	}
	uctx, ucancel := context.WithCancel(context.Background())
	s.cancel = ucancel
	go s.updater(uctx)
	t.Cleanup(func() {
		s.cancel()
		<-s.done
	})
	return s
}

func (s *Stolon) loadTemplate() error {
	tmpl, err := decodeClusterdata(stolonClusterdataTemplate)
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	for _, uid := range sortedKeys(tmpl.Keepers) {
		s.tmplKeeper = tmpl.Keepers[uid]
		break
	}
	for _, uid := range sortedKeys(tmpl.DBs) {
		db := tmpl.DBs[uid]
		switch {
		case db.Spec.Role == "master" && s.tmplMaster == nil:
			s.tmplMaster = db
		case db.Spec.Role == "standby" && s.tmplStandby == nil:
			s.tmplStandby = db
		}
	}
	if s.tmplKeeper == nil || s.tmplMaster == nil || s.tmplStandby == nil {
		return errors.New("template: needs a keeper, a master db and a standby db")
	}
	return nil
}

// Key returns the clusterdata key, e.g. "stolon/cluster/stolon-cluster/clusterdata".
func (s *Stolon) Key() string { return s.key }

// KeeperUID returns the keeper UID of node n.
func (s *Stolon) KeeperUID(n *Node) string { return s.keeperUIDs[n] }

// MasterKeeper returns the keeper UID of the master DB (cluster.status.master)
// in the last clusterdata the simulator wrote.
func (s *Stolon) MasterKeeper() string {
	s.curMu.Lock()
	defer s.curMu.Unlock()
	if db := s.cur.DBs[s.cur.Cluster.Status.Master]; db != nil {
		return db.Spec.KeeperUID
	}
	return ""
}

// MasterDBUID returns cluster.status.master of the last clusterdata the
// simulator wrote.
func (s *Stolon) MasterDBUID() string {
	s.curMu.Lock()
	defer s.curMu.Unlock()
	return s.cur.Cluster.Status.Master
}

// DBUID returns the UID of n's DB in the last clusterdata the simulator
// wrote ("" when n's keeper has none, e.g. a failed old master). DB UIDs
// change when a keeper is resynced.
func (s *Stolon) DBUID(n *Node) string {
	s.curMu.Lock()
	defer s.curMu.Unlock()
	if db := s.cur.findDB(s.keeperUIDs[n]); db != nil {
		return db.UID
	}
	return ""
}

// Snapshot returns the clusterdata bytes currently stored in etcd.
func (s *Stolon) Snapshot(ctx context.Context) ([]byte, error) {
	resp, err := s.cli.Get(ctx, s.key)
	if err != nil {
		return nil, fmt.Errorf("read clusterdata: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("read clusterdata: key %s does not exist", s.key)
	}
	return resp.Kvs[0].Value, nil
}

// create writes the initial clusterdata with CreateRevision == 0.
func (s *Stolon) create(ctx context.Context) error {
	obs := s.observeAll(ctx)
	now := time.Now().UTC()
	cd, err := decodeClusterdata(stolonClusterdataTemplate)
	if err != nil {
		return err
	}
	cd.ChangeTime = now
	cd.Cluster.UID = newUID()
	cd.Cluster.ChangeTime = now
	cd.Keepers = map[string]*cdKeeper{}
	cd.DBs = map[string]*cdDB{}
	primary := s.c.Primary()
	master := s.newDB(s.keeperUIDs[primary], true, "")
	cd.DBs[master.UID] = master
	for _, n := range s.c.Nodes {
		cd.Keepers[s.keeperUIDs[n]] = s.newKeeper(s.keeperUIDs[n], now)
		if n == primary {
			continue
		}
		db := s.newDB(s.keeperUIDs[n], false, master.UID)
		cd.DBs[db.UID] = db
		master.Spec.Followers = append(master.Spec.Followers, db.UID)
	}
	sort.Strings(master.Spec.Followers)
	cd.Cluster.Status.Master = master.UID
	cd.Proxy.Spec.MasterDBUID = master.UID
	cd.Proxy.ChangeTime = now
	s.applyObservations(cd, obs, now)
	for _, db := range cd.DBs {
		if !db.Status.Healthy {
			return fmt.Errorf("initial clusterdata: %s is not healthy", db.Spec.KeeperUID)
		}
	}
	b, err := json.Marshal(cd)
	if err != nil {
		return fmt.Errorf("encode clusterdata: %w", err)
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.key), "=", 0)).
		Then(clientv3.OpPut(s.key, string(b))).Commit()
	if err != nil {
		return fmt.Errorf("create clusterdata: %w", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("create clusterdata: key %s already exists", s.key)
	}
	s.setCur(cd)
	if err := s.reconcileSlots(ctx, cd, obs); err != nil {
		return err
	}
	return nil
}

func (s *Stolon) newKeeper(uid string, now time.Time) *cdKeeper {
	k := cloneJSON(s.tmplKeeper)
	k.UID = uid
	k.Generation = 1
	k.ChangeTime = now
	k.Status.Healthy = true
	k.Status.LastHealthyTime = now
	k.Status.BootUUID = newUUID()
	k.Status.PostgresBinaryVersion = s.pgVersion
	return k
}

// newDB clones the recorded master or standby DB entry for keeperUID with
// a fresh DB UID. Status fields come from applyObservations.
func (s *Stolon) newDB(keeperUID string, master bool, follow string) *cdDB {
	tmpl := s.tmplStandby
	if master {
		tmpl = s.tmplMaster
	}
	db := cloneJSON(tmpl)
	db.UID = newUID()
	db.ChangeTime = time.Now().UTC()
	db.Spec.KeeperUID = keeperUID
	db.Spec.Followers = []string{}
	db.Spec.AdditionalReplicationSlots = nil
	if master {
		db.Spec.Role = "master"
		db.Spec.FollowConfig = nil
	} else {
		db.Spec.Role = "standby"
		db.Spec.FollowConfig = &cdFollowConfig{Type: "internal", DBUID: follow}
	}
	db.Status = cdDBStatus{
		ListenAddress: "127.0.0.1",
		PGParameters:  tmpl.Status.PGParameters,
	}
	return db
}

func (s *Stolon) setCur(cd *cdData) {
	s.curMu.Lock()
	s.cur = cd
	s.curMu.Unlock()
}

// update is Stolon's read-modify-CAS loop: read the key, apply mutate,
// write If(ModRevision == read revision); on conflict re-read and retry,
// three attempts in all. mutate must be safe to apply more than once.
func (s *Stolon) update(ctx context.Context, mutate func(cd *cdData) error) error {
	for attempt := 0; attempt < 3; attempt++ {
		resp, err := s.cli.Get(ctx, s.key)
		if err != nil {
			return fmt.Errorf("read clusterdata: %w", err)
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("read clusterdata: key %s does not exist", s.key)
		}
		cd, err := decodeClusterdata(resp.Kvs[0].Value)
		if err != nil {
			return err
		}
		if err := mutate(cd); err != nil {
			return err
		}
		b, err := json.Marshal(cd)
		if err != nil {
			return fmt.Errorf("encode clusterdata: %w", err)
		}
		tx, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.key), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(s.key, string(b))).Commit()
		if err != nil {
			return fmt.Errorf("write clusterdata: %w", err)
		}
		if tx.Succeeded {
			s.setCur(cd)
			return nil
		}
	}
	return ErrClusterdataModified
}

// nodeObservation is what a keeper would report about its PostgreSQL.
type nodeObservation struct {
	up         bool
	inRecovery bool
	port       int
	info       SystemInfo
	history    []TimelineHistoryEntry
	lsn        uint64
	olderWal   string
}

// observeAll queries every running node, in parallel, with a short
// timeout; a node that does not answer is down.
func (s *Stolon) observeAll(ctx context.Context) map[string]nodeObservation {
	out := make(map[string]nodeObservation, len(s.c.Nodes))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range s.c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := observe(ctx, n)
			mu.Lock()
			out[s.keeperUIDs[n]] = o
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func observe(ctx context.Context, n *Node) nodeObservation {
	o := nodeObservation{port: n.Port}
	if !n.Running() {
		return o
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var lsn string
	err := n.QueryRow(ctx, `SELECT pg_is_in_recovery(), ((CASE WHEN pg_is_in_recovery()
		THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
		ELSE pg_current_wal_lsn() END) - '0/0'::pg_lsn)::text`).Scan(&o.inRecovery, &lsn)
	if err != nil {
		return o
	}
	if o.lsn, err = strconv.ParseUint(lsn, 10, 64); err != nil {
		return o
	}
	if o.info, o.history, err = n.identify(ctx, true); err != nil {
		return o
	}
	o.olderWal, _ = n.OldestWALFile()
	o.up = true
	return o
}

// applyObservations sets keeper and DB statuses as the sentinel does from
// keeper infos. A DB's currentGeneration catches up with its generation
// only when PostgreSQL is in the role the spec asks for.
func (s *Stolon) applyObservations(cd *cdData, obs map[string]nodeObservation, now time.Time) {
	cd.ChangeTime = now
	for uid, k := range cd.Keepers {
		o, ok := obs[uid]
		if !ok {
			continue
		}
		k.ChangeTime = now
		k.Status.Healthy = o.up
		if o.up {
			k.Status.LastHealthyTime = now
		}
	}
	for _, db := range cd.DBs {
		o, ok := obs[db.Spec.KeeperUID]
		if !ok {
			continue
		}
		db.Status.Healthy = o.up
		if !o.up {
			continue
		}
		db.Status.ListenAddress = "127.0.0.1"
		db.Status.Port = strconv.Itoa(o.port)
		db.Status.SystemID = o.info.SystemID
		db.Status.TimelineID = o.info.Timeline
		db.Status.XLogPos = o.lsn
		db.Status.TimelinesHistory = nil
		for _, h := range o.history {
			db.Status.TimelinesHistory = append(db.Status.TimelinesHistory,
				&cdTimelineHistory{TimelineID: h.Timeline, SwitchPoint: h.SwitchPoint, Reason: h.Reason})
		}
		if o.olderWal != "" {
			db.Status.OlderWalFile = o.olderWal
		}
		if (db.Spec.Role == "master") != o.inRecovery {
			db.Status.CurrentGeneration = db.Generation
		}
	}
}

// reconcileSlots does what the keeper's refreshReplicationSlots does
// (STOLON.md §c): on the master, wanted = stolon_<follower DB UID> for
// each follower + stolon_<name> for each additionalReplicationSlots entry;
// on a standby nothing is wanted. Missing slots are created WITHOUT
// immediately_reserve (restart_lsn NULL); stolon_* slots not wanted are
// dropped; other slots are never touched. Nodes whose PostgreSQL is not
// (yet) in the role clusterdata gives them are skipped.
func (s *Stolon) reconcileSlots(ctx context.Context, cd *cdData, obs map[string]nodeObservation) error {
	var errs []error
	for _, n := range s.c.Nodes {
		o := obs[s.keeperUIDs[n]]
		db := cd.findDB(s.keeperUIDs[n])
		if db == nil || !o.up {
			continue
		}
		wanted := map[string]bool{}
		switch {
		case db.Spec.Role == "master" && !o.inRecovery:
			for _, f := range db.Spec.Followers {
				wanted["stolon_"+f] = true
			}
			for _, a := range db.Spec.AdditionalReplicationSlots {
				wanted["stolon_"+a] = true
			}
		case db.Spec.Role == "standby" && o.inRecovery:
		default:
			continue
		}
		if err := syncSlots(ctx, n, wanted); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func syncSlots(ctx context.Context, n *Node, wanted map[string]bool) error {
	conn, err := n.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, "SELECT slot_name FROM pg_replication_slots WHERE temporary IS false")
	if err != nil {
		return fmt.Errorf("list slots on %s: %w", n.Name, err)
	}
	have := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return fmt.Errorf("list slots on %s: %w", n.Name, err)
		}
		have[name] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list slots on %s: %w", n.Name, err)
	}
	for name := range have {
		if strings.HasPrefix(name, "stolon_") && !wanted[name] {
			// The keeper ignores drop errors (an active slot cannot be
			// dropped); so do we.
			_, _ = conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name)
		}
	}
	for _, name := range sortedKeys(wanted) {
		if have[name] {
			continue
		}
		if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1)", name); err != nil {
			return fmt.Errorf("create slot %s on %s: %w", name, n.Name, err)
		}
	}
	return nil
}

// updater refreshes statuses and slots every UpdateInterval (or when
// kicked) until ctx ends.
func (s *Stolon) updater(ctx context.Context) {
	defer close(s.done)
	ticker := time.NewTicker(s.opts.UpdateInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-s.kick:
		}
		if err := s.refresh(ctx); err != nil && ctx.Err() == nil {
			// Report each distinct error once; the test goes on.
			if msg := err.Error(); msg != s.lastErr {
				s.lastErr = msg
				s.t.Logf("testenv stolon updater: %v", err)
			}
		} else {
			s.lastErr = ""
		}
	}
}

// refresh is one updater round: observe, write statuses (and, as the
// sentinel, copy additionalMasterReplicationSlots into the master DB spec),
// then fix slots as the keepers would.
func (s *Stolon) refresh(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	obs := s.observeAll(ctx)
	err := s.update(ctx, func(cd *cdData) error {
		now := time.Now().UTC()
		s.syncMasterSlotsSpec(cd, now)
		s.applyObservations(cd, obs, now)
		return nil
	})
	if err != nil {
		return err
	}
	s.curMu.Lock()
	cur := s.cur
	s.curMu.Unlock()
	return s.reconcileSlots(ctx, cur, obs)
}

// syncMasterSlotsSpec copies cluster.spec.additionalMasterReplicationSlots
// into the master DB's spec.additionalReplicationSlots (standbys get nil),
// bumping the generation of a DB whose spec changed, as the sentinel does.
// So a test or agent that patches the cluster spec directly in etcd, like
// stolonctl update --patch, gets its slots too.
func (s *Stolon) syncMasterSlotsSpec(cd *cdData, now time.Time) {
	want := s.additionalMasterSlots(cd)
	for uid, db := range cd.DBs {
		var slots []string
		if uid == cd.Cluster.Status.Master {
			slots = want
		}
		if !equalStrings(db.Spec.AdditionalReplicationSlots, slots) {
			db.Spec.AdditionalReplicationSlots = slots
			db.Generation++
			db.ChangeTime = now
		}
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func (s *Stolon) kickUpdater() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Failover does what Stolon's sentinel and the new master's keeper do once
// the old master is gone (killing or stopping it is the test's job, before
// the call):
//
//  1. one clusterdata write elects newMaster: its DB keeps its UID and gets
//     role "master" and the other standbys as followers, cluster.status.master
//     names it, the old master's DB entry is deleted (its keeper marked
//     unhealthy), the other standbys keep their DB UIDs and follow the new
//     master (as in the recorded clusterdata-after-failover), and
//     proxy.spec.masterDbUid is cleared;
//  2. after PromoteDelay, newMaster is promoted (pg_ctl promote) and the
//     call waits until it left recovery;
//  3. the other running standbys are re-pointed to it and the call waits
//     until they stream from it; stolon_* slots are created on it;
//  4. a second write reports the new master healthy and converged
//     (currentGeneration == generation, new timelineID) and sets
//     proxy.spec.masterDbUid.
//
// It returns when all of this is done.
func (s *Stolon) Failover(ctx context.Context, newMaster *Node) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	keeper := s.keeperUIDs[newMaster]
	if keeper == "" {
		return fmt.Errorf("failover: %s is not a node of this cluster", newMaster.Name)
	}
	var newUID string
	err := s.update(ctx, func(cd *cdData) error {
		now := time.Now().UTC()
		newDB := cd.findDB(keeper)
		if newDB == nil {
			return fmt.Errorf("failover: keeper %s has no db", keeper)
		}
		oldUID := cd.Cluster.Status.Master
		if newDB.UID == oldUID {
			return fmt.Errorf("failover: %s is already master", keeper)
		}
		if old := cd.DBs[oldUID]; old != nil {
			delete(cd.DBs, oldUID)
			if k := cd.Keepers[old.Spec.KeeperUID]; k != nil {
				k.Status.Healthy = false
				k.ChangeTime = now
			}
		}
		newUID = newDB.UID
		followers := []string{}
		for uid, db := range cd.DBs {
			if uid == newUID {
				continue
			}
			followers = append(followers, uid)
			db.Spec.Role = "standby"
			db.Spec.FollowConfig = &cdFollowConfig{Type: "internal", DBUID: newUID}
			db.Spec.Followers = []string{}
			db.Spec.AdditionalReplicationSlots = nil
			db.Generation++
			db.ChangeTime = now
		}
		sort.Strings(followers)
		newDB.Spec.Role = "master"
		newDB.Spec.FollowConfig = nil
		newDB.Spec.Followers = followers
		newDB.Spec.AdditionalReplicationSlots = s.additionalMasterSlots(cd)
		newDB.Generation++
		newDB.ChangeTime = now
		cd.Cluster.Status.Master = newUID
		cd.proxyTo("", now)
		cd.ChangeTime = now
		return nil
	})
	if err != nil {
		return fmt.Errorf("failover: elect %s: %w", keeper, err)
	}

	select {
	case <-ctx.Done():
		return fmt.Errorf("failover: %w", ctx.Err())
	case <-time.After(s.opts.PromoteDelay):
	}
	if err := newMaster.Promote(ctx); err != nil {
		return fmt.Errorf("failover: %w", err)
	}

	s.curMu.Lock()
	cur := s.cur
	s.curMu.Unlock()
	var followed []*Node
	for _, n := range s.c.Nodes {
		if n == newMaster || cur.findDB(s.keeperUIDs[n]) == nil || !n.Running() {
			continue
		}
		if err := n.Follow(newMaster); err != nil {
			return fmt.Errorf("failover: %w", err)
		}
		followed = append(followed, n)
	}
	for _, n := range followed {
		if err := waitStreaming(ctx, newMaster, n); err != nil {
			return fmt.Errorf("failover: %w", err)
		}
	}

	obs := s.observeAll(ctx)
	if err := s.reconcileSlots(ctx, cur, obs); err != nil {
		return fmt.Errorf("failover: %w", err)
	}
	err = s.update(ctx, func(cd *cdData) error {
		now := time.Now().UTC()
		s.applyObservations(cd, obs, now)
		if db := cd.DBs[newUID]; db == nil || !db.Status.Healthy || db.Status.CurrentGeneration != db.Generation {
			return fmt.Errorf("new master %s did not converge", keeper)
		}
		cd.proxyTo(newUID, now)
		return nil
	})
	if err != nil {
		return fmt.Errorf("failover: report convergence: %w", err)
	}
	return nil
}

// additionalMasterSlots reads cluster.spec.additionalMasterReplicationSlots.
func (s *Stolon) additionalMasterSlots(cd *cdData) []string {
	if cd.Cluster.Spec == nil {
		return nil
	}
	var names []string
	_ = json.Unmarshal(cd.Cluster.Spec.vals["additionalMasterReplicationSlots"], &names)
	return names
}

// SetAdditionalMasterSlots sets cluster.spec.additionalMasterReplicationSlots
// like `stolonctl update --patch '{"additionalMasterReplicationSlots":[…]}'`
// (validated as Stolon does: [a-z0-9_], no stolon_ prefix), then, as the
// sentinel, copies the list into the master DB's
// spec.additionalReplicationSlots (bumping its generation). Two CAS writes,
// like the two programs. The updater then creates stolon_<name> on the
// master and drops the stolon_* slots nobody wants, soon after this
// returns (poll for them).
func (s *Stolon) SetAdditionalMasterSlots(ctx context.Context, names []string) error {
	for _, n := range names {
		if !replSlotNameRE.MatchString(n) {
			return fmt.Errorf("set additional master slots: wrong replication slot name: %q", n)
		}
		if strings.HasPrefix(n, "stolon_") {
			return fmt.Errorf("set additional master slots: replication slot name is reserved: %q", n)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.update(ctx, func(cd *cdData) error {
		if cd.Cluster.Spec == nil {
			cd.Cluster.Spec = &jsonObject{}
		}
		if len(names) == 0 {
			return cd.Cluster.Spec.set("additionalMasterReplicationSlots", nil)
		}
		return cd.Cluster.Spec.set("additionalMasterReplicationSlots", names)
	})
	if err != nil {
		return fmt.Errorf("set additional master slots: %w", err)
	}
	err = s.update(ctx, func(cd *cdData) error {
		s.syncMasterSlotsSpec(cd, time.Now().UTC())
		return nil
	})
	if err != nil {
		return fmt.Errorf("set additional master slots: %w", err)
	}
	s.kickUpdater()
	return nil
}

// Rejoin records node, after Cluster.Rejoin made it a standby of the
// current master, as Stolon does after resyncing a keeper: any old DB of
// its keeper is removed and a new standby DB with a NEW DB UID follows the
// master, which lists it as follower.
func (s *Stolon) Rejoin(ctx context.Context, node *Node) error {
	keeper := s.keeperUIDs[node]
	if keeper == "" {
		return fmt.Errorf("rejoin: %s is not a node of this cluster", node.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	obs := s.observeAll(ctx)
	if !obs[keeper].up || !obs[keeper].inRecovery {
		return fmt.Errorf("rejoin: %s is not a running standby", node.Name)
	}
	err := s.update(ctx, func(cd *cdData) error {
		now := time.Now().UTC()
		m := cd.DBs[cd.Cluster.Status.Master]
		if m == nil {
			return errors.New("rejoin: clusterdata has no master db")
		}
		for uid, db := range cd.DBs {
			if db.Spec.KeeperUID == keeper {
				delete(cd.DBs, uid)
			}
		}
		db := s.newDB(keeper, false, m.UID)
		db.Generation = 1
		cd.DBs[db.UID] = db
		followers := []string{}
		for _, f := range m.Spec.Followers {
			if cd.DBs[f] != nil {
				followers = append(followers, f)
			}
		}
		m.Spec.Followers = append(followers, db.UID)
		sort.Strings(m.Spec.Followers)
		m.Generation++
		m.ChangeTime = now
		if cd.Keepers[keeper] == nil {
			cd.Keepers[keeper] = s.newKeeper(keeper, now)
		}
		s.applyObservations(cd, obs, now)
		return nil
	})
	if err != nil {
		return fmt.Errorf("rejoin %s: %w", node.Name, err)
	}
	s.kickUpdater()
	return nil
}

// postgresVersion returns the major and minor version of the server
// binaries, for the keepers' postgresBinaryVersion.
func postgresVersion(env *pgEnv) cdPGVersion {
	out, err := exec.Command(filepath.Join(env.binDir, "postgres"), "-V").Output()
	if err != nil {
		return cdPGVersion{Maj: 15}
	}
	// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	f := strings.Fields(string(out))
	if len(f) < 3 {
		return cdPGVersion{Maj: 15}
	}
	maj, min, _ := strings.Cut(f[2], ".")
	v := cdPGVersion{}
	v.Maj, _ = strconv.Atoi(maj)
	v.Min, _ = strconv.Atoi(min)
	return v
}

// newUID returns 8 random hex characters, the shape of Stolon's UIDs.
func newUID() string { return randomHex(4) }

// newUUID returns a random version 4 UUID (keeper bootUUID).
func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
