package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"

	"github.com/barnacle-pg/barnacle/pkg/config"
)

// reloadable holds the configuration whose live keys change without a
// restart (STYLE.md §7). The agent gives its parts getters (func() T in
// their options) that read those keys through Config each time they need
// them; every other key keeps its start-up value.
// It is safe for concurrent use.
type reloadable struct {
	p atomic.Pointer[config.Config]
}

func newReloadable(cfg config.Config) *reloadable {
	r := &reloadable{}
	r.p.Store(&cfg)
	return r
}

// Config returns the current configuration. Callers must not modify the
// maps and slices it shares with the stored value.
func (r *reloadable) Config() config.Config { return *r.p.Load() }

// liveConfig is the agent's current configuration: the start-up one with
// the live keys (reloadKeys) as last reloaded.
func (a *Agent) liveConfig() config.Config { return a.live.Config() }

// reloadKey is one configuration key as reload sees it: how to compare it,
// and, for a live key, how to take the new value.
type reloadKey struct {
	name string
	get  func(c *config.Config) any
	// take copies the key's value from src into dst; nil means the key
	// needs a restart.
	take func(dst, src *config.Config)
}

// reloadKeys lists every configuration key (TestReloadKeysCoverConfig
// keeps it complete). The live ones are read through the getters that
// build (agent.go) puts in each part's options, or through liveConfig:
// log-level by the logger, backup-schedule, backup-from and
// manifest-checksums by backups, retention-policy and minimum-redundancy
// by retention, request-retention by the request expirer, check-max-lag
// by /readyz, restore-drill-schedule by the drill schedule,
// restore-drill-replay-timeout by each drill as it starts,
// last-backup-maximum-age and restore-drill-max-age by nobody in the agent yet. The
// archiver and the standby slot keeper take fixed keys only. The files named by pg-password-file and store-cert-file/store-key
// are re-read when used, so their contents rotate without a reload; their
// names need a restart.
var reloadKeys = []reloadKey{
	fixed("cluster-name", func(c *config.Config) any { return c.ClusterName }),
	fixed("store-endpoints", func(c *config.Config) any { return strings.Join(c.StoreEndpoints, ",") }),
	fixed("store-prefix", func(c *config.Config) any { return c.StorePrefix }),
	fixed("barnacle-prefix", func(c *config.Config) any { return c.BarnaclePrefix }),
	fixed("store-cert-file", func(c *config.Config) any { return c.StoreCertFile }),
	fixed("store-key", func(c *config.Config) any { return c.StoreKeyFile }),
	fixed("store-ca-file", func(c *config.Config) any { return c.StoreCAFile }),
	fixed("store-username", func(c *config.Config) any { return c.StoreUsername }),
	fixed("store-password-file", func(c *config.Config) any { return c.StorePasswordFile }),
	fixed("agent-name", func(c *config.Config) any { return c.AgentName }),
	fixed("keeper-uid", func(c *config.Config) any { return c.KeeperUID }),
	fixed("node-name", func(c *config.Config) any { return c.NodeName }),
	fixed("keeper-pod-selector", func(c *config.Config) any { return c.KeeperPodSelector }),
	fixed("keeper-pod-namespace", func(c *config.Config) any { return c.KeeperPodNamespace }),
	fixed("leader-policy", func(c *config.Config) any { return c.LeaderPolicy }),
	fixed("lease-ttl", func(c *config.Config) any { return c.LeaseTTL }),
	fixed("leader-takeover-delay", func(c *config.Config) any { return c.LeaderTakeoverDelay }),
	fixed("pg-host", func(c *config.Config) any { return c.PGHost }),
	fixed("pg-port", func(c *config.Config) any { return c.PGPort }),
	fixed("pg-user", func(c *config.Config) any { return c.PGUser }),
	fixed("pg-password-file", func(c *config.Config) any { return c.PGPasswordFile }),
	fixed("pg-dbname", func(c *config.Config) any { return c.PGDBName }),
	fixed("archive-url", func(c *config.Config) any { return c.ArchiveURL }),
	fixed("slot-name", func(c *config.Config) any { return c.SlotName }),
	fixed("slot-mode", func(c *config.Config) any { return c.SlotMode }),
	fixed("standby-slots", func(c *config.Config) any { return c.StandbySlots }),
	fixed("synchronous", func(c *config.Config) any { return c.Synchronous }),
	fixed("compression", func(c *config.Config) any { return c.Compression }),
	live("backup-schedule", func(c *config.Config) any { return c.BackupSchedule.String() },
		func(dst, src *config.Config) { dst.BackupSchedule = src.BackupSchedule }),
	live("backup-from", func(c *config.Config) any { return c.BackupFrom },
		func(dst, src *config.Config) { dst.BackupFrom = src.BackupFrom }),
	live("manifest-checksums", func(c *config.Config) any { return c.ManifestChecksums },
		func(dst, src *config.Config) { dst.ManifestChecksums = src.ManifestChecksums }),
	live("retention-policy", func(c *config.Config) any { return c.RetentionPolicy.String() },
		func(dst, src *config.Config) { dst.RetentionPolicy = src.RetentionPolicy }),
	live("minimum-redundancy", func(c *config.Config) any { return c.MinimumRedundancy },
		func(dst, src *config.Config) { dst.MinimumRedundancy = src.MinimumRedundancy }),
	live("last-backup-maximum-age", func(c *config.Config) any { return c.LastBackupMaximumAge },
		func(dst, src *config.Config) { dst.LastBackupMaximumAge = src.LastBackupMaximumAge }),
	live("check-max-lag", func(c *config.Config) any { return c.CheckMaxLag },
		func(dst, src *config.Config) { dst.CheckMaxLag = src.CheckMaxLag }),
	fixed("restore-root", func(c *config.Config) any { return c.RestoreRoot }),
	live("restore-drill-schedule", func(c *config.Config) any { return c.RestoreDrillSchedule.String() },
		func(dst, src *config.Config) { dst.RestoreDrillSchedule = src.RestoreDrillSchedule }),
	live("restore-drill-max-age", func(c *config.Config) any { return c.RestoreDrillMaxAge },
		func(dst, src *config.Config) { dst.RestoreDrillMaxAge = src.RestoreDrillMaxAge }),
	fixed("restore-drill-on-master", func(c *config.Config) any { return c.RestoreDrillOnMaster }),
	fixed("pg-bin-dir", func(c *config.Config) any { return c.PGBinDir }),
	fixed("restore-drill-superuser", func(c *config.Config) any { return c.RestoreDrillSuperuser }),
	live("restore-drill-replay-timeout", func(c *config.Config) any { return c.RestoreDrillReplayTimeout },
		func(dst, src *config.Config) { dst.RestoreDrillReplayTimeout = src.RestoreDrillReplayTimeout }),
	live("request-retention", func(c *config.Config) any { return c.RequestRetention },
		func(dst, src *config.Config) { dst.RequestRetention = src.RequestRetention }),
	fixed("metrics-listen-address", func(c *config.Config) any { return c.MetricsListenAddress }),
	live("log-level", func(c *config.Config) any { return c.LogLevel },
		func(dst, src *config.Config) { dst.LogLevel = src.LogLevel }),
	fixed("log-format", func(c *config.Config) any { return c.LogFormat }),
}

// LiveKeys names the keys a reload applies at once, in reloadKeys' order,
// for `barnacle agent --help`.
func LiveKeys() []string {
	var out []string
	for _, k := range reloadKeys {
		if k.take != nil {
			out = append(out, k.name)
		}
	}
	return out
}

func fixed(name string, get func(*config.Config) any) reloadKey {
	return reloadKey{name: name, get: get}
}

func live(name string, get func(*config.Config) any, take func(dst, src *config.Config)) reloadKey {
	return reloadKey{name: name, get: get, take: take}
}

// configChange is the outcome of comparing a reloaded configuration with
// the running one.
type configChange struct {
	// next is the running configuration with the changed live keys taken
	// from the new one.
	next config.Config
	// applied and restart name the changed keys that were taken, and
	// those that need a restart and were not.
	applied, restart []string
}

// diffConfig compares the running configuration with a newly loaded one.
// It is pure.
func diffConfig(running, loaded config.Config) configChange {
	ch := configChange{next: running}
	for _, k := range reloadKeys {
		if k.get(&running) == k.get(&loaded) {
			continue
		}
		if k.take == nil {
			ch.restart = append(ch.restart, k.name)
			continue
		}
		k.take(&ch.next, &loaded)
		ch.applied = append(ch.applied, k.name)
	}
	return ch
}

// ReloadOptions enable live configuration reload (Agent.EnableReload).
type ReloadOptions struct {
	// File is the --config file to watch; "" reloads on SIGHUP only.
	File string
	// Load loads the configuration again exactly as at start-up (the
	// file, the environment and the flags given then). It must be safe to
	// call from another goroutine.
	Load func() (config.Config, error)
}

// reloader is the state of live reload.
type reloader struct {
	opts   ReloadOptions
	sighup chan os.Signal
	// fileSum is the SHA-256 of the file's bytes at the last load, so that
	// the events of an unchanged file (touch, a ConfigMap's periodic
	// symlink refresh) do not reload.
	fileSum [sha256.Size]byte
}

// EnableReload makes Run watch opts.File (through its directory, because
// editors and Kubernetes ConfigMaps replace a file by rename or symlink
// swap) and handle SIGHUP: each time, opts.Load runs again and, when it
// succeeds, the live keys (log-level, backup-schedule, backup-from,
// retention-policy, minimum-redundancy, last-backup-maximum-age,
// check-max-lag) take their new values; a change to any other key is
// logged as needing a restart. When Load fails, the running configuration
// stays and the error is logged. Call it before Run; from this call on,
// SIGHUP no longer ends the process.
func (a *Agent) EnableReload(opts ReloadOptions) {
	r := &reloader{opts: opts, sighup: make(chan os.Signal, 1)}
	if opts.File != "" {
		if data, err := os.ReadFile(opts.File); err == nil {
			r.fileSum = sha256.Sum256(data)
		}
	}
	signal.Notify(r.sighup, syscall.SIGHUP)
	a.reloader = r
}

// reloadDebounce is how long the watcher waits after a file event for the
// next one, so that an editor's write, rename and chmod reload once.
const reloadDebounce = 200 * time.Millisecond

// watchConfig runs live reload until ctx ends. It never fails: a watcher
// that cannot start leaves SIGHUP working and says so.
func (a *Agent) watchConfig(ctx context.Context) error {
	r := a.reloader
	if r == nil {
		return nil
	}
	defer signal.Stop(r.sighup)
	log := a.log.Named("reload")
	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	if r.opts.File != "" {
		w, err := fsnotify.NewWatcher()
		if err == nil {
			err = w.Add(filepath.Dir(r.opts.File))
		}
		if err != nil {
			log.Warn("cannot watch the config file; reload it with SIGHUP", "file", r.opts.File, "error", err)
		} else {
			defer w.Close()
			events, watchErrs = w.Events, w.Errors
		}
	}
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.sighup:
			a.reload(log, "SIGHUP", true)
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			// Any event in the directory may be the file's: a ConfigMap
			// swaps the ..data symlink, not the file itself.
			debounce = time.After(reloadDebounce)
		case err, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			log.Warn("watching the config file failed; reload it with SIGHUP", "file", r.opts.File, "error", err)
		case <-debounce:
			debounce = nil
			a.reload(log, "file changed", false)
		}
	}
}

// reload loads the configuration again and applies it. Unless force is
// set, an unchanged file is not reloaded.
func (a *Agent) reload(log hclog.Logger, trigger string, force bool) {
	r := a.reloader
	if r.opts.File != "" {
		data, err := os.ReadFile(r.opts.File)
		if err == nil {
			sum := sha256.Sum256(data)
			if !force && bytes.Equal(sum[:], r.fileSum[:]) {
				return
			}
			r.fileSum = sum
		} else if !force {
			// Gone for a moment (a rename in progress) or for good: the
			// next event, or SIGHUP, tries again.
			log.Debug("config file unreadable after a change; waiting for the next one", "file", r.opts.File, "error", err)
			return
		}
	}
	loaded, err := r.opts.Load()
	if err != nil {
		log.Error("reloading the configuration failed; the running configuration stays", "trigger", trigger, "error", err)
		return
	}
	a.applyConfig(log, loaded, trigger)
}

// applyConfig takes the live keys of loaded and logs what changed.
func (a *Agent) applyConfig(log hclog.Logger, loaded config.Config, trigger string) {
	running := a.live.Config()
	ch := diffConfig(running, loaded)
	for _, name := range ch.restart {
		log.Warn("needs a restart: the changed key keeps its running value", "key", name)
	}
	if len(ch.applied) == 0 {
		log.Info("configuration reloaded; no live key changed", "trigger", trigger)
		return
	}
	if ch.next.LogLevel != running.LogLevel {
		a.log.SetLevel(hclog.LevelFromString(ch.next.LogLevel))
	}
	a.live.p.Store(&ch.next)
	// Shown only when the new level allows it: the first sign that a
	// change to debug took effect.
	log.Debug("running configuration", "config", ch.next.String())
	for _, k := range reloadKeys {
		for _, name := range ch.applied {
			if k.name == name {
				log.Info("configuration key changed", "key", name, "from", fmt.Sprint(k.get(&running)), "to", fmt.Sprint(k.get(&ch.next)), "trigger", trigger)
			}
		}
	}
}
