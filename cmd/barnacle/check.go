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
	"github.com/barnacle-pg/barnacle/pkg/pgaddr"
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
master found in clusterdata (pg-host/pg-port override it, without keeper-uid or
when keeper-uid is the master's keeper; see package pgaddr).

The 'restore drill' line fails when the last successful restore drill
(barnacle drill, restore-drill-schedule) finished longer than
restore-drill-max-age ago, or none succeeded; without restore-drill-max-age it
passes and its detail (--json) names the last drill.

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
			return check.Verdict(results)
		},
	}
	cmd.Flags().BoolVar(&nagios, "nagios", false, "print a Nagios plugin's output and exit codes (0 OK, 2 CRITICAL)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON list of {name, ok, hint, detail} for scripts")
	return cmd
}

// gatherCluster reads clusterdata and barnacle's agents from etcd into the
// etcd part of f.
func gatherCluster(ctx context.Context, cfg config.Config, f *check.Facts) {
	opts := coordinator.ClientOptionsFor(cfg)
	opts.DialTimeout = checkTimeout
	cli, err := coordinator.NewClient(opts)
	if err != nil {
		f.EtcdErr = err
		return
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	key := stolon.ClusterDataKey(cfg.StorePrefix, cfg.ClusterName)
	resp, err := cli.Get(ctx, key)
	if err != nil {
		f.EtcdErr = err
		return
	}
	snap, err := coordinator.ReadSnapshot(ctx, cli, coordinator.NewKeys(cfg.BarnaclePrefix, cfg.ClusterName))
	if err != nil {
		f.EtcdErr = err
		return
	}
	f.AgentOf = map[string]string{}
	for _, n := range snap.AgentNames() {
		if a := snap.Agents[n]; a.KeeperUID != "" {
			f.AgentOf[a.KeeperUID] = a.Name
		}
	}
	f.Leader = snap.Leader
	if a, ok := snap.Agents[snap.Leader]; ok && snap.Leader != "" {
		f.LeaderRecord = &check.Leader{Name: a.Name, Streaming: a.Streaming, ArchivedLSN: a.ArchivedLSN, LastError: a.LastError}
	}
	if len(resp.Kvs) == 0 {
		f.ClusterDataErr = fmt.Errorf("no clusterdata at %s: check cluster-name and store-prefix, and that Stolon's sentinel runs", key)
		return
	}
	if f.ClusterData, err = stolon.Decode(resp.Kvs[0].Value); err != nil {
		f.ClusterDataErr = fmt.Errorf("%s: %w", key, err)
		return
	}
	if f.Master, err = f.ClusterData.Master(); err != nil {
		f.ClusterDataErr = fmt.Errorf("%w: Stolon has not elected a master; check its sentinels", err)
	}
}

// gatherPG asks the master's PostgreSQL, over a normal and a replication
// connection at once.
func gatherPG(ctx context.Context, cfg config.Config, host string, port int) check.PostgreSQL {
	var f check.PostgreSQL
	var wg sync.WaitGroup
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, checkTimeout)
		defer cancel()
		cs, err := cfg.PGConnString(host, port, false)
		if err != nil {
			f.Err = err
			return
		}
		conn, err := pgx.Connect(ctx, cs)
		if err != nil {
			f.Err = err
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
			cfg.StreamingSlotName()).Scan(&f.WALLevel, &f.MaxSenders, &f.Senders, &f.MaxSlots, &f.Slots,
			&f.SlotExists, &f.Active, &inRecovery, &lsn)
		if err != nil {
			f.Err = fmt.Errorf("query: %w", err)
			return
		}
		if inRecovery {
			f.Err = errors.New("the server is in recovery, not a promoted master (a failover in progress?)")
			return
		}
		f.CurrentLSN, f.Err = wal.ParseLSN(lsn)
	})
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, checkTimeout)
		defer cancel()
		cs, err := cfg.PGConnString(host, port, true)
		if err != nil {
			f.ReplErr = err
			return
		}
		conn, err := pgconn.Connect(ctx, cs)
		if err != nil {
			f.ReplErr = err
			return
		}
		defer conn.Close(context.WithoutCancel(ctx))
		sys, err := pglogrepl.IdentifySystem(ctx, conn)
		if err != nil {
			f.ReplErr = fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
			return
		}
		f.SystemID = sys.SystemID
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
		if !ok || db.UID == cd.Cluster.Status.Master || db.Spec.Role != stolon.RoleStandby || !db.Status.Healthy {
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

// gatherArchive reads the archive: a write probe, its identity, the WAL
// listing with the history files and gaps, the backups and the free space,
// each under its own time bound.
func gatherArchive(ctx context.Context, cfg config.Config) check.Archive {
	var f check.Archive
	octx, cancel := context.WithTimeout(ctx, checkTimeout)
	b, err := backends.OpenReadOnly(octx, cfg.ArchiveURL)
	cancel()
	if err != nil {
		f.Err = err
		return f
	}
	step := func(d time.Duration, fn func(ctx context.Context)) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		fn(ctx)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		step(checkTimeout, func(ctx context.Context) { f.ProbeErr = probeArchive(ctx, b, cfg.ClusterName) })
	})
	wg.Go(func() {
		step(checkTimeout, func(ctx context.Context) {
			id, err := catalog.ReadIdentity(ctx, b, cfg.ClusterName)
			switch {
			case err == nil:
				f.Identity = &id
			case !errors.Is(err, storage.ErrNotExist):
				f.IdentityErr = err
			}
		})
	})
	wg.Go(func() {
		step(checkListTimeout, func(ctx context.Context) { f.WALErr = readWAL(ctx, b, cfg.ClusterName, &f) })
	})
	wg.Go(func() {
		step(checkListTimeout, func(ctx context.Context) { f.Backups, f.BackupsErr = catalog.ListBackups(ctx, b, cfg.ClusterName) })
	})
	wg.Go(func() {
		step(checkListTimeout, func(ctx context.Context) { f.Drills, f.DrillsErr = catalog.ListDrills(ctx, b, cfg.ClusterName) })
	})
	if sr, ok := b.(storage.SpaceReporter); ok {
		f.Space = true
		wg.Go(func() {
			step(checkTimeout, func(ctx context.Context) {
				f.Free, f.SpaceErr = sr.FreeSpace(ctx)
				// The share of the filesystem needs its size, which only a
				// local directory has.
				if r, ok := b.(interface{ Root() string }); ok && f.SpaceErr == nil {
					var st unix.Statfs_t
					if err := unix.Statfs(r.Root(), &st); err == nil {
						f.Total = st.Blocks * uint64(st.Bsize) //nolint:gosec // Bsize is never negative
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
func readWAL(ctx context.Context, b storage.Backend, cluster string, f *check.Archive) error {
	segSize := uint64(wal.DefaultSegmentSize)
	if id, err := catalog.ReadIdentity(ctx, b, cluster); err == nil && wal.ValidSegmentSize(id.WALSegmentSize) == nil {
		segSize = id.WALSegmentSize
	}
	var err error
	f.WAL, err = catalog.ReadWAL(ctx, b, cluster, segSize)
	return err
}

// runChecks gathers the facts (etcd and the archive at once, then
// PostgreSQL, which needs the master's address from clusterdata unless
// pg-host names it) and lets check.Decide turn them into results.
func runChecks(ctx context.Context, cfg config.Config) []check.Result {
	f := check.Facts{Now: time.Now()}
	var wg sync.WaitGroup
	wg.Go(func() { gatherCluster(ctx, cfg, &f) })
	wg.Go(func() { f.Archive = gatherArchive(ctx, cfg) })
	wg.Wait()

	var master *stolon.Master
	if f.EtcdErr == nil && f.ClusterDataErr == nil {
		master = &f.Master
	}
	addr, addrErr := pgaddr.Master(cfg, master)
	if addrErr == nil {
		f.MasterAddress = addr.String()
		wg.Go(func() { f.PG = gatherPG(ctx, cfg, addr.Host, addr.Port) })
	}
	if cfg.StandbySlots && f.EtcdErr == nil && f.ClusterData != nil {
		wg.Go(func() { f.Standbys = gatherStandbySlots(ctx, cfg, f.ClusterData) })
	}
	wg.Wait()
	return check.Decide(cfg, f)
}
