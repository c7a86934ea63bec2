package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/check"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/redact"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Time bounds of the checks. Each dependency gets its own, and the groups
// that do not depend on each other run at once, so an unreachable etcd or
// PostgreSQL costs one timeout and hides no other check. Listing the WAL
// prefix of a big archive takes longer than one request.
const (
	checkTimeout     = 5 * time.Second
	checkListTimeout = 15 * time.Second
)

func newCheckCommand() *cobra.Command {
	var nagios, asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check etcd, the agents, PostgreSQL, streaming and the archive, Barman-style",
		Long: `Run Barman-style checks and print one 'name: OK' or 'name: FAILED (hint)' line
each; the hint says what to do. Needs cluster-name, store-endpoints and
archive-url, and pg-user (with pg-password-file or PGPASSFILE) to reach the
master found in clusterdata (or pg-host/pg-port).

Exit code 0 when every check passes, 1 otherwise. With --nagios the output and
exit codes are a Nagios plugin's, as Barman's: 0 OK, 2 CRITICAL.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nagios && asJSON {
				return usageError{errors.New("--nagios and --json exclude each other")}
			}
			cfg, err := loadConfig(cmd, config.Needs{Keys: []string{"cluster-name", "store-endpoints", "archive-url"}})
			if err != nil {
				return err
			}
			results := runChecks(cmd.Context(), cfg)
			out := cmd.OutOrStdout()
			switch {
			case nagios:
				code, err := check.WriteNagios(out, cfg.ClusterName, results)
				if err != nil {
					return err
				}
				if code != check.NagiosOK {
					return exitCodeError{code: code}
				}
				return nil
			case asJSON:
				err = check.WriteJSON(out, results)
			default:
				err = check.WriteText(out, cfg.ClusterName, results)
			}
			if err != nil {
				return err
			}
			failed := 0
			for _, r := range results {
				if !r.OK {
					failed++
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d checks FAILED", failed, len(results))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&nagios, "nagios", false, "print a Nagios plugin's output and exit codes (0 OK, 2 CRITICAL)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON list of {name, ok, hint, detail} for scripts")
	return cmd
}

// clusterFacts is what etcd says: clusterdata and barnacle's agents.
type clusterFacts struct {
	err    error // etcd could not be read
	cdErr  error // clusterdata missing, unreadable or without a master
	cd     *stolon.ClusterData
	master stolon.Master
	snap   coordinator.Snapshot
}

func gatherCluster(ctx context.Context, cfg config.Config) clusterFacts {
	var f clusterFacts
	opts := coordinator.ClientOptionsFor(cfg)
	opts.DialTimeout = checkTimeout
	cli, err := coordinator.NewClient(opts)
	if err != nil {
		f.err = err
		return f
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	key := stolon.ClusterDataKey(cfg.StorePrefix, cfg.ClusterName)
	resp, err := cli.Get(ctx, key)
	if err != nil {
		f.err = err
		return f
	}
	if f.snap, err = coordinator.ReadSnapshot(ctx, cli, coordinator.NewKeys(cfg.BarnaclePrefix, cfg.ClusterName)); err != nil {
		f.err = err
		return f
	}
	if len(resp.Kvs) == 0 {
		f.cdErr = fmt.Errorf("no clusterdata at %s: check cluster-name and store-prefix, and that Stolon's sentinel runs", key)
		return f
	}
	if f.cd, err = stolon.Decode(resp.Kvs[0].Value); err != nil {
		f.cdErr = fmt.Errorf("%s: %w", key, err)
		return f
	}
	if f.master, err = f.cd.Master(); err != nil {
		f.cdErr = fmt.Errorf("%w: Stolon has not elected a master; check its sentinels", err)
	}
	return f
}

// pgFacts is what the master's PostgreSQL says.
type pgFacts struct {
	err                 error // normal connection or query
	walLevel            string
	maxSenders, senders int
	maxSlots, slots     int
	slotExists, active  bool
	currentLSN          wal.LSN
	replErr             error // replication connection
	systemID            string
}

func gatherPG(ctx context.Context, cfg config.Config, host string, port int) pgFacts {
	var f pgFacts
	var wg sync.WaitGroup
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, checkTimeout)
		defer cancel()
		cs, err := cfg.PGConnString(host, port, false)
		if err != nil {
			f.err = err
			return
		}
		conn, err := pgx.Connect(ctx, cs)
		if err != nil {
			f.err = err
			return
		}
		defer conn.Close(context.WithoutCancel(ctx))
		var lsn string
		var inRecovery bool
		// pg_stat_get_wal_senders() lists every walsender's pid to any
		// role, where pg_stat_activity hides other roles' backend types.
		err = conn.QueryRow(ctx, `select current_setting('wal_level'),
			current_setting('max_wal_senders')::int, (select count(*) from pg_stat_get_wal_senders())::int,
			current_setting('max_replication_slots')::int, (select count(*) from pg_replication_slots)::int,
			exists (select 1 from pg_replication_slots where slot_name = $1),
			coalesce((select active from pg_replication_slots where slot_name = $1), false),
			pg_is_in_recovery(),
			case when pg_is_in_recovery() then '0/0' else pg_current_wal_lsn()::text end`,
			cfg.StreamingSlotName()).Scan(&f.walLevel, &f.maxSenders, &f.senders, &f.maxSlots, &f.slots,
			&f.slotExists, &f.active, &inRecovery, &lsn)
		if err != nil {
			f.err = fmt.Errorf("query: %w", err)
			return
		}
		if inRecovery {
			f.err = errors.New("the server is in recovery, not a promoted master (a failover in progress?)")
			return
		}
		f.currentLSN, f.err = wal.ParseLSN(lsn)
	})
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, checkTimeout)
		defer cancel()
		cs, err := cfg.PGConnString(host, port, true)
		if err != nil {
			f.replErr = err
			return
		}
		conn, err := pgconn.Connect(ctx, cs)
		if err != nil {
			f.replErr = err
			return
		}
		defer conn.Close(context.WithoutCancel(ctx))
		sys, err := pglogrepl.IdentifySystem(ctx, conn)
		if err != nil {
			f.replErr = fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
			return
		}
		f.systemID = sys.SystemID
	})
	wg.Wait()
	return f
}

// gatherStandbySlots asks every healthy standby in clusterdata whether it
// holds the follower slot.
func gatherStandbySlots(ctx context.Context, cfg config.Config, cd *stolon.ClusterData) []check.StandbySlot {
	var out []check.StandbySlot
	for _, uid := range cd.KeeperUIDs() {
		db, ok := cd.DBForKeeper(uid)
		if !ok || db.UID == cd.Cluster.Status.Master || db.Spec.Role != "standby" || !db.Status.Healthy {
			continue
		}
		s := check.StandbySlot{KeeperUID: uid}
		host, port, err := db.Addr()
		if err != nil {
			s.Err = err
		} else {
			s.Address = net.JoinHostPort(host, strconv.Itoa(port))
		}
		out = append(out, s)
	}
	var wg sync.WaitGroup
	for i := range out {
		if out[i].Err != nil {
			continue
		}
		wg.Go(func() {
			s := &out[i]
			ctx, cancel := context.WithTimeout(ctx, checkTimeout)
			defer cancel()
			host, portStr, _ := net.SplitHostPort(s.Address)
			port, _ := strconv.Atoi(portStr)
			cs, err := cfg.PGConnString(host, port, false)
			if err != nil {
				s.Err = err
				return
			}
			conn, err := pgx.Connect(ctx, cs)
			if err != nil {
				s.Err = err
				return
			}
			defer conn.Close(context.WithoutCancel(ctx))
			s.Err = conn.QueryRow(ctx, "select exists (select 1 from pg_replication_slots where slot_name = $1)", cfg.SlotName).Scan(&s.Exists)
		})
	}
	wg.Wait()
	return out
}

// archiveFacts is what the archive holds.
type archiveFacts struct {
	err         error // the backend could not be opened
	probeErr    error
	identity    *catalog.Identity
	identityErr error
	walErr      error
	wal         catalog.Archive // its WAL part (catalog.ReadWAL)
	backupsErr  error
	backups     []catalog.Backup
	space       bool // the backend reports free space
	free, total uint64
	spaceErr    error
}

func gatherArchive(ctx context.Context, cfg config.Config) archiveFacts {
	var f archiveFacts
	octx, cancel := context.WithTimeout(ctx, checkTimeout)
	b, err := backends.OpenReadOnly(octx, cfg.ArchiveURL)
	cancel()
	if err != nil {
		f.err = err
		return f
	}
	step := func(d time.Duration, fn func(ctx context.Context)) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		fn(ctx)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		step(checkTimeout, func(ctx context.Context) { f.probeErr = probeArchive(ctx, b, cfg.ClusterName) })
	})
	wg.Go(func() {
		step(checkTimeout, func(ctx context.Context) {
			id, err := catalog.ReadIdentity(ctx, b, cfg.ClusterName)
			switch {
			case err == nil:
				f.identity = &id
			case !errors.Is(err, storage.ErrNotExist):
				f.identityErr = err
			}
		})
	})
	wg.Go(func() {
		step(checkListTimeout, func(ctx context.Context) { f.walErr = readWAL(ctx, b, cfg.ClusterName, &f) })
	})
	wg.Go(func() {
		step(checkListTimeout, func(ctx context.Context) { f.backups, f.backupsErr = catalog.ListBackups(ctx, b, cfg.ClusterName) })
	})
	if sr, ok := b.(storage.SpaceReporter); ok {
		f.space = true
		wg.Go(func() {
			step(checkTimeout, func(ctx context.Context) {
				f.free, f.spaceErr = sr.FreeSpace(ctx)
				// The share of the filesystem needs its size, which only a
				// local directory has.
				if r, ok := b.(interface{ Root() string }); ok && f.spaceErr == nil {
					var st unix.Statfs_t
					if err := unix.Statfs(r.Root(), &st); err == nil {
						f.total = st.Blocks * uint64(st.Bsize) //nolint:gosec // Bsize is never negative
					}
				}
			})
		})
	}
	wg.Wait()
	return f
}

// probeArchive writes, reads back and deletes a small object. Its name has
// no part starting with "." (those are the backend's own temporary files).
func probeArchive(ctx context.Context, b storage.Backend, cluster string) error {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	name := cluster + "/check/probe-" + hex.EncodeToString(rnd[:])
	body := "barnacle check " + time.Now().UTC().Format(time.RFC3339Nano)
	if err := b.Put(ctx, name, strings.NewReader(body), storage.PutOptions{IfAbsent: true}); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	got, rerr := storage.ReadAll(ctx, b, name)
	derr := b.Delete(context.WithoutCancel(ctx), name)
	switch {
	case rerr != nil:
		return fmt.Errorf("read back %s: %w", name, rerr)
	case string(got) != body:
		return fmt.Errorf("read back %s: different bytes", name)
	case derr != nil:
		return fmt.Errorf("delete %s: %w", name, derr)
	}
	return nil
}

// readWAL reads the archive's WAL part (catalog.ReadWAL) for the segment
// size archive.json gives, else the default one, so that an unreadable
// archive.json fails the identity check alone.
func readWAL(ctx context.Context, b storage.Backend, cluster string, f *archiveFacts) error {
	segSize := uint64(wal.DefaultSegmentSize)
	if id, err := catalog.ReadIdentity(ctx, b, cluster); err == nil && wal.ValidSegmentSize(id.WALSegmentSize) == nil {
		segSize = id.WALSegmentSize
	}
	var err error
	f.wal, err = catalog.ReadWAL(ctx, b, cluster, segSize)
	return err
}

// runChecks gathers the facts (etcd and the archive at once, then
// PostgreSQL, which needs the master's address from clusterdata unless
// pg-host is set) and turns them into results, in the order of the names
// in package check.
func runChecks(ctx context.Context, cfg config.Config) []check.Result {
	var cl clusterFacts
	var ar archiveFacts
	var wg sync.WaitGroup
	wg.Go(func() { cl = gatherCluster(ctx, cfg) })
	wg.Go(func() { ar = gatherArchive(ctx, cfg) })
	wg.Wait()

	// Where the master is: pg-host/pg-port, else clusterdata.
	host, port := cfg.PGHost, cfg.PGPort
	var noMaster string
	switch {
	case host != "":
		if port == 0 {
			port = 5432
		}
	case cl.err != nil:
		noMaster = "etcd unreachable: the master's address is unknown (or set pg-host)"
	case cl.cdErr != nil:
		noMaster = "clusterdata unreadable: the master's address is unknown (or set pg-host)"
	default:
		host = cl.master.Host
		if port == 0 {
			port = cl.master.Port
		}
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	var pg pgFacts
	var standbys []check.StandbySlot
	wg.Go(func() {
		if noMaster == "" {
			pg = gatherPG(ctx, cfg, host, port)
		}
	})
	wg.Go(func() {
		if cfg.StandbySlots && cl.err == nil && cl.cd != nil {
			standbys = gatherStandbySlots(ctx, cfg, cl.cd)
		}
	})
	wg.Wait()

	var rs []check.Result
	add := func(r check.Result) { rs = append(rs, r) }

	// etcd and clusterdata.
	etcdDown := "etcd unreachable"
	if cl.err != nil {
		add(check.Failf(check.NameEtcd, "cannot read etcd at %s: %v; check store-endpoints, the store-* TLS and auth settings, and that etcd runs",
			redact.URLs(cfg.StoreEndpoints), cl.err))
		add(check.Unavailable(check.NameClusterData, etcdDown))
		add(check.Unavailable(check.NameAgents, etcdDown))
	} else {
		add(check.Pass(check.NameEtcd, redact.URLs(cfg.StoreEndpoints)))
		if cl.cdErr != nil && cl.cd == nil {
			add(check.Fail(check.NameClusterData, cl.cdErr.Error()))
			add(check.Unavailable(check.NameAgents, "clusterdata unreadable"))
		} else {
			if cl.cdErr != nil {
				add(check.Fail(check.NameClusterData, cl.cdErr.Error()))
			} else {
				add(check.Pass(check.NameClusterData, fmt.Sprintf("master keeper %s at %s", cl.master.KeeperUID, addr)))
			}
			agentOf := map[string]string{}
			for _, n := range cl.snap.AgentNames() {
				if a := cl.snap.Agents[n]; a.KeeperUID != "" {
					agentOf[a.KeeperUID] = a.Name
				}
			}
			add(check.AgentsBesideKeepers(cl.cd.KeeperUIDs(), agentOf))
		}
	}

	// PostgreSQL on the master.
	pgDown := "PostgreSQL unreachable"
	switch {
	case noMaster != "":
		for _, n := range []string{check.NamePostgreSQL, check.NameReplicationRole, check.NameWALLevel,
			check.NameWALSenders, check.NameSlotsHeadroom, check.NameSlot} {
			add(check.Unavailable(n, noMaster))
		}
	default:
		if pg.err != nil {
			add(check.Failf(check.NamePostgreSQL, "cannot query the master at %s as %s: %v; check pg-user, pg-password-file and pg_hba (Stolon's pgHBA)",
				addr, pgUser(cfg), pg.err))
		} else {
			add(check.Pass(check.NamePostgreSQL, addr))
		}
		if pg.replErr != nil {
			add(check.Failf(check.NameReplicationRole, "no replication connection to %s as %s: %v; the role needs REPLICATION (ALTER ROLE ... REPLICATION) and a 'host replication' line in pg_hba (Stolon's pgHBA)",
				addr, pgUser(cfg), pg.replErr))
		} else {
			add(check.Pass(check.NameReplicationRole, "IDENTIFY_SYSTEM as "+pgUser(cfg)))
		}
		if pg.err != nil {
			for _, n := range []string{check.NameWALLevel, check.NameWALSenders, check.NameSlotsHeadroom, check.NameSlot} {
				add(check.Unavailable(n, pgDown))
			}
		} else {
			add(check.WALLevel(pg.walLevel))
			add(check.Headroom(check.NameWALSenders, "max_wal_senders", pg.maxSenders, pg.senders))
			add(check.Headroom(check.NameSlotsHeadroom, "max_replication_slots", pg.maxSlots, pg.slots))
			declared := cl.cd != nil && cl.cd.Cluster.Spec.HasMasterReplicationSlot(cfg.SlotName)
			add(check.Slot(check.SlotState{Name: cfg.StreamingSlotName(), Exists: pg.slotExists, Active: pg.active,
				StolonMode: cfg.SlotMode == config.SlotModeStolon, Declared: declared}))
		}
	}
	if cfg.StandbySlots {
		switch {
		case cl.err != nil:
			add(check.Unavailable(check.NameStandbySlots, etcdDown))
		case cl.cd == nil:
			add(check.Unavailable(check.NameStandbySlots, "clusterdata unreadable"))
		default:
			add(check.StandbySlots(cfg.SlotName, standbys))
		}
	}

	// Streaming: the leader's record and the master's position.
	switch {
	case cl.err != nil:
		add(check.Unavailable(check.NameStreaming, etcdDown))
	default:
		var leader *check.Leader
		if a, ok := cl.snap.Agents[cl.snap.Leader]; ok && cl.snap.Leader != "" {
			leader = &check.Leader{Name: a.Name, Streaming: a.Streaming, ArchivedLSN: a.ArchivedLSN, LastError: a.LastError}
		} else if cl.snap.Leader != "" {
			leader = &check.Leader{Name: cl.snap.Leader, LastError: "its agent record is missing"}
		}
		switch {
		case leader != nil && leader.Streaming && noMaster != "":
			add(check.Unavailable(check.NameStreaming, noMaster+": the lag is unknown"))
		case leader != nil && leader.Streaming && pg.err != nil:
			add(check.Unavailable(check.NameStreaming, pgDown+": the lag is unknown"))
		default:
			add(check.Streaming(leader, pg.currentLSN, cfg.CheckMaxLag))
		}
	}

	// The archive.
	if ar.err != nil {
		add(check.Failf(check.NameArchive, "%v: check archive-url", ar.err))
		for _, n := range []string{check.NameIdentity, check.NameWALContinuity, check.NameBackupMaximumAge,
			check.NameMinimumRedundancy, check.NameFailedBackups} {
			add(check.Unavailable(n, "archive unreachable"))
		}
	} else {
		if ar.probeErr != nil {
			add(check.Failf(check.NameArchive, "%v: check the archive's permissions, space and credentials", ar.probeErr))
		} else {
			add(check.Pass(check.NameArchive, redact.URL(cfg.ArchiveURL)))
		}
		serverID := pg.systemID
		if serverID == "" && cl.cd != nil {
			serverID = cl.master.SystemID
		}
		switch {
		case ar.identityErr != nil:
			add(check.Failf(check.NameIdentity, "%v: check the archive", ar.identityErr))
		case serverID == "" && ar.identity != nil:
			add(check.Unavailable(check.NameIdentity, "the master's system identifier is unknown (PostgreSQL and clusterdata unreachable)"))
		default:
			archiveID := ""
			if ar.identity != nil {
				archiveID = ar.identity.SystemID
			}
			add(check.Identity(archiveID, serverID))
		}
		switch {
		case ar.walErr != nil:
			add(check.Failf(check.NameWALContinuity, "%v: check the archive", ar.walErr))
		case ar.backupsErr != nil:
			add(check.Unavailable(check.NameWALContinuity, "backups unreadable"))
		default:
			in := check.WALArchive{WAL: ar.wal.WAL, Histories: ar.wal.Histories, HistoryErrors: ar.wal.HistoryErrors, Gaps: ar.wal.Gaps}
			var id string
			if b, ok := check.OldestDone(ar.backups); ok {
				start, err := wal.ParseLSN(b.StartLSN)
				if err == nil {
					id, in.StartTimeline, in.StartLSN = b.ID, b.StartTimeline, start
				}
			}
			add(check.WALContinuity(check.CheckContinuity(in), id))
		}
		if ar.backupsErr != nil {
			for _, n := range []string{check.NameBackupMaximumAge, check.NameMinimumRedundancy, check.NameFailedBackups} {
				add(check.Failf(n, "%v: check the archive", ar.backupsErr))
			}
		} else {
			add(check.BackupMaximumAge(ar.backups, cfg.LastBackupMaximumAge, time.Now()))
			add(check.MinimumRedundancy(ar.backups, cfg.MinimumRedundancy))
			add(check.FailedBackups(ar.backups))
		}
	}
	retention := "none: every backup is kept"
	if !cfg.RetentionPolicy.IsZero() {
		retention = cfg.RetentionPolicy.String()
	}
	add(check.Pass(check.NameRetention, retention))
	if ar.err == nil && ar.space {
		if ar.spaceErr != nil {
			add(check.Failf(check.NameFreeSpace, "%v", ar.spaceErr))
		} else {
			add(check.FreeSpace(ar.free, ar.total))
		}
	}
	return rs
}

func pgUser(cfg config.Config) string {
	if cfg.PGUser == "" {
		return "the default user"
	}
	return cfg.PGUser
}
