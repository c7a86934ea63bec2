// Package agent is the barnacle sidecar daemon. It builds the components
// from the configuration, supervises them in one errgroup, starts and stops
// leader-only work as the coordinator's election decides, and serves
// /metrics, /healthz, /readyz and /status.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/metrics"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

// Agent is one barnacle sidecar. Create it with New, start it with Run.
type Agent struct {
	cfg      config.Config
	log      hclog.Logger
	version  string
	name     string
	registry *prometheus.Registry
	etcd     *clientv3.Client
	coord    *coordinator.Coordinator
	local    *localPostgres
	archive  *archiveHandle
	archiver *archiver
	standby  *standbySlot
	backups  *backups
	restores *restores
	drills   *drills
	listener net.Listener

	// live holds the reloadable configuration (reload.go); reloader is
	// set by EnableReload.
	live     *reloadable
	reloader *reloader

	// auto is set on the agent New returns for keeper-uid auto: its Run
	// runs an agent for the keeper it finds (keeperauto.go). keeperAuto is
	// set on those agents.
	auto       *autoKeeper
	keeperAuto *autoKeeper
}

// fillStatus adds the archiver's state to the leader's record in etcd;
// followers read ArchivedLSN from it to advance their standby slots.
func (a *Agent) fillStatus(s *coordinator.AgentStatus) {
	if a.archiver == nil {
		return
	}
	if s.Role != coordinator.RoleLeader {
		return
	}
	st := a.archiver.snapshot()
	s.Streaming = st.Streaming
	s.LastError = joinProblems(st.LastError, st.Gap)
	if st.Flushed == 0 {
		return
	}
	s.Timeline = uint32(st.Timeline)
	s.ReceivedLSN = st.Received
	s.FlushedLSN = st.Flushed
	s.ArchivedLSN = st.Flushed
	s.LastArchivedSegment = st.LastSegment
}

// joinProblems joins the non-empty ones with "; ".
func joinProblems(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

// New checks the configuration, connects the etcd client (which does not
// wait for etcd) and binds the metrics listener, so that a port conflict is
// reported at start-up. It starts no goroutines.
func New(cfg config.Config, log hclog.Logger, version string) (*Agent, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if cfg.KeeperUID == config.KeeperUIDAuto {
		return newAuto(cfg, log, version)
	}
	return build(cfg, log, version, nil)
}

// build makes an agent; for keeper-uid auto (ak set), one that serves no
// HTTP (the outer agent does) and may serve no keeper.
func build(cfg config.Config, log hclog.Logger, version string, ak *autoKeeper) (*Agent, error) {
	name := cfg.AgentName
	if name == "" {
		name = cfg.KeeperUID
	}
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("agent-name is not set and the hostname is unknown: %w", err)
		}
		name = h
	}
	reg := metrics.NewRegistry()
	cli, err := coordinator.NewClient(coordinator.ClientOptionsFor(cfg))
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: log, version: version, name: name, registry: reg, etcd: cli, live: newReloadable(cfg), keeperAuto: ak}
	a.local = &localPostgres{cfg: cfg}
	am := newArchiverMetrics(reg)
	// The archiver needs the coordinator (state, keys) and the coordinator
	// runs the archiver as its leader work; leaderWork closes the loop.
	var (
		arch *archiver
		bk   *backups
		ret  *retainer
		exp  *expirer
	)
	leaderWork := func(ctx context.Context, term coordinator.Term) error {
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error { return arch.run(gctx, term) })
		g.Go(func() error { return a.refreshCatalogMetrics(gctx) })
		g.Go(func() error { return bk.leaderDuties(gctx, term) })
		g.Go(func() error { return ret.loop(gctx) })
		g.Go(func() error { return a.restores.leaderDuties(gctx, term) })
		g.Go(func() error { return exp.loop(gctx, term) })
		g.Go(func() error { return a.drills.leaderDuties(gctx, term) })
		return g.Wait()
	}
	a.coord, err = coordinator.New(coordinator.Options{
		Client:         cli,
		ClusterName:    cfg.ClusterName,
		StorePrefix:    cfg.StorePrefix,
		BarnaclePrefix: cfg.BarnaclePrefix,
		AgentName:      name,
		KeeperUID:      cfg.KeeperUID,
		KeeperUnknown:  ak != nil,
		Policy:         cfg.LeaderPolicy,
		LeaseTTL:       cfg.LeaseTTL,
		TakeoverDelay:  cfg.LeaderTakeoverDelay,
		Version:        version,
		LocalPrimary:   a.local.isPrimary,
		LeaderWork:     leaderWork,
		FillStatus:     a.fillRecord,
		Registerer:     reg,
		Logger:         log,
	})
	if err != nil {
		_ = cli.Close()
		return nil, err
	}
	a.archive = newArchiveHandle(cfg.ArchiveURL, cfg.ClusterName, log.Named("archiver"), am)
	arch = newArchiver(archiverOptions{Agent: name, Cluster: cfg.ClusterName, Slot: cfg.SlotName, StreamSlot: cfg.StreamingSlotName(),
		CreateSlot: cfg.SlotMode == config.SlotModeOwn, DropStandbySlot: cfg.SlotMode == config.SlotModeStolon && cfg.StandbySlots,
		Compression: cfg.Compression, Synchronous: cfg.Synchronous, PG: cfg}, log, a.coord, cli, am, a.archive)
	a.archiver = arch
	keys := request.Keys{Prefix: a.coord.Keys().Prefix}
	status := request.NewWriter(cli, log, reg)
	live := a.live
	bk = &backups{opts: backupOptions{Agent: name, Cluster: cfg.ClusterName, KeeperUID: cfg.KeeperUID, Compression: cfg.Compression, PG: cfg,
		ManifestChecksums: func() string { return live.Config().ManifestChecksums },
		Schedule: func() (config.Schedule, string) {
			c := live.Config()
			return c.BackupSchedule, c.BackupFrom
		}},
		log: log.Named("backups"), coord: a.coord, etcd: cli, keys: keys, archive: a.archive,
		queue: request.NewQueue[request.BackupResult](request.QueueOptions{Kind: request.KindBackup, Keys: keys, Client: cli, Agent: name,
			Writer: status, Logger: log.Named("backups"), SweepHint: "request it again"})}
	a.backups = bk
	ret = &retainer{log: log.Named("backups").Named("retention"), etcd: cli, keys: keys, archive: a.archive,
		opts: retentionOptions{Cluster: cfg.ClusterName, Policy: func() (config.RetentionPolicy, int) {
			c := live.Config()
			return c.RetentionPolicy, c.MinimumRedundancy
		}}}
	a.restores = &restores{opts: restoreOptions{Cluster: cfg.ClusterName, KeeperUID: cfg.KeeperUID, RestoreRoot: cfg.RestoreRoot, ArchiveURL: cfg.ArchiveURL},
		log: log.Named("restores"), coord: a.coord, archive: a.archive,
		queue: request.NewQueue[request.RestoreResult](request.QueueOptions{Kind: request.KindRestore, Keys: keys, Client: cli, Agent: name,
			Writer: status, Logger: log.Named("restores"), SweepHint: restoreSweepHint})}
	a.drills = &drills{opts: drillOptions{Agent: name, Cluster: cfg.ClusterName, KeeperUID: cfg.KeeperUID, RestoreRoot: cfg.RestoreRoot,
		ArchiveURL: cfg.ArchiveURL, PGBinDir: cfg.PGBinDir, Superuser: cfg.RestoreDrillSuperuser, OnMaster: cfg.RestoreDrillOnMaster,
		Schedule:      func() config.Schedule { return live.Config().RestoreDrillSchedule },
		ReplayTimeout: func() time.Duration { return live.Config().RestoreDrillReplayTimeout }},
		log: log.Named("drills"), coord: a.coord, etcd: cli, keys: keys, archive: a.archive, metrics: newDrillMetrics(reg),
		queue: request.NewQueue[catalog.Drill](request.QueueOptions{Kind: request.KindDrill, Keys: keys, Client: cli, Agent: name,
			Writer: status, Logger: log.Named("drills"), SweepHint: drillSweepHint})}
	exp = &expirer{log: log.Named("requests"), retention: func() time.Duration { return live.Config().RequestRetention },
		backups: bk.queue, restores: a.restores.queue, drills: a.drills.queue}
	a.standby = &standbySlot{opts: standbySlotOptions{Enabled: cfg.StandbySlots, KeeperUID: cfg.KeeperUID, Slot: cfg.SlotName},
		log: log.Named("standby-slot"), coord: a.coord, metrics: am,
		local: &localPostgres{cfg: cfg}}
	if ak != nil {
		return a, nil
	}
	a.listener, err = net.Listen("tcp", cfg.MetricsListenAddress)
	if err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("listen on metrics-listen-address %s: %w", cfg.MetricsListenAddress, err)
	}
	return a, nil
}

// Name is the agent's name in etcd.
func (a *Agent) Name() string { return a.name }

// Run serves and coordinates until ctx ends, then resigns, revokes its
// lease and returns nil. A component's fatal error stops the others and is
// returned.
func (a *Agent) Run(ctx context.Context) error {
	log := a.log.Named("agent")
	if a.listener != nil {
		log.Info("starting", "agent", a.name, "version", a.version, "config", a.cfg.String(), "metrics", a.listener.Addr().String())
	} else {
		log.Info("starting", "agent", a.name, "version", a.version, "keeper", a.cfg.KeeperUID)
	}
	g, gctx := errgroup.WithContext(ctx)
	if a.listener != nil {
		a.serve(gctx, g, log)
	}
	if a.auto != nil {
		g.Go(func() error { return a.auto.run(gctx) })
	} else {
		a.runParts(gctx, g)
	}
	err := g.Wait()
	if a.etcd != nil {
		err = errors.Join(err, a.etcd.Close())
	}
	log.Info("stopped")
	return err
}

// serve runs the HTTP server in g until gctx ends.
func (a *Agent) serve(gctx context.Context, g *errgroup.Group, log hclog.Logger) {
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		if err := srv.Serve(a.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve metrics: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			// A scraper still holding a request must not turn a clean
			// SIGTERM into a failed exit: cut it off.
			log.Debug("closing metrics connections that did not finish", "error", err)
			_ = srv.Close()
		}
		return nil
	})
}

// runParts runs the agent's components in g.
func (a *Agent) runParts(gctx context.Context, g *errgroup.Group) {
	g.Go(func() error {
		err := a.coord.Run(gctx)
		a.local.close()
		return err
	})
	g.Go(func() error { return a.standby.run(gctx) })
	g.Go(func() error { return a.backups.serveRequests(gctx) })
	g.Go(func() error { return a.restores.serveRequests(gctx) })
	g.Go(func() error { return a.drills.serveRequests(gctx) })
	g.Go(func() error { return a.refreshDrillMetrics(gctx) })
	g.Go(func() error { return a.watchConfig(gctx) })
}

func (a *Agent) handler() http.Handler {
	if a.auto != nil {
		return a.auto.handler()
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(a.registry))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", a.readyz)
	mux.HandleFunc("/status", a.status)
	return readOnly(mux)
}

// readOnly answers 405 Method Not Allowed, with an Allow header, to every
// method but GET and HEAD: every endpoint only reports, and a listener
// that may be reachable from the whole network (metrics-listen-address
// defaults to all interfaces) should accept nothing else.
func readOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed: use GET or HEAD", http.StatusMethodNotAllowed)
			return
		}
		next.ServeHTTP(w, r)
	})
}
