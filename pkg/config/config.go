// Package config holds barnacle's configuration: its keys and defaults, and
// Load, which layers the YAML file, the BARNACLE_* environment and explicit
// flags, in that order, and reports every bad value at once, each naming the
// key (or variable, or flag) and what to change.
//
// Other modules may import this package, but its API is not stable.
package config

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/redact"
)

// Config is barnacle's effective configuration. Load returns it validated;
// nobody changes it afterwards.
type Config struct {
	ClusterName    string
	StoreEndpoints []string
	StorePrefix    string
	BarnaclePrefix string

	StoreCertFile     string
	StoreKeyFile      string
	StoreCAFile       string
	StoreUsername     string
	StorePasswordFile string

	AgentName           string
	KeeperUID           string
	LeaderPolicy        string
	LeaseTTL            time.Duration
	LeaderTakeoverDelay time.Duration

	// NodeName, KeeperPodSelector and KeeperPodNamespace find the keeper
	// when KeeperUID is KeeperUIDAuto (the DaemonSet).
	NodeName           string
	KeeperPodSelector  string
	KeeperPodNamespace string

	PGHost         string
	PGPort         int
	PGUser         string
	PGPasswordFile string
	PGDBName       string

	ArchiveURL   string
	SlotName     string
	SlotMode     string
	StandbySlots bool
	Synchronous  bool
	Compression  string

	BackupSchedule    Schedule
	BackupFrom        string
	ManifestChecksums string

	RetentionPolicy      RetentionPolicy
	MinimumRedundancy    int
	LastBackupMaximumAge time.Duration
	CheckMaxLag          int64

	RestoreRoot string
	// RestoreDrillSchedule is when the leader requests a restore drill;
	// RestoreDrillMaxAge is how old the last successful one may be before
	// barnacle check fails (0: not checked); RestoreDrillOnMaster lets
	// the agent beside the master run drills; PGBinDir holds the server
	// binaries a drill starts (postgres, pg_ctl, pg_amcheck);
	// RestoreDrillSuperuser is the superuser role a drill connects to its
	// restored server as ("": the OS user the server runs as, then
	// postgres); RestoreDrillReplayTimeout bounds a drill's replay (0: the
	// drill's default, drill.DefaultReplayTimeout).
	RestoreDrillSchedule      Schedule
	RestoreDrillMaxAge        time.Duration
	RestoreDrillOnMaster      bool
	PGBinDir                  string
	RestoreDrillSuperuser     string
	RestoreDrillReplayTimeout time.Duration
	// RequestRetention is how long finished requests stay in etcd; 0
	// keeps them.
	RequestRetention time.Duration

	MetricsListenAddress string
	LogLevel             string
	LogFormat            string

	// Sources records where each key that is not a default came from
	// ("file /etc/barnacle.yaml", "env BARNACLE_LEASE_TTL", "flag --lease-ttl"),
	// for error messages and for the effective-config log line.
	Sources map[string]string
}

// Leader policies, DESIGN.md §1.
const (
	PolicyFollowMaster = "follow-master"
	PolicyAny          = "any"
)

// KeeperUIDAuto as keeper-uid makes the agent find the keeper on its own
// Kubernetes node (node-name, keeper-pod-selector) instead of naming it.
const KeeperUIDAuto = "auto"

// Slot modes, DESIGN.md §6.
const (
	SlotModeOwn    = "own"
	SlotModeStolon = "stolon"
)

// Where a backup runs (backup-from, and the "from" of a backup request).
const (
	BackupFromMaster  = "master"
	BackupFromStandby = "standby"
	BackupFromAny     = "any"
)

// StolonSlotPrefix is the prefix Stolon gives the slots it manages.
const StolonSlotPrefix = "stolon_"

// StreamingSlotName is the slot the leader streams from: slot-name, or
// Stolon's stolon_<slot-name> in slot-mode stolon.
func (c Config) StreamingSlotName() string {
	if c.SlotMode == SlotModeStolon {
		return StolonSlotPrefix + c.SlotName
	}
	return c.SlotName
}

// Default returns the built-in defaults, the first layer of Load.
func Default() Config {
	return Config{
		StorePrefix:          "stolon/cluster",
		BarnaclePrefix:       "barnacle",
		LeaderPolicy:         PolicyFollowMaster,
		KeeperPodSelector:    "component=stolon-keeper",
		LeaseTTL:             10 * time.Second,
		LeaderTakeoverDelay:  30 * time.Second,
		PGDBName:             "postgres",
		SlotName:             "barnacle",
		SlotMode:             SlotModeOwn,
		StandbySlots:         true,
		Compression:          "none",
		BackupFrom:           BackupFromMaster,
		ManifestChecksums:    "crc32c",
		CheckMaxLag:          64 << 20,
		RequestRetention:     7 * 24 * time.Hour,
		MetricsListenAddress: ":9187",
		LogLevel:             "info",
		LogFormat:            "text",
		Sources:              map[string]string{},
	}
}

// String renders the configuration for the start-up log line. Secrets never
// appear: only the names of the files that hold them do.
func (c Config) String() string {
	var b strings.Builder
	for _, k := range keys {
		v := k.get(&c)
		if v == "" {
			continue
		}
		// Load refuses credentials in URLs; this is the second fence.
		switch k.name {
		case "archive-url":
			v = redact.URL(v)
		case "store-endpoints":
			v = redact.URLs(c.StoreEndpoints)
		}
		fmt.Fprintf(&b, "%s=%s ", k.name, v)
	}
	return strings.TrimSpace(b.String())
}

// PGConnString builds a libpq keyword/value connection string to host:port
// as pg-user, with the password from pg-password-file (else libpq's
// PGPASSWORD or PGPASSFILE apply) and application_name barnacle, which is
// what synchronous_standby_names would list. With replication it is a
// physical replication connection, otherwise one to pg-dbname.
func (c Config) PGConnString(host string, port int, replication bool) (string, error) {
	kv := []string{
		"host=" + quoteConnValue(host),
		fmt.Sprintf("port=%d", port),
		"application_name=barnacle",
		"connect_timeout=10",
	}
	if replication {
		kv = append(kv, "replication=true")
	} else if c.PGDBName != "" {
		kv = append(kv, "dbname="+quoteConnValue(c.PGDBName))
	}
	if c.PGUser != "" {
		kv = append(kv, "user="+quoteConnValue(c.PGUser))
	}
	if c.PGPasswordFile != "" {
		pw, err := os.ReadFile(c.PGPasswordFile)
		if err != nil {
			return "", fmt.Errorf("read pg-password-file: %w", err)
		}
		kv = append(kv, "password="+quoteConnValue(strings.TrimRight(string(pw), "\r\n")))
	}
	return strings.Join(kv, " "), nil
}

// quoteConnValue quotes a keyword/value connection string value the way
// libpq parses it: in single quotes, with backslash and quote escaped.
func quoteConnValue(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(v) + "'"
}
