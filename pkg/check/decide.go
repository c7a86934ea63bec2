package check

import (
	"fmt"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/redact"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Facts is everything `barnacle check` gathers before it decides: what
// etcd, the master's PostgreSQL, the standbys and the archive said. Each
// group's error says why it could not be read; Decide turns it into the
// results.
type Facts struct {
	// EtcdErr is why etcd could not be read; nil when it was.
	EtcdErr error
	// ClusterDataErr is why clusterdata is missing, unreadable or names no
	// master. ClusterData is nil when it could not be decoded.
	ClusterDataErr error
	ClusterData    *stolon.ClusterData
	// Master is the master clusterdata names, valid when ClusterDataErr is
	// nil.
	Master stolon.Master
	// AgentOf maps a keeper UID to the name of the agent beside it.
	AgentOf map[string]string
	// Leader is the elected agent's name, "" when nobody leads;
	// LeaderRecord is its agent record, nil when missing.
	Leader       string
	LeaderRecord *Leader
	// MasterAddress is where the master was asked (host:port); "" when its
	// address is unknown and PostgreSQL was not asked.
	MasterAddress string
	PG            PostgreSQL
	// Standbys are the standbys asked for the follower slot (with
	// standby-slots).
	Standbys []StandbySlot
	Archive  Archive
	// Now is when the checks ran.
	Now time.Time
}

// PostgreSQL is what the master's PostgreSQL said.
type PostgreSQL struct {
	// Err is why the normal connection or its query failed.
	Err                 error
	WALLevel            string
	MaxSenders, Senders int
	MaxSlots, Slots     int
	SlotExists, Active  bool
	CurrentLSN          wal.LSN
	// ReplErr is why the replication connection failed.
	ReplErr  error
	SystemID string
}

// Archive is what the archive holds.
type Archive struct {
	// Err is why the backend could not be opened.
	Err         error
	ProbeErr    error
	Identity    *catalog.Identity // nil without archive.json
	IdentityErr error
	WALErr      error
	// WAL is the archive's WAL part (catalog.ReadWAL): its index, history
	// files and recorded gaps.
	WAL        catalog.Archive
	BackupsErr error
	Backups    []catalog.Backup // newest first
	// Drills are the archive's restore drill records (catalog.ListDrills:
	// oldest first); DrillsErr says why they could not be read.
	Drills    []catalog.Drill
	DrillsErr error
	// Space is true when the backend reports free space.
	Space       bool
	Free, Total uint64
	SpaceErr    error
}

// Decide turns the gathered facts into one result per check, in the order
// of the names above, with cfg's thresholds (check-max-lag,
// last-backup-maximum-age, minimum-redundancy, restore-drill-max-age) and settings (slot, slot
// mode, standby-slots). It is pure: every branch is table-tested.
func Decide(cfg config.Config, f Facts) []Result {
	var rs []Result
	add := func(r Result) { rs = append(rs, r) }
	addr := f.MasterAddress
	var noMaster string
	if addr == "" {
		switch {
		case f.EtcdErr != nil:
			noMaster = "etcd unreachable: the master's address is unknown (or set pg-host)"
		default:
			noMaster = "clusterdata unreadable: the master's address is unknown (or set pg-host)"
		}
	}

	// etcd and clusterdata.
	etcdDown := "etcd unreachable"
	if f.EtcdErr != nil {
		add(Failf(NameEtcd, "cannot read etcd at %s: %v; check store-endpoints, the store-* TLS and auth settings, and that etcd runs",
			redact.URLs(cfg.StoreEndpoints), f.EtcdErr))
		add(Unavailable(NameClusterData, etcdDown))
		add(Unavailable(NameAgents, etcdDown))
	} else {
		add(Pass(NameEtcd, redact.URLs(cfg.StoreEndpoints)))
		if f.ClusterData == nil {
			hint := "clusterdata unreadable"
			if f.ClusterDataErr != nil {
				hint = f.ClusterDataErr.Error()
			}
			add(Fail(NameClusterData, hint))
			add(Unavailable(NameAgents, "clusterdata unreadable"))
		} else {
			if f.ClusterDataErr != nil {
				add(Fail(NameClusterData, f.ClusterDataErr.Error()))
			} else {
				add(Pass(NameClusterData, fmt.Sprintf("master keeper %s at %s", f.Master.KeeperUID, addr)))
			}
			add(AgentsBesideKeepers(f.ClusterData.KeeperUIDs(), f.AgentOf))
		}
	}

	// PostgreSQL on the master.
	pg := f.PG
	pgDown := "PostgreSQL unreachable"
	switch {
	case noMaster != "":
		for _, n := range []string{NamePostgreSQL, NameReplicationRole, NameWALLevel,
			NameWALSenders, NameSlotsHeadroom, NameSlot} {
			add(Unavailable(n, noMaster))
		}
	default:
		if pg.Err != nil {
			add(Failf(NamePostgreSQL, "cannot query the master at %s as %s: %v; check pg-user, pg-password-file and pg_hba (Stolon's pgHBA)",
				addr, pgUser(cfg), pg.Err))
		} else {
			add(Pass(NamePostgreSQL, addr))
		}
		if pg.ReplErr != nil {
			add(Failf(NameReplicationRole, "no replication connection to %s as %s: %v; the role needs REPLICATION (ALTER ROLE ... REPLICATION) and a 'host replication' line in pg_hba (Stolon's pgHBA)",
				addr, pgUser(cfg), pg.ReplErr))
		} else {
			add(Pass(NameReplicationRole, "IDENTIFY_SYSTEM as "+pgUser(cfg)))
		}
		if pg.Err != nil {
			for _, n := range []string{NameWALLevel, NameWALSenders, NameSlotsHeadroom, NameSlot} {
				add(Unavailable(n, pgDown))
			}
		} else {
			add(WALLevel(pg.WALLevel))
			add(Headroom(NameWALSenders, "max_wal_senders", pg.MaxSenders, pg.Senders))
			add(Headroom(NameSlotsHeadroom, "max_replication_slots", pg.MaxSlots, pg.Slots))
			declared := f.ClusterData != nil && f.ClusterData.Cluster.Spec.HasMasterReplicationSlot(cfg.SlotName)
			add(Slot(SlotState{Name: cfg.StreamingSlotName(), Exists: pg.SlotExists, Active: pg.Active,
				StolonMode: cfg.SlotMode == config.SlotModeStolon, Declared: declared}))
		}
	}
	if cfg.StandbySlots {
		switch {
		case f.EtcdErr != nil:
			add(Unavailable(NameStandbySlots, etcdDown))
		case f.ClusterData == nil:
			add(Unavailable(NameStandbySlots, "clusterdata unreadable"))
		default:
			add(StandbySlots(cfg.SlotName, f.Standbys))
		}
	}

	// Streaming: the leader's record and the master's position.
	switch {
	case f.EtcdErr != nil:
		add(Unavailable(NameStreaming, etcdDown))
	default:
		leader := f.LeaderRecord
		if leader == nil && f.Leader != "" {
			leader = &Leader{Name: f.Leader, LastError: "its agent record is missing"}
		}
		switch {
		case leader != nil && leader.Streaming && noMaster != "":
			add(Unavailable(NameStreaming, noMaster+": the lag is unknown"))
		case leader != nil && leader.Streaming && pg.Err != nil:
			add(Unavailable(NameStreaming, pgDown+": the lag is unknown"))
		default:
			add(Streaming(leader, pg.CurrentLSN, cfg.CheckMaxLag))
		}
	}

	// The archive.
	ar := f.Archive
	if ar.Err != nil {
		add(Failf(NameArchive, "%v: check archive-url", ar.Err))
		for _, n := range []string{NameIdentity, NameWALContinuity, NameBackupMaximumAge,
			NameMinimumRedundancy, NameFailedBackups, NameRestoreDrill} {
			add(Unavailable(n, "archive unreachable"))
		}
	} else {
		if ar.ProbeErr != nil {
			add(Failf(NameArchive, "%v: check the archive's permissions, space and credentials", ar.ProbeErr))
		} else {
			add(Pass(NameArchive, redact.URL(cfg.ArchiveURL)))
		}
		serverID := pg.SystemID
		if serverID == "" && f.ClusterData != nil {
			serverID = f.Master.SystemID
		}
		switch {
		case ar.IdentityErr != nil:
			add(Failf(NameIdentity, "%v: check the archive", ar.IdentityErr))
		case serverID == "" && ar.Identity != nil:
			add(Unavailable(NameIdentity, "the master's system identifier is unknown (PostgreSQL and clusterdata unreachable)"))
		default:
			archiveID := ""
			if ar.Identity != nil {
				archiveID = ar.Identity.SystemID
			}
			add(Identity(archiveID, serverID))
		}
		switch {
		case ar.WALErr != nil:
			add(Failf(NameWALContinuity, "%v: check the archive", ar.WALErr))
		case ar.BackupsErr != nil:
			add(Unavailable(NameWALContinuity, "backups unreadable"))
		default:
			in := WALArchive{WAL: ar.WAL.WAL, Histories: ar.WAL.Histories, HistoryErrors: ar.WAL.HistoryErrors, Gaps: ar.WAL.Gaps, Backups: ar.Backups}
			var id string
			if b, ok := oldestDone(ar.Backups); ok {
				if b.StartLSN != wal.InvalidLSN {
					id, in.StartTimeline, in.StartLSN = b.ID, b.StartTimeline, b.StartLSN
				}
			}
			add(WALContinuity(CheckContinuity(in), id))
		}
		if ar.BackupsErr != nil {
			for _, n := range []string{NameBackupMaximumAge, NameMinimumRedundancy, NameFailedBackups} {
				add(Failf(n, "%v: check the archive", ar.BackupsErr))
			}
		} else {
			add(BackupMaximumAge(ar.Backups, cfg.LastBackupMaximumAge, f.Now))
			add(MinimumRedundancy(ar.Backups, cfg.MinimumRedundancy))
			add(FailedBackups(ar.Backups))
		}
		if ar.DrillsErr != nil {
			add(Failf(NameRestoreDrill, "%v: check the archive", ar.DrillsErr))
		} else {
			add(RestoreDrill(ar.Drills, cfg.RestoreDrillMaxAge, f.Now))
		}
	}
	retention := "none: every backup is kept"
	if !cfg.RetentionPolicy.IsZero() {
		retention = cfg.RetentionPolicy.String()
	}
	add(Pass(NameRetention, retention))
	if ar.Err == nil && ar.Space {
		if ar.SpaceErr != nil {
			add(Failf(NameFreeSpace, "%v", ar.SpaceErr))
		} else {
			add(FreeSpace(ar.Free, ar.Total))
		}
	}
	return rs
}

// Verdict is the plain (not Nagios) outcome of a run: nil when every check
// passed, else an error counting the failures, which the CLI maps to exit
// code 1.
func Verdict(results []Result) error {
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
}

func pgUser(cfg config.Config) string {
	if cfg.PGUser == "" {
		return "the default user"
	}
	return cfg.PGUser
}
