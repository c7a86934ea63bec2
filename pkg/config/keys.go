package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/redact"
)

// key describes one configuration key: its YAML name (flags use the same
// name, environment variables its upper-snake form), its help text, and how
// to parse and print it. One table drives the file, the environment, the
// flags, the docs test and the redacted log line, so they cannot disagree.
type key struct {
	name string
	help string
	set  func(c *Config, v string) error
	get  func(c *Config) string
	// boolean keys become flags that need no value (--standby-slots).
	boolean bool
}

// Key is the public view of a configuration key, for building flags and docs.
type Key struct {
	Name    string
	Help    string
	Default string
	Boolean bool
}

// Keys lists every configuration key in documentation order.
func Keys() []Key {
	d := Default()
	out := make([]Key, 0, len(keys))
	for _, k := range keys {
		out = append(out, Key{Name: k.name, Help: k.help, Default: k.get(&d), Boolean: k.boolean})
	}
	return out
}

// EnvName returns the environment variable for a key: BARNACLE_ and the key
// in upper snake case, the way Stolon maps STKEEPER_* to its flags.
func EnvName(key string) string {
	return "BARNACLE_" + strings.ToUpper(strings.ReplaceAll(key, "-", "_"))
}

func lookupKey(name string) (key, bool) {
	for _, k := range keys {
		if k.name == name {
			return k, true
		}
	}
	return key{}, false
}

func str(field func(*Config) *string) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error { *field(c) = strings.TrimSpace(v); return nil },
		func(c *Config) string { return *field(c) }
}

func duration(field func(*Config) *time.Duration) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("invalid duration %q: use a Go duration such as 10s, 1m30s", v)
			}
			*field(c) = d
			return nil
		}, func(c *Config) string {
			if *field(c) == 0 {
				return ""
			}
			return field(c).String()
		}
}

func oneOf(field func(*Config) *string, allowed ...string) (func(*Config, string) error, func(*Config) string) {
	set, get := str(field)
	return func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		for _, a := range allowed {
			if v == a {
				return set(c, v)
			}
		}
		return fmt.Errorf("invalid value %q: use one of %s", v, strings.Join(allowed, ", "))
	}, get
}

func boolean(field func(*Config) *bool) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("invalid boolean %q: use true or false", v)
			}
			*field(c) = b
			return nil
		}, func(c *Config) string {
			return strconv.FormatBool(*field(c))
		}
}

var (
	slotNameRE    = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
	clusterNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	keeperUIDRE   = regexp.MustCompile(`^[a-z0-9_]+$`)
	// selectorTermRE is one term of an equality-based label selector: a
	// label key (optionally prefixed) with =, == or != and a value, or
	// the key alone, or !key.
	selectorTermRE = regexp.MustCompile(`^(!?[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?|[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?\s*(=|==|!=)\s*([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?)$`)
)

var keys = func() []key {
	var ks []key
	add := func(name, help string, set func(*Config, string) error, get func(*Config) string) {
		ks = append(ks, key{name: name, help: help, set: set, get: get})
	}
	addBool := func(name, help string, set func(*Config, string) error, get func(*Config) string) {
		ks = append(ks, key{name: name, help: help, set: set, get: get, boolean: true})
	}

	add("cluster-name", "Stolon cluster name (stolon's --cluster-name); required", func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		if v != "" && !clusterNameRE.MatchString(v) {
			return fmt.Errorf("invalid cluster name %q: use letters, digits, '_', '.', '-'", v)
		}
		c.ClusterName = v
		return nil
	}, func(c *Config) string { return c.ClusterName })
	add("store-endpoints", "etcd endpoints, comma-separated (http://127.0.0.1:2379)", func(c *Config, v string) error {
		var eps []string
		for _, e := range strings.Split(v, ",") {
			e = strings.TrimSpace(e)
			if e == "" {
				continue
			}
			u, err := url.Parse(e)
			switch {
			case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
				return fmt.Errorf("invalid endpoint %q: use http://host:port or https://host:port", redact.URL(e))
			case u.User != nil:
				return fmt.Errorf("invalid endpoint %q: credentials never go in an endpoint; set store-username and store-password-file", redact.URL(e))
			case u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "":
				return fmt.Errorf("invalid endpoint %q: use http://host:port or https://host:port, without a path or query", redact.URL(e))
			}
			eps = append(eps, e)
		}
		c.StoreEndpoints = eps
		return nil
	}, func(c *Config) string { return strings.Join(c.StoreEndpoints, ",") })
	s, g := str(func(c *Config) *string { return &c.StorePrefix })
	add("store-prefix", "Stolon's etcd prefix (stolon's --store-prefix)", s, g)
	s, g = str(func(c *Config) *string { return &c.BarnaclePrefix })
	add("barnacle-prefix", "etcd prefix of barnacle's own keys", s, g)
	s, g = str(func(c *Config) *string { return &c.StoreCertFile })
	add("store-cert-file", "etcd client TLS certificate file", s, g)
	s, g = str(func(c *Config) *string { return &c.StoreKeyFile })
	add("store-key", "etcd client TLS private key file", s, g)
	s, g = str(func(c *Config) *string { return &c.StoreCAFile })
	add("store-ca-file", "etcd server CA certificate file", s, g)
	s, g = str(func(c *Config) *string { return &c.StoreUsername })
	add("store-username", "etcd user (password from store-password-file)", s, g)
	s, g = str(func(c *Config) *string { return &c.StorePasswordFile })
	add("store-password-file", "file holding the etcd user's password", s, g)

	s, g = str(func(c *Config) *string { return &c.AgentName })
	add("agent-name", "this agent's name in etcd (default: keeper-uid, else the hostname)", s, g)
	add("keeper-uid", "UID of the Stolon keeper this agent runs beside (stolon-keeper --uid); auto: find the keeper on this Kubernetes node (node-name, keeper-pod-selector)", func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		if v != "" && !keeperUIDRE.MatchString(v) {
			return fmt.Errorf("invalid keeper UID %q: Stolon keeper UIDs use only a-z, 0-9 and '_'", v)
		}
		c.KeeperUID = v
		return nil
	}, func(c *Config) string { return c.KeeperUID })
	s, g = str(func(c *Config) *string { return &c.NodeName })
	add("node-name", "with keeper-uid auto: the Kubernetes node this agent runs on (spec.nodeName from the downward API)", s, g)
	add("keeper-pod-selector", "with keeper-uid auto: label selector of the keeper pods (equality-based, as kubectl -l takes it)", func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		for _, term := range strings.Split(v, ",") {
			if !selectorTermRE.MatchString(strings.TrimSpace(term)) {
				return fmt.Errorf("invalid label selector term %q: use key=value, key!=value, key or !key, comma-separated", term)
			}
		}
		c.KeeperPodSelector = v
		return nil
	}, func(c *Config) string { return c.KeeperPodSelector })
	s, g = str(func(c *Config) *string { return &c.KeeperPodNamespace })
	add("keeper-pod-namespace", "with keeper-uid auto: the keepers' namespace (default: the agent's own)", s, g)
	s, g = oneOf(func(c *Config) *string { return &c.LeaderPolicy }, PolicyFollowMaster, PolicyAny)
	add("leader-policy", "who may lead: follow-master (the master's agent) or any (a dedicated backup host)", s, g)
	ds, dg := duration(func(c *Config) *time.Duration { return &c.LeaseTTL })
	add("lease-ttl", "etcd lease TTL of the agent's session; a dead leader is replaced after it", ds, dg)
	ds, dg = duration(func(c *Config) *time.Duration { return &c.LeaderTakeoverDelay })
	add("leader-takeover-delay", "how long no agent beside the master may lead before another agent takes over", ds, dg)

	s, g = str(func(c *Config) *string { return &c.PGHost })
	add("pg-host", "PostgreSQL host of this agent's keeper, or the master's without keeper-uid; ignored while keeper-uid auto serves no keeper (default: the address in clusterdata)", s, g)
	add("pg-port", "PostgreSQL port of this agent's keeper, or the master's without keeper-uid; ignored while keeper-uid auto serves no keeper (default: the port in clusterdata, else 5432)", func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("invalid port %q: use a number from 1 to 65535", v)
		}
		c.PGPort = n
		return nil
	}, func(c *Config) string {
		if c.PGPort == 0 {
			return ""
		}
		return strconv.Itoa(c.PGPort)
	})
	s, g = str(func(c *Config) *string { return &c.PGUser })
	add("pg-user", "PostgreSQL role with the REPLICATION attribute (Stolon's --pg-repl-username)", s, g)
	s, g = str(func(c *Config) *string { return &c.PGPasswordFile })
	add("pg-password-file", "file holding pg-user's password (or use PGPASSFILE / PGPASSWORD)", s, g)
	s, g = str(func(c *Config) *string { return &c.PGDBName })
	add("pg-dbname", "database for the agent's SQL connections", s, g)

	add("archive-url", "where the archive lives: file:///absolute/path or s3://bucket/prefix?endpoint=https://host:port&region=r (credentials never go in it: they come from the AWS credential chain)", func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		shown := redact.URL(v)
		u, err := url.Parse(v)
		switch {
		case err != nil:
			// url.Error repeats the raw URL, which may hold a secret.
			var uerr *url.Error
			if errors.As(err, &uerr) {
				err = uerr.Err
			}
			return fmt.Errorf("invalid URL %q: %v", shown, err)
		case u.User != nil:
			return fmt.Errorf("invalid URL %q: credentials never go in the archive URL; "+
				"for s3 use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment, a shared credentials file (AWS_SHARED_CREDENTIALS_FILE) or an IAM role", shown)
		case u.Scheme == "s3":
			if u.Host == "" {
				return fmt.Errorf("invalid S3 URL %q: name the bucket, s3://bucket/prefix?endpoint=https://host:port&region=r", shown)
			}
			q, err := url.ParseQuery(u.RawQuery)
			if err != nil {
				return fmt.Errorf("invalid S3 URL %q: its query does not parse", shown)
			}
			for _, ep := range q["endpoint"] {
				if eu, err := url.Parse(ep); err == nil && eu.User != nil {
					return fmt.Errorf("invalid S3 URL %q: credentials never go in the endpoint parameter; "+
						"use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment, a shared credentials file (AWS_SHARED_CREDENTIALS_FILE) or an IAM role", shown)
				}
			}
		case u.Scheme != "file":
			return fmt.Errorf("unsupported scheme in %q: use file:///absolute/path or s3://bucket/prefix", shown)
		case u.Host != "" || !strings.HasPrefix(u.Path, "/"):
			return fmt.Errorf("invalid file URL %q: use three slashes and an absolute path, file:///var/lib/barnacle", shown)
		case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
			return fmt.Errorf("invalid file URL %q: file URLs take no query or fragment, file:///var/lib/barnacle", shown)
		}
		c.ArchiveURL = v
		return nil
	}, func(c *Config) string { return c.ArchiveURL })
	add("slot-name", "replication slot barnacle streams from (slot-mode stolon adds Stolon's stolon_ prefix)", func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		if !slotNameRE.MatchString(v) {
			return fmt.Errorf("invalid slot name %q: PostgreSQL slot names use 1 to 63 of a-z, 0-9 and '_'", v)
		}
		c.SlotName = v
		return nil
	}, func(c *Config) string { return c.SlotName })
	s, g = oneOf(func(c *Config) *string { return &c.SlotMode }, SlotModeOwn, SlotModeStolon)
	add("slot-mode", "own: barnacle creates its slot on the master; stolon: use stolon_<slot-name> from additionalMasterReplicationSlots", s, g)
	bs, bg := boolean(func(c *Config) *bool { return &c.StandbySlots })
	addBool("standby-slots", "followers keep a slot on their standby, advanced to the archived position, so a promoted standby still has the WAL the archive lacks", bs, bg)
	bs, bg = boolean(func(c *Config) *bool { return &c.Synchronous })
	addBool("synchronous", "report the flushed position to PostgreSQL right after every write to the archive (for synchronous_standby_names)", bs, bg)
	s, g = oneOf(func(c *Config) *string { return &c.Compression }, "none", "zstd", "lz4")
	add("compression", "compression of archived WAL segments and base backups: none, zstd or lz4", s, g)
	add("backup-schedule", "when the leader takes base backups: an interval (24h: when the newest backup is older) or a cron expression in UTC (\"0 2 * * *\", @daily); empty: only on request", func(c *Config, v string) error {
		sc, err := ParseSchedule(v)
		if err != nil {
			return err
		}
		c.BackupSchedule = sc
		return nil
	}, func(c *Config) string { return c.BackupSchedule.String() })
	s, g = oneOf(func(c *Config) *string { return &c.BackupFrom }, BackupFromMaster, BackupFromStandby, BackupFromAny)
	add("backup-from", "where scheduled backups and barnacle backup run by default: master, standby (a healthy standby's agent) or any (the leader)", s, g)
	// In any case, as pg_basebackup --manifest-checksums takes it.
	setOne, g := oneOf(func(c *Config) *string { return &c.ManifestChecksums }, "crc32c", "sha224", "sha256", "sha384", "sha512", "none")
	setChecksums := func(c *Config, v string) error { return setOne(c, strings.ToLower(v)) }
	add("manifest-checksums", "algorithm of the per-file checksums PostgreSQL puts in a base backup's manifest: crc32c (pg_basebackup's default), sha224, sha256, sha384, sha512 (each costs the server about 0.6 s more CPU per GB than crc32c) or none", setChecksums, g)
	add("retention-policy", "which backups to keep, Barman's grammar: REDUNDANCY 3 or RECOVERY WINDOW OF 7 DAYS (DAYS, WEEKS, MONTHS); empty: keep all", func(c *Config, v string) error {
		p, err := ParseRetentionPolicy(v)
		if err != nil {
			return err
		}
		c.RetentionPolicy = p
		return nil
	}, func(c *Config) string { return c.RetentionPolicy.String() })
	add("minimum-redundancy", "retention never leaves fewer done backups than this", func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 {
			return fmt.Errorf("invalid number %q: use 0 or more", v)
		}
		c.MinimumRedundancy = n
		return nil
	}, func(c *Config) string {
		if c.MinimumRedundancy == 0 {
			return ""
		}
		return strconv.Itoa(c.MinimumRedundancy)
	})
	ds, dg = duration(func(c *Config) *time.Duration { return &c.LastBackupMaximumAge })
	add("last-backup-maximum-age", "barnacle check fails when the newest done backup is older than this (e.g. 26h); empty: not checked", ds, dg)
	add("check-max-lag", "barnacle check fails when the archive is further than this behind the master (PostgreSQL units: 64MB)", func(c *Config, v string) error {
		n, err := ParseSize(v)
		if err != nil {
			return err
		}
		c.CheckMaxLag = n
		return nil
	}, func(c *Config) string { return FormatSize(c.CheckMaxLag) })
	add("restore-root", "restore requests through etcd may only write below this directory (absolute; symlinks are resolved); empty: such requests are refused", func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		if v != "" && !strings.HasPrefix(v, "/") {
			return fmt.Errorf("invalid directory %q: use an absolute path", v)
		}
		c.RestoreRoot = v
		return nil
	}, func(c *Config) string { return c.RestoreRoot })
	add("restore-drill-schedule", "when the leader requests a restore drill (barnacle drill): an interval (168h: when the newest drill started longer ago) or a cron expression in UTC (\"0 4 * * 0\", @weekly); empty: only on request", func(c *Config, v string) error {
		sc, err := ParseSchedule(v)
		if err != nil {
			return err
		}
		c.RestoreDrillSchedule = sc
		return nil
	}, func(c *Config) string { return c.RestoreDrillSchedule.String() })
	setAge, getAge := duration(func(c *Config) *time.Duration { return &c.RestoreDrillMaxAge })
	add("restore-drill-max-age", "barnacle check fails when the last successful restore drill is older than this, or there is none (e.g. 192h); empty: not checked", func(c *Config, v string) error {
		if err := setAge(c, v); err != nil {
			return err
		}
		if c.RestoreDrillMaxAge < 0 {
			return fmt.Errorf("invalid duration %q: use a positive duration such as 192h, or leave it empty", v)
		}
		return nil
	}, getAge)
	bs, bg = boolean(func(c *Config) *bool { return &c.RestoreDrillOnMaster })
	addBool("restore-drill-on-master", "let this agent run restore drills while its keeper is the master (a drill reads the archive and loads the host's disks and CPU); off: only agents beside standbys and agents without a keeper run them", bs, bg)
	add("pg-bin-dir", "directory of the PostgreSQL server binaries a restore drill runs (postgres, pg_ctl, pg_amcheck), of the archive's major version; empty: found on PATH", func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		if v != "" && !strings.HasPrefix(v, "/") {
			return fmt.Errorf("invalid directory %q: use an absolute path, such as /usr/lib/postgresql/15/bin", v)
		}
		c.PGBinDir = v
		return nil
	}, func(c *Config) string { return c.PGBinDir })
	add("restore-drill-superuser", "the superuser role a restore drill connects to its restored server as (Stolon's keeper --pg-su-username); empty: the OS user the server runs as, then postgres", func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		// PostgreSQL truncates identifiers to NAMEDATALEN-1 bytes; a
		// longer name would connect as another role.
		if len(v) > 63 || strings.ContainsRune(v, 0) {
			return fmt.Errorf("invalid role name %q: use the cluster's superuser name (at most 63 bytes), such as postgres", v)
		}
		c.RestoreDrillSuperuser = v
		return nil
	}, func(c *Config) string { return c.RestoreDrillSuperuser })

	setReplay, getReplay := duration(func(c *Config) *time.Duration { return &c.RestoreDrillReplayTimeout })
	add("restore-drill-replay-timeout", "how long a restore drill may take from starting its restored server to the end of recovery (replaying the archived WAL) before it fails; empty: 2h", func(c *Config, v string) error {
		if err := setReplay(c, v); err != nil {
			return err
		}
		if c.RestoreDrillReplayTimeout < 0 {
			return fmt.Errorf("invalid duration %q: use a positive duration such as 6h, or leave it empty for 2h", v)
		}
		return nil
	}, getReplay)

	ds, dg = duration(func(c *Config) *time.Duration { return &c.RequestRetention })
	add("request-retention", "how long finished backup, restore and drill requests (and their status) stay in etcd, and claimed ones whose status was deleted, counted from the claim; the leader logs each result as it deletes them; 0 keeps them forever", ds, dg)

	add("metrics-listen-address", "address of /metrics, /healthz, /readyz and /status (host:port; GET and HEAD only, no authentication); the default :9187 is every interface: use 127.0.0.1:9187 or the pod IP where only Prometheus should reach it", func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
			return fmt.Errorf("invalid address %q: use host:port, such as :9187 or 127.0.0.1:9187", v)
		}
		c.MetricsListenAddress = v
		return nil
	}, func(c *Config) string { return c.MetricsListenAddress })
	s, g = oneOf(func(c *Config) *string { return &c.LogLevel }, "trace", "debug", "info", "warn", "error")
	add("log-level", "log level: trace, debug, info, warn or error", s, g)
	s, g = oneOf(func(c *Config) *string { return &c.LogFormat }, "text", "json")
	add("log-format", "log format: text (colored on a terminal) or json (for log collectors)", s, g)
	return ks
}()
