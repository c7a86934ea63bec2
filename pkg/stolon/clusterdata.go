package stolon

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// CurrentFormatVersion is the only clusterdata formatVersion this package
// understands (Stolon's CurrentCDFormatVersion).
const CurrentFormatVersion = 1

// DB roles as Stolon writes them in DBSpec.Role.
const (
	RoleMaster  = "master"
	RoleStandby = "standby"
)

// ErrUnsupportedFormat matches, through errors.Is, every
// *UnsupportedFormatError that Decode returns.
var ErrUnsupportedFormat = errors.New("stolon: unsupported clusterdata format")

// ErrNoMaster is returned, wrapped with the reason, when clusterdata does not
// name a usable master DB: the sentinel has not elected one yet, or the
// clusterdata is inconsistent.
var ErrNoMaster = errors.New("stolon: no master")

// UnsupportedFormatError reports clusterdata whose formatVersion this package
// does not understand. A future Stolon may change the schema under a new
// version; reading it as version 1 could pick the wrong master, so it is
// refused instead.
type UnsupportedFormatError struct {
	// Version is the formatVersion found; 0 when the field is missing.
	Version uint64
}

// Error describes the version found and the remedy.
func (e *UnsupportedFormatError) Error() string {
	hint := "upgrade barnacle"
	if e.Version < CurrentFormatVersion {
		hint = "the field is missing or the value was not written by Stolon"
	}
	return fmt.Sprintf("clusterdata: formatVersion %d is not supported (barnacle understands %d); %s", e.Version, CurrentFormatVersion, hint)
}

// Is makes errors.Is(err, ErrUnsupportedFormat) true.
func (e *UnsupportedFormatError) Is(target error) bool {
	return target == ErrUnsupportedFormat
}

// ClusterData is Stolon's clusterdata value: the whole cluster state the
// sentinel writes to "<prefix>/<cluster>/clusterdata". Only the fields barnacle
// uses are decoded; the rest is ignored.
type ClusterData struct {
	FormatVersion uint64             `json:"formatVersion"`
	ChangeTime    time.Time          `json:"changeTime"`
	Cluster       Cluster            `json:"cluster"`
	Keepers       map[string]*Keeper `json:"keepers"`
	DBs           map[string]*DB     `json:"dbs"`
	Proxy         Proxy              `json:"proxy"`
}

// Cluster is the cluster-wide spec and status.
type Cluster struct {
	UID        string        `json:"uid"`
	Generation int64         `json:"generation"`
	ChangeTime time.Time     `json:"changeTime"`
	Spec       ClusterSpec   `json:"spec"`
	Status     ClusterStatus `json:"status"`
}

// ClusterSpec holds the user's cluster specification. Stolon stores only
// fields that differ from its defaults, so pointer fields are nil when unset.
// Durations are Stolon's strings ("5s"), parse them with time.ParseDuration.
type ClusterSpec struct {
	SleepInterval                    *string           `json:"sleepInterval,omitempty"`
	FailInterval                     *string           `json:"failInterval,omitempty"`
	SynchronousReplication           *bool             `json:"synchronousReplication,omitempty"`
	AdditionalMasterReplicationSlots []string          `json:"additionalMasterReplicationSlots"`
	InitMode                         *string           `json:"initMode,omitempty"`
	PITRConfig                       *PITRConfig       `json:"pitrConfig,omitempty"`
	PGParameters                     map[string]string `json:"pgParameters"`
}

// HasMasterReplicationSlot reports whether name is declared in
// additionalMasterReplicationSlots, so that the keeper keeps the slot
// "stolon_"+name (config.StolonSlotPrefix) on whichever DB is master.
func (s *ClusterSpec) HasMasterReplicationSlot(name string) bool {
	return slices.Contains(s.AdditionalMasterReplicationSlots, name)
}

// PITRConfig is how the keeper restores a cluster initialised with
// initMode "pitr".
type PITRConfig struct {
	DataRestoreCommand      string                   `json:"dataRestoreCommand,omitempty"`
	ArchiveRecoverySettings *ArchiveRecoverySettings `json:"archiveRecoverySettings,omitempty"`
	RecoveryTargetSettings  *RecoveryTargetSettings  `json:"recoveryTargetSettings,omitempty"`
}

// ArchiveRecoverySettings holds PostgreSQL's restore_command.
type ArchiveRecoverySettings struct {
	RestoreCommand string `json:"restoreCommand,omitempty"`
}

// RecoveryTargetSettings holds PostgreSQL's recovery_target* parameters.
type RecoveryTargetSettings struct {
	RecoveryTarget         string `json:"recoveryTarget,omitempty"`
	RecoveryTargetLsn      string `json:"recoveryTargetLsn,omitempty"`
	RecoveryTargetName     string `json:"recoveryTargetName,omitempty"`
	RecoveryTargetTime     string `json:"recoveryTargetTime,omitempty"`
	RecoveryTargetXid      string `json:"recoveryTargetXid,omitempty"`
	RecoveryTargetTimeline string `json:"recoveryTargetTimeline,omitempty"`
}

// ClusterStatus is the sentinel's view of the cluster.
type ClusterStatus struct {
	Phase string `json:"phase"`
	// Master is the UID of the master DB (not of its keeper). The sentinel
	// changes it when it elects a new master, before the keeper promotes.
	Master string `json:"master"`
}

// Keeper is the sentinel's record of one keeper, keyed by its stable UID.
type Keeper struct {
	UID        string       `json:"uid"`
	Generation int64        `json:"generation"`
	ChangeTime time.Time    `json:"changeTime"`
	Status     KeeperStatus `json:"status"`
}

// KeeperStatus is the keeper's health as the sentinel last saw it. Stolon
// omits "healthy" when false.
type KeeperStatus struct {
	Healthy                 bool                  `json:"healthy"`
	LastHealthyTime         time.Time             `json:"lastHealthyTime"`
	BootUUID                string                `json:"bootUUID"`
	PostgresBinaryVersion   PostgresBinaryVersion `json:"postgresBinaryVersion"`
	CanBeMaster             *bool                 `json:"canBeMaster,omitempty"`
	CanBeSynchronousReplica *bool                 `json:"canBeSynchronousReplica,omitempty"`
}

// PostgresBinaryVersion is the major and minor version of the keeper's
// PostgreSQL binaries. Stolon writes the keys capitalised ("Maj", "Min").
type PostgresBinaryVersion struct {
	Maj int `json:"Maj"`
	Min int `json:"Min"`
}

// DB is one PostgreSQL instance as the sentinel manages it. Its UID changes
// whenever the instance is re-created (for example an old master resynced
// after a failover); its Spec.KeeperUID does not.
type DB struct {
	UID        string    `json:"uid"`
	Generation int64     `json:"generation"`
	ChangeTime time.Time `json:"changeTime"`
	Spec       DBSpec    `json:"spec"`
	Status     DBStatus  `json:"status"`
}

// DBSpec is what the sentinel wants the keeper to make of the DB.
type DBSpec struct {
	KeeperUID    string        `json:"keeperUID"`
	Role         string        `json:"role"`
	FollowConfig *FollowConfig `json:"followConfig,omitempty"`
	// Followers are the DB UIDs of the standbys following this DB.
	Followers []string `json:"followers"`
	// AdditionalReplicationSlots is the cluster's
	// additionalMasterReplicationSlots, copied here by the sentinel on the
	// master only.
	AdditionalReplicationSlots []string `json:"additionalReplicationSlots"`
	InitMode                   string   `json:"initMode"`
	SynchronousReplication     bool     `json:"synchronousReplication,omitempty"`
}

// FollowConfig says whom a standby follows.
type FollowConfig struct {
	// Type is "internal" (another DB of the cluster) or "external".
	Type  string `json:"type"`
	DBUID string `json:"dbuid"`
}

// DBStatus is what the keeper last reported about the DB.
type DBStatus struct {
	Healthy           bool   `json:"healthy"`
	CurrentGeneration int64  `json:"currentGeneration"`
	ListenAddress     string `json:"listenAddress"`
	// Port is a decimal string in Stolon; see DB.Addr.
	Port string `json:"port"`
	// SystemID is PostgreSQL's system identifier. The JSON key is Stolon's
	// typo "systemdID".
	SystemID         string            `json:"systemdID"`
	TimelineID       uint64            `json:"timelineID"`
	XLogPos          uint64            `json:"xLogPos"`
	TimelinesHistory []TimelineHistory `json:"timelinesHistory,omitempty"`
	OlderWalFile     string            `json:"olderWalFile,omitempty"`
}

// TimelineHistory is one entry of the DB's timeline history: timeline
// TimelineID ended at LSN SwitchPoint (decimal, like XLogPos).
type TimelineHistory struct {
	TimelineID  uint64 `json:"timelineID"`
	SwitchPoint uint64 `json:"switchPoint"`
	Reason      string `json:"reason"`
}

// Proxy is the proxies' shared spec.
type Proxy struct {
	Generation int64     `json:"generation"`
	ChangeTime time.Time `json:"changeTime"`
	Spec       ProxySpec `json:"spec"`
}

// ProxySpec says where proxies send clients. MasterDBUID lags
// ClusterStatus.Master: the sentinel clears it at election and sets it only
// once every proxy has converged, so it is not the way to find the master.
type ProxySpec struct {
	MasterDBUID    string   `json:"masterDbUid"`
	EnabledProxies []string `json:"enabledProxies"`
}

// Decode parses a clusterdata value exactly as Stolon stores it. It checks
// formatVersion before anything else and returns an *UnsupportedFormatError
// (matching ErrUnsupportedFormat) for any version but CurrentFormatVersion;
// malformed JSON gives an error wrapping the json error. It also refuses null
// entries in "keepers" and "dbs", which Stolon never writes. Decode does not
// require a master: a cluster being initialised has none (see MasterDB).
func Decode(data []byte) (*ClusterData, error) {
	// Peek at the version first: a future format may not even decode into
	// these types, and the version error is the one an operator can act on.
	var head struct {
		FormatVersion uint64 `json:"formatVersion"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("decode clusterdata: %w", err)
	}
	if head.FormatVersion != CurrentFormatVersion {
		return nil, &UnsupportedFormatError{Version: head.FormatVersion}
	}
	var cd ClusterData
	if err := json.Unmarshal(data, &cd); err != nil {
		return nil, fmt.Errorf("decode clusterdata: %w", err)
	}
	for uid, k := range cd.Keepers {
		if k == nil {
			return nil, fmt.Errorf("decode clusterdata: keepers[%q] is null", uid)
		}
	}
	for uid, db := range cd.DBs {
		if db == nil {
			return nil, fmt.Errorf("decode clusterdata: dbs[%q] is null", uid)
		}
	}
	return &cd, nil
}

// MasterDB returns dbs[cluster.status.master]. It returns an error wrapping
// ErrNoMaster, saying which case applies, when status.master is empty or
// names no DB.
func (cd *ClusterData) MasterDB() (*DB, error) {
	uid := cd.Cluster.Status.Master
	if uid == "" {
		return nil, fmt.Errorf("%w: cluster.status.master is empty", ErrNoMaster)
	}
	db := cd.DBs[uid]
	if db == nil {
		return nil, fmt.Errorf("%w: cluster.status.master names db %q, which is not in dbs", ErrNoMaster, uid)
	}
	return db, nil
}

// DBForKeeper returns the DB that keeperUID runs, found by scanning
// dbs[*].spec.keeperUID (DB UIDs change at failovers, keeper UIDs do not).
// Should two DBs name the same keeper, the master DB wins, then the smallest
// UID, so the answer is deterministic.
func (cd *ClusterData) DBForKeeper(keeperUID string) (*DB, bool) {
	var found *DB
	for uid, db := range cd.DBs {
		if db == nil || db.Spec.KeeperUID != keeperUID {
			continue
		}
		if uid == cd.Cluster.Status.Master {
			return db, true
		}
		if found == nil || db.UID < found.UID {
			found = db
		}
	}
	return found, found != nil
}

// KeeperUIDs returns the UIDs of all keepers the sentinel knows, sorted,
// including unhealthy ones.
func (cd *ClusterData) KeeperUIDs() []string {
	uids := make([]string, 0, len(cd.Keepers))
	for uid := range cd.Keepers {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	return uids
}

// Master summarises the current master DB for barnacle's coordinator.
type Master struct {
	DBUID     string
	KeeperUID string
	Host      string
	Port      int
	// Timeline and XLogPos are the keeper's last report, which lags the
	// server; XLogPos is a decimal LSN.
	Timeline uint64
	XLogPos  uint64
	Healthy  bool
	// Converged is DB.Converged: the keeper has applied the master role.
	// It is false between election and promotion.
	Converged bool
	SystemID  string
}

// Master returns the current master. It fails with an error wrapping
// ErrNoMaster when MasterDB does, and with a plain error when the master DB
// has no keeper UID or no usable address.
func (cd *ClusterData) Master() (Master, error) {
	db, err := cd.MasterDB()
	if err != nil {
		return Master{}, err
	}
	if db.Spec.KeeperUID == "" {
		return Master{}, fmt.Errorf("master db %q has no spec.keeperUID", db.UID)
	}
	host, port, err := db.Addr()
	if err != nil {
		return Master{}, fmt.Errorf("master: %w", err)
	}
	return Master{
		DBUID:     cd.Cluster.Status.Master,
		KeeperUID: db.Spec.KeeperUID,
		Host:      host,
		Port:      port,
		Timeline:  db.Status.TimelineID,
		XLogPos:   db.Status.XLogPos,
		Healthy:   db.Status.Healthy,
		Converged: db.Converged(),
		SystemID:  db.Status.SystemID,
	}, nil
}

// Converged reports what Stolon's sentinel calls a converged DB: the keeper
// reports it healthy at the generation the sentinel last wrote. For a newly
// elected master this is when promotion has been carried out; callers should
// still check pg_is_in_recovery() themselves.
func (db *DB) Converged() bool {
	return db.Status.Healthy && db.Status.CurrentGeneration == db.Generation
}

// Addr returns the address the keeper reported for the DB, with Stolon's
// string port parsed. It fails, naming the DB UID, when the listen address is
// empty or the port is not a number from 1 to 65535.
func (db *DB) Addr() (host string, port int, err error) {
	if db.Status.ListenAddress == "" {
		return "", 0, fmt.Errorf("db %q has no status.listenAddress", db.UID)
	}
	if db.Status.Port == "" {
		return "", 0, fmt.Errorf("db %q has no status.port", db.UID)
	}
	p, err := strconv.ParseUint(db.Status.Port, 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("db %q has invalid status.port %q: want 1 to 65535", db.UID, db.Status.Port)
	}
	return db.Status.ListenAddress, int(p), nil
}
