package check

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
)

// healthy returns the configuration and facts of a cluster where every
// check passes: two keepers with agents, a streaming leader close behind
// the master, and an archive with one done backup and its WAL.
func healthy() (config.Config, Facts) {
	cfg := config.Config{
		StoreEndpoints: []string{"http://e:2379"}, ClusterName: "main", PGUser: "repl",
		SlotName: "barnacle", SlotMode: config.SlotModeOwn, CheckMaxLag: 64 << 20,
		ArchiveURL: "file:///archive", MinimumRedundancy: 1,
	}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	cd := &stolon.ClusterData{
		Keepers: map[string]*stolon.Keeper{"k0": {}, "k1": {}},
		DBs: map[string]*stolon.DB{
			"db0": {UID: "db0", Spec: stolon.DBSpec{KeeperUID: "k0", Role: "master"}},
			"db1": {UID: "db1", Spec: stolon.DBSpec{KeeperUID: "k1", Role: "standby"}},
		},
	}
	cd.Cluster.Status.Master = "db0"
	f := Facts{
		ClusterData:   cd,
		Master:        stolon.Master{KeeperUID: "k0", DBUID: "db0", Host: "10.0.0.1", Port: 5432, SystemID: "7"},
		AgentOf:       map[string]string{"k0": "a0", "k1": "a1"},
		Leader:        "a0",
		LeaderRecord:  &Leader{Name: "a0", Streaming: true, ArchivedLSN: 0x3000000},
		MasterAddress: "10.0.0.1:5432",
		PG: PostgreSQL{WALLevel: "replica", MaxSenders: 10, Senders: 1, MaxSlots: 10, Slots: 1,
			SlotExists: true, Active: true, CurrentLSN: 0x3000100, SystemID: "7"},
		Archive: Archive{
			Identity: &catalog.Identity{SystemID: "7", WALSegmentSize: segSize},
			WAL:      walPart(seg(1, 3)),
			Backups: []catalog.Backup{{ID: "20260501T110000", Status: catalog.StatusDone, StartTimeline: 1,
				StartLSN: 0x3000028, StopTime: now.Add(-time.Hour)}},
			Space: true, Free: 50 << 30, Total: 100 << 30,
		},
		Now: now,
	}
	return cfg, f
}

// walPart is the WAL part of an archive that holds files, as
// catalog.ReadWAL reads it.
func walPart(files ...string) catalog.Archive {
	return catalog.Archive{SegmentSize: segSize, WAL: walSpec{Files: files}.archive().WAL}
}

var allNames = []string{NameEtcd, NameClusterData, NameAgents, NamePostgreSQL, NameReplicationRole, NameWALLevel,
	NameWALSenders, NameSlotsHeadroom, NameSlot, NameStreaming, NameArchive, NameIdentity, NameWALContinuity,
	NameBackupMaximumAge, NameMinimumRedundancy, NameFailedBackups, NameRestoreDrill, NameRetention, NameFreeSpace}

func TestDecide(t *testing.T) {
	boom := errors.New("boom")
	withStandbys := append(append(append([]string{}, allNames[:9]...), NameStandbySlots), allNames[9:]...)
	tests := []struct {
		name   string
		change func(cfg *config.Config, f *Facts)
		// failed maps the name of every FAILED check to a substring of its
		// hint; every other check must pass.
		failed map[string]string
		// names is the expected list of checks; nil means allNames.
		names []string
		// detail maps a check name to its expected OK detail.
		detail map[string]string
	}{
		{name: "all pass", change: func(*config.Config, *Facts) {},
			detail: map[string]string{NameEtcd: "http://e:2379", NameClusterData: "master keeper k0 at 10.0.0.1:5432",
				NamePostgreSQL: "10.0.0.1:5432", NameReplicationRole: "IDENTIFY_SYSTEM as repl",
				NameArchive: "file:///archive", NameRetention: "none: every backup is kept"}},
		{name: "secrets in URLs are redacted", change: func(cfg *config.Config, f *Facts) {
			cfg.StoreEndpoints = []string{"http://u:s3cr3t@e:2379", "http://e2:2379"}
			cfg.ArchiveURL = "s3://AKID:s3cr3t@bucket/p?secret_key=s3cr3t"
		}, detail: map[string]string{NameEtcd: "http://REDACTED@e:2379,http://e2:2379", NameArchive: "s3://REDACTED@bucket/p?secret_key=REDACTED"}},
		{name: "secrets in etcd URLs are redacted when etcd fails", change: func(cfg *config.Config, f *Facts) {
			cfg.StoreEndpoints = []string{"http://u:s3cr3t@e:2379"}
			f.EtcdErr, f.ClusterData, f.Master, f.AgentOf, f.Leader, f.LeaderRecord = boom, nil, stolon.Master{}, nil, "", nil
		}, failed: map[string]string{NameEtcd: "cannot read etcd at http://REDACTED@e:2379: boom", NameClusterData: "etcd unreachable",
			NameAgents: "etcd unreachable", NameStreaming: "etcd unreachable"}},
		{name: "etcd unreachable, master unknown", change: func(_ *config.Config, f *Facts) {
			f.EtcdErr, f.ClusterData, f.Master, f.AgentOf, f.Leader, f.LeaderRecord = boom, nil, stolon.Master{}, nil, "", nil
			f.MasterAddress, f.PG = "", PostgreSQL{}
		}, failed: map[string]string{
			NameEtcd: "cannot read etcd at http://e:2379: boom; check store-endpoints", NameClusterData: "etcd unreachable", NameAgents: "etcd unreachable",
			NamePostgreSQL: "etcd unreachable: the master's address is unknown (or set pg-host)", NameReplicationRole: "etcd unreachable: the master's",
			NameWALLevel: "etcd unreachable: the master's", NameWALSenders: "etcd unreachable: the master's", NameSlotsHeadroom: "etcd unreachable: the master's",
			NameSlot: "etcd unreachable: the master's", NameStreaming: "etcd unreachable", NameIdentity: "system identifier is unknown",
		}},
		{name: "etcd unreachable, pg-host names the master", change: func(_ *config.Config, f *Facts) {
			f.EtcdErr, f.ClusterData, f.Master, f.AgentOf, f.Leader, f.LeaderRecord = boom, nil, stolon.Master{}, nil, "", nil
		}, failed: map[string]string{NameEtcd: "boom", NameClusterData: "etcd unreachable", NameAgents: "etcd unreachable", NameStreaming: "etcd unreachable"}},
		{name: "etcd unreachable with standby slots", change: func(cfg *config.Config, f *Facts) {
			cfg.StandbySlots = true
			f.EtcdErr, f.ClusterData, f.MasterAddress, f.PG = boom, nil, "", PostgreSQL{SystemID: "7"}
		}, names: withStandbys, failed: map[string]string{NameEtcd: "boom", NameClusterData: "etcd unreachable", NameAgents: "etcd unreachable",
			NamePostgreSQL: "etcd unreachable", NameReplicationRole: "etcd unreachable", NameWALLevel: "etcd unreachable", NameWALSenders: "etcd unreachable",
			NameSlotsHeadroom: "etcd unreachable", NameSlot: "etcd unreachable", NameStandbySlots: "etcd unreachable", NameStreaming: "etcd unreachable"}},
		{name: "no clusterdata", change: func(_ *config.Config, f *Facts) {
			f.ClusterDataErr, f.ClusterData, f.Master, f.MasterAddress, f.PG = errors.New("no clusterdata at k"), nil, stolon.Master{}, "", PostgreSQL{}
		}, failed: map[string]string{
			NameClusterData: "no clusterdata at k", NameAgents: "clusterdata unreadable",
			NamePostgreSQL: "clusterdata unreadable: the master's address is unknown", NameReplicationRole: "clusterdata unreadable", NameWALLevel: "clusterdata unreadable",
			NameWALSenders: "clusterdata unreadable", NameSlotsHeadroom: "clusterdata unreadable", NameSlot: "clusterdata unreadable",
			NameStreaming: "clusterdata unreadable: the master's address is unknown (or set pg-host): the lag is unknown", NameIdentity: "system identifier is unknown",
		}},
		{name: "no clusterdata with standby slots", change: func(cfg *config.Config, f *Facts) {
			cfg.StandbySlots = true
			f.ClusterDataErr, f.ClusterData = errors.New("undecodable"), nil
		}, names: withStandbys, failed: map[string]string{NameClusterData: "undecodable", NameAgents: "clusterdata unreadable", NameStandbySlots: "clusterdata unreadable"}},
		{name: "clusterdata without a master", change: func(_ *config.Config, f *Facts) {
			f.ClusterDataErr, f.Master, f.MasterAddress, f.PG = errors.New("no master elected"), stolon.Master{}, "", PostgreSQL{}
			f.LeaderRecord.Streaming = false
		}, failed: map[string]string{NameClusterData: "no master elected", NamePostgreSQL: "clusterdata unreadable", NameReplicationRole: "clusterdata unreadable",
			NameWALLevel: "clusterdata unreadable", NameWALSenders: "clusterdata unreadable", NameSlotsHeadroom: "clusterdata unreadable",
			NameSlot: "clusterdata unreadable", NameStreaming: "leader a0 is not streaming WAL", NameIdentity: "system identifier is unknown"}},
		{name: "agent missing", change: func(_ *config.Config, f *Facts) { delete(f.AgentOf, "k1") },
			failed: map[string]string{NameAgents: "no agent beside keeper k1"}},
		{name: "PostgreSQL query fails", change: func(_ *config.Config, f *Facts) { f.PG.Err = boom },
			failed: map[string]string{NamePostgreSQL: "cannot query the master at 10.0.0.1:5432 as repl: boom", NameWALLevel: "PostgreSQL unreachable",
				NameWALSenders: "PostgreSQL unreachable", NameSlotsHeadroom: "PostgreSQL unreachable", NameSlot: "PostgreSQL unreachable",
				NameStreaming: "PostgreSQL unreachable: the lag is unknown"}},
		{name: "PostgreSQL down and no leader", change: func(_ *config.Config, f *Facts) {
			f.PG = PostgreSQL{Err: boom, ReplErr: boom}
			f.Leader, f.LeaderRecord = "", nil
		}, failed: map[string]string{NamePostgreSQL: "boom", NameReplicationRole: "the role needs REPLICATION", NameWALLevel: "PostgreSQL unreachable",
			NameWALSenders: "PostgreSQL unreachable", NameSlotsHeadroom: "PostgreSQL unreachable", NameSlot: "PostgreSQL unreachable",
			NameStreaming: "no agent leads"}},
		{name: "PostgreSQL down and the leader not streaming", change: func(_ *config.Config, f *Facts) {
			f.PG.Err, f.LeaderRecord.Streaming, f.LeaderRecord.LastError = boom, false, "slot in use"
		}, failed: map[string]string{NamePostgreSQL: "boom", NameWALLevel: "PostgreSQL unreachable", NameWALSenders: "PostgreSQL unreachable",
			NameSlotsHeadroom: "PostgreSQL unreachable", NameSlot: "PostgreSQL unreachable", NameStreaming: "leader a0 is not streaming WAL: slot in use"}},
		{name: "master unknown and the leader not streaming", change: func(_ *config.Config, f *Facts) {
			f.MasterAddress, f.PG, f.LeaderRecord.Streaming = "", PostgreSQL{}, false
		}, failed: map[string]string{NamePostgreSQL: "clusterdata unreadable", NameReplicationRole: "clusterdata unreadable", NameWALLevel: "clusterdata unreadable",
			NameWALSenders: "clusterdata unreadable", NameSlotsHeadroom: "clusterdata unreadable", NameSlot: "clusterdata unreadable",
			NameStreaming: "leader a0 is not streaming WAL;"}},
		{name: "replication refused: identity from clusterdata", change: func(cfg *config.Config, f *Facts) {
			cfg.PGUser = ""
			f.PG.ReplErr, f.PG.SystemID = boom, ""
		}, failed: map[string]string{NameReplicationRole: "no replication connection to 10.0.0.1:5432 as the default user: boom"}},
		{name: "identity unknown anywhere", change: func(_ *config.Config, f *Facts) {
			f.PG.ReplErr, f.PG.SystemID, f.Master.SystemID = boom, "", ""
		}, failed: map[string]string{NameReplicationRole: "boom", NameIdentity: "the master's system identifier is unknown"}},
		{name: "PostgreSQL settings", change: func(_ *config.Config, f *Facts) {
			f.PG.WALLevel, f.PG.Senders, f.PG.Slots, f.PG.Active = "minimal", 10, 10, false
		}, failed: map[string]string{NameWALLevel: "set it to replica", NameWALSenders: "raise max_wal_senders",
			NameSlotsHeadroom: "raise max_replication_slots", NameSlot: "nothing streams"}},
		{name: "stolon slot not declared", change: func(cfg *config.Config, f *Facts) {
			cfg.SlotMode = config.SlotModeStolon
			f.PG.SlotExists, f.PG.Active = false, false
		}, failed: map[string]string{NameSlot: `slot stolon_barnacle does not exist on the master: declare it in Stolon`}},
		{name: "stolon slot declared", change: func(cfg *config.Config, f *Facts) {
			cfg.SlotMode = config.SlotModeStolon
			f.ClusterData.Cluster.Spec.AdditionalMasterReplicationSlots = []string{"barnacle"}
			f.PG.SlotExists, f.PG.Active = false, false
		}, failed: map[string]string{NameSlot: "although additionalMasterReplicationSlots declares it"}},
		{name: "standby slots held", change: func(cfg *config.Config, f *Facts) {
			cfg.StandbySlots = true
			f.Standbys = []StandbySlot{{KeeperUID: "k1", Address: "10.0.0.2:5432", Exists: true}}
		}, names: withStandbys},
		{name: "standby slot missing", change: func(cfg *config.Config, f *Facts) {
			cfg.StandbySlots = true
			f.Standbys = []StandbySlot{{KeeperUID: "k1", Address: "10.0.0.2:5432"}}
		}, names: withStandbys, failed: map[string]string{NameStandbySlots: "keeper k1 at 10.0.0.2:5432 has no slot barnacle"}},
		{name: "leader's record missing", change: func(_ *config.Config, f *Facts) { f.LeaderRecord = nil },
			failed: map[string]string{NameStreaming: "leader a0 is not streaming WAL: its agent record is missing"}},
		{name: "lag over check-max-lag", change: func(cfg *config.Config, f *Facts) { cfg.CheckMaxLag = 128 },
			failed: map[string]string{NameStreaming: "behind the master"}},
		{name: "archive unreachable", change: func(_ *config.Config, f *Facts) { f.Archive = Archive{Err: boom} },
			names: allNames[:len(allNames)-1],
			failed: map[string]string{NameArchive: "boom: check archive-url", NameIdentity: "archive unreachable", NameWALContinuity: "archive unreachable",
				NameBackupMaximumAge: "archive unreachable", NameMinimumRedundancy: "archive unreachable", NameFailedBackups: "archive unreachable",
				NameRestoreDrill: "archive unreachable"}},
		{name: "archive not writable", change: func(_ *config.Config, f *Facts) { f.Archive.ProbeErr = boom },
			failed: map[string]string{NameArchive: "boom: check the archive's permissions"}},
		{name: "identity unreadable", change: func(_ *config.Config, f *Facts) { f.Archive.IdentityErr = boom },
			failed: map[string]string{NameIdentity: "boom: check the archive"}},
		{name: "no archive.json", change: func(_ *config.Config, f *Facts) { f.Archive.Identity = nil },
			failed: map[string]string{NameIdentity: "no archive.json"}},
		{name: "another database's archive", change: func(_ *config.Config, f *Facts) { f.Archive.Identity.SystemID = "6" },
			failed: map[string]string{NameIdentity: "belongs to another database"}},
		{name: "WAL unreadable", change: func(_ *config.Config, f *Facts) { f.Archive.WALErr = boom },
			failed: map[string]string{NameWALContinuity: "boom: check the archive"}},
		{name: "backups unreadable", change: func(_ *config.Config, f *Facts) { f.Archive.BackupsErr = boom },
			failed: map[string]string{NameWALContinuity: "backups unreadable", NameBackupMaximumAge: "boom", NameMinimumRedundancy: "boom", NameFailedBackups: "boom"}},
		{name: "WAL missing after the backup's start", change: func(_ *config.Config, f *Facts) {
			f.Archive.WAL = walPart(seg(1, 2), seg(1, 4))
		}, failed: map[string]string{NameWALContinuity: "missing " + seg(1, 3)}},
		{name: "recorded gap after the backup", change: func(_ *config.Config, f *Facts) {
			f.Archive.WAL.Gaps = []catalog.Gap{{Timeline: 1, StartLSN: 0x4000000, EndLSN: 0x5000000}}
		}, failed: map[string]string{NameWALContinuity: "recorded WAL gap on timeline 1"}},
		{name: "a recorded gap that a later done backup resolves is history", change: func(_ *config.Config, f *Facts) {
			// The archive lacks segments 4 and 5 for good; the backup
			// after them makes every later point recoverable again.
			f.Archive.WAL = walPart(seg(1, 3), seg(1, 6))
			f.Archive.WAL.Gaps = []catalog.Gap{{Timeline: 1, StartLSN: 0x4000000, EndLSN: 0x6000000}}
			f.Archive.Backups = append([]catalog.Backup{{ID: "20260501T113000", Status: catalog.StatusDone, StartTimeline: 1,
				StartLSN: 0x6000028, StopTime: f.Now.Add(-30 * time.Minute)}}, f.Archive.Backups...)
		}},
		{name: "no done backup", change: func(cfg *config.Config, f *Facts) {
			cfg.LastBackupMaximumAge = time.Hour
			f.Archive.Backups[0].Status, f.Archive.Backups[0].Error = catalog.StatusFailed, "disk full"
		}, failed: map[string]string{NameBackupMaximumAge: "no done backup", NameMinimumRedundancy: "have 0 done backups, expected at least 1",
			NameFailedBackups: "the newest backup 20260501T110000 failed: disk full"}},
		{name: "backup too old", change: func(cfg *config.Config, f *Facts) { cfg.LastBackupMaximumAge = 30 * time.Minute },
			failed: map[string]string{NameBackupMaximumAge: "is 1h0m0s old"}},
		{name: "restore-drill-max-age not set: informational", change: func(_ *config.Config, f *Facts) {
			f.Archive.Drills = []catalog.Drill{{ID: "d1", Status: "failed", FinishedAt: f.Now.Add(-time.Hour), Error: "no space"}}
		}, detail: map[string]string{NameRestoreDrill: "restore-drill-max-age not set; no restore drill has run; the last drill d1 failed: no space"}},
		{name: "no drill while restore-drill-max-age is set", change: func(cfg *config.Config, f *Facts) { cfg.RestoreDrillMaxAge = 24 * time.Hour },
			failed: map[string]string{NameRestoreDrill: "no successful restore drill (restore-drill-max-age 24h0m0s): run barnacle drill --wait, and set restore-drill-schedule"}},
		{name: "only failed drills", change: func(cfg *config.Config, f *Facts) {
			cfg.RestoreDrillMaxAge = 24 * time.Hour
			f.Archive.Drills = []catalog.Drill{{ID: "d1", Status: "failed", FinishedAt: f.Now.Add(-time.Hour), Error: "pg_amcheck found corruption"}}
		}, failed: map[string]string{NameRestoreDrill: "no successful restore drill (restore-drill-max-age 24h0m0s); the last drill d1 failed: pg_amcheck found corruption"}},
		{name: "recent successful drill", change: func(cfg *config.Config, f *Facts) {
			cfg.RestoreDrillMaxAge = 24 * time.Hour
			f.Archive.Drills = []catalog.Drill{{ID: "d1", Status: "done", FinishedAt: f.Now.Add(-2 * time.Hour), Reached: catalog.Position{Timeline: 1, LSN: 0x3000100}}}
		}, detail: map[string]string{NameRestoreDrill: "the last successful restore drill d1 finished 2h0m0s ago, reaching 0/3000100"}},
		{name: "successful drill too old", change: func(cfg *config.Config, f *Facts) {
			cfg.RestoreDrillMaxAge = time.Hour
			f.Archive.Drills = []catalog.Drill{{ID: "d1", Status: "done", FinishedAt: f.Now.Add(-2 * time.Hour)}}
		}, failed: map[string]string{NameRestoreDrill: "the last successful restore drill d1 finished 2h0m0s ago, reaching 0/0 (restore-drill-max-age 1h0m0s): run barnacle drill --wait"}},
		{name: "a failure after a success within the age passes, and says so", change: func(cfg *config.Config, f *Facts) {
			cfg.RestoreDrillMaxAge = 24 * time.Hour
			f.Archive.Drills = []catalog.Drill{{ID: "d1", Status: "done", FinishedAt: f.Now.Add(-3 * time.Hour)},
				{ID: "d2", Status: "failed", FinishedAt: f.Now.Add(-time.Hour), Error: "port in use"}}
		}, detail: map[string]string{NameRestoreDrill: "the last successful restore drill d1 finished 3h0m0s ago, reaching 0/0; the last drill d2 failed: port in use"}},
		{name: "drills unreadable", change: func(_ *config.Config, f *Facts) { f.Archive.DrillsErr = boom },
			failed: map[string]string{NameRestoreDrill: "boom: check the archive"}},
		{name: "retention policy", change: func(cfg *config.Config, f *Facts) {
			p, err := config.ParseRetentionPolicy("RECOVERY WINDOW OF 7 DAYS")
			require.NoError(t, err)
			cfg.RetentionPolicy = p
		}, detail: map[string]string{NameRetention: "RECOVERY WINDOW OF 7 DAYS"}},
		{name: "no free space reported", change: func(_ *config.Config, f *Facts) { f.Archive.Space = false },
			names: allNames[:len(allNames)-1]},
		{name: "free space unknown", change: func(_ *config.Config, f *Facts) { f.Archive.SpaceErr = boom },
			failed: map[string]string{NameFreeSpace: "boom"}},
		{name: "archive filling up", change: func(_ *config.Config, f *Facts) { f.Archive.Free = 1 << 20 },
			failed: map[string]string{NameFreeSpace: "free space under the archive"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, f := healthy()
			tt.change(&cfg, &f)
			rs := Decide(cfg, f)
			names := tt.names
			if names == nil {
				names = allNames
			}
			var got []string
			for _, r := range rs {
				got = append(got, r.Name)
			}
			require.Equal(t, names, got)
			for _, r := range rs {
				if want, ok := tt.failed[r.Name]; ok {
					assert.False(t, r.OK, "%s should fail", r.Name)
					assert.Contains(t, r.Hint, want, r.Name)
				} else {
					assert.True(t, r.OK, "%s: %s", r.Name, r.Hint)
				}
				if want, ok := tt.detail[r.Name]; ok {
					assert.Equal(t, want, r.Detail, r.Name)
				}
			}
			if len(tt.failed) == 0 {
				assert.NoError(t, Verdict(rs))
			} else {
				assert.EqualError(t, Verdict(rs), fmt.Sprintf("%d of %d checks FAILED", len(tt.failed), len(rs)))
			}
		})
	}
}
