package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/kubekeeper"
	"github.com/barnacle-pg/barnacle/pkg/pgaddr"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
)

// KeeperDiscovery is what keeper-uid auto found: the keeper this agent
// serves, or none, and why. It is in /status, and its Reason in the
// agent's record in etcd.
type KeeperDiscovery struct {
	Node      string `json:"node"`
	KeeperUID string `json:"keeperUID,omitempty"`
	Pod       string `json:"pod,omitempty"`
	IP        string `json:"ip,omitempty"`
	Reason    string `json:"reason"`
}

// inCluster makes the Kubernetes pod client; tests replace it.
var inCluster = kubekeeper.InCluster

// autoKeeper runs keeper-uid auto. It runs one ordinary agent at a time,
// built for the keeper that the node's keeper pods and clusterdata name
// (kubekeeper.Match), or for none: then the agent is a takeover candidate
// only, as an agent beside no keeper. When the answer changes, the running
// agent is stopped (it stops its leader work, resigns and revokes its
// lease) before the next one starts, so no agent ever acts for a keeper it
// no longer runs beside. The outer agent keeps the HTTP listener across
// the switch.
type autoKeeper struct {
	outer   *Agent
	cfg     config.Config
	log     hclog.Logger
	version string
	node    string
	// watcher is nil when no Kubernetes client could be made (setupErr).
	watcher  *kubekeeper.Watcher
	setupErr error

	mu   sync.Mutex
	disc KeeperDiscovery
	// inner is the running agent, innerHTTP its handler.
	inner     atomic.Pointer[Agent]
	innerHTTP atomic.Pointer[http.Handler]
}

// newAuto makes the outer agent of keeper-uid auto. An API client that
// cannot be made is not fatal: the agent runs, serves no keeper and says
// why; a bad selector or a port conflict is.
func newAuto(cfg config.Config, log hclog.Logger, version string) (*Agent, error) {
	name := cfg.AgentName
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("agent-name is not set and the hostname is unknown: %w", err)
		}
		name = h
	}
	ak := &autoKeeper{cfg: cfg, log: log.Named("keeper-auto"), version: version, node: cfg.NodeName}
	ak.cfg.AgentName = name
	pods, ns, err := inCluster()
	if cfg.KeeperPodNamespace != "" {
		ns = cfg.KeeperPodNamespace
	}
	switch {
	case pods == nil:
		ak.setupErr = err
	case ns == "":
		ak.setupErr = fmt.Errorf("set keeper-pod-namespace: %w", err)
	default:
		ak.watcher, err = kubekeeper.NewWatcher(kubekeeper.Options{Pods: pods, Namespace: ns, NodeName: cfg.NodeName,
			Selector: cfg.KeeperPodSelector, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("keeper-pod-selector: %w", err)
		}
	}
	ak.disc = KeeperDiscovery{Node: cfg.NodeName, Reason: "starting"}
	a := &Agent{cfg: cfg, log: log, version: version, name: name, live: newReloadable(cfg), auto: ak}
	ak.outer = a
	a.listener, err = net.Listen("tcp", cfg.MetricsListenAddress)
	if err != nil {
		return nil, fmt.Errorf("listen on metrics-listen-address %s: %w", cfg.MetricsListenAddress, err)
	}
	return a, nil
}

// run follows the pods and runs the agents until ctx ends.
func (ak *autoKeeper) run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	if ak.watcher != nil {
		g.Go(func() error { return ak.watcher.Run(gctx) })
	} else {
		ak.log.Error("cannot reach the kubernetes API; serving no keeper", "error", ak.setupErr)
	}
	g.Go(func() error { return ak.supervise(gctx) })
	return g.Wait()
}

// supervise runs an agent for the current answer, and replaces it when the
// answer changes. It starts serving none: which keeper is here needs
// clusterdata, which the first agent reads.
func (ak *autoKeeper) supervise(ctx context.Context) error {
	uid := ""
	for {
		in, err := ak.newInner(uid)
		if err != nil {
			return err
		}
		h := in.handler()
		ak.innerHTTP.Store(&h)
		ak.inner.Store(in)
		ictx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- in.Run(ictx) }()
		next, stopped := ak.follow(ctx, in, uid, done)
		cancel()
		if !stopped {
			err = <-done
		} else {
			err = next.err
		}
		if err != nil || ctx.Err() != nil {
			return err
		}
		ak.log.Info("switching keeper", "from", uid, "to", next.uid)
		uid = next.uid
	}
}

type switchTo struct {
	uid string
	err error
}

// follow re-evaluates on every clusterdata change and pod event until the
// keeper to serve is not uid (or ctx ends, or the agent stops: stopped).
func (ak *autoKeeper) follow(ctx context.Context, in *Agent, uid string, done <-chan error) (next switchTo, stopped bool) {
	cdChanged := in.coord.Subscribe()
	var podsChanged <-chan struct{}
	if ak.watcher != nil {
		podsChanged = ak.watcher.Changed()
	}
	for {
		st := in.coord.State()
		if r, decided := ak.evaluate(st.ClusterData); decided {
			ak.publish(r)
			if r.KeeperUID != uid {
				return switchTo{uid: r.KeeperUID}, false
			}
		}
		select {
		case <-ctx.Done():
			return switchTo{uid: uid}, false
		case err := <-done:
			return switchTo{uid: uid, err: err}, true
		case <-cdChanged:
		case <-podsChanged:
		}
	}
}

// evaluate decides which keeper to serve. Not decided (false) while
// clusterdata is unknown: the agent that runs keeps running.
func (ak *autoKeeper) evaluate(cd *stolon.ClusterData) (kubekeeper.Result, bool) {
	if ak.watcher == nil {
		return kubekeeper.Result{Reason: ak.setupErr.Error()}, true
	}
	ps := ak.watcher.State()
	switch {
	case ps.Err != nil:
		return kubekeeper.Result{Reason: ps.Err.Error()}, true
	case !ps.Synced:
		return kubekeeper.Result{Reason: "listing the keeper pods of node " + ak.node}, true
	case cd == nil:
		return kubekeeper.Result{}, false
	}
	return kubekeeper.Match(ak.node, ak.cfg.KeeperPodSelector, ps.Pods, cd), true
}

// publish records the answer and logs it when it changed.
func (ak *autoKeeper) publish(r kubekeeper.Result) {
	d := KeeperDiscovery{Node: ak.node, KeeperUID: r.KeeperUID, Pod: r.Pod, IP: r.IP, Reason: r.Reason}
	ak.mu.Lock()
	changed := d != ak.disc
	ak.disc = d
	ak.mu.Unlock()
	if !changed {
		return
	}
	if d.KeeperUID != "" {
		ak.log.Info("serving keeper", "keeper", d.KeeperUID, "pod", d.Pod, "ip", d.IP, "reason", d.Reason)
	} else {
		ak.log.Warn("serving no keeper; a takeover candidate only", "reason", d.Reason)
	}
}

func (ak *autoKeeper) current() KeeperDiscovery {
	ak.mu.Lock()
	defer ak.mu.Unlock()
	return ak.disc
}

// newInner builds the agent for uid ("" for none). Its reload loads the
// file as the outer agent's does, with the keeper it serves.
func (ak *autoKeeper) newInner(uid string) (*Agent, error) {
	// With none, pg-host is not the master's address (package pgaddr).
	cfg := pgaddr.ForKeeper(ak.cfg, uid)
	in, err := build(cfg, ak.outer.log, ak.version, ak)
	if err != nil {
		return nil, err
	}
	if r := ak.outer.reloader; r != nil {
		name := cfg.AgentName
		load := r.opts.Load
		in.reloader = &reloader{sighup: r.sighup, fileSum: r.fileSum, opts: ReloadOptions{File: r.opts.File,
			Load: func() (config.Config, error) {
				c, err := load()
				c = pgaddr.ForKeeper(c, uid)
				c.AgentName = name
				return c, err
			}}}
	}
	return in, nil
}

// handler serves for the running agent: /readyz fails while no keeper is
// served, with the reason.
func (ak *autoKeeper) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if d := ak.current(); d.KeeperUID == "" {
			http.Error(w, "not ready: keeper-uid auto serves no keeper: "+d.Reason, http.StatusServiceUnavailable)
			return
		}
		ak.delegate(w, r)
	})
	mux.HandleFunc("/", ak.delegate)
	return mux
}

func (ak *autoKeeper) delegate(w http.ResponseWriter, r *http.Request) {
	h := ak.innerHTTP.Load()
	if h == nil {
		http.Error(w, "starting", http.StatusServiceUnavailable)
		return
	}
	(*h).ServeHTTP(w, r)
}

// fillRecord is the coordinator's FillStatus: the archiver's state, and
// with keeper-uid auto why the agent serves its keeper or none.
func (a *Agent) fillRecord(s *coordinator.AgentStatus) {
	a.fillStatus(s)
	if a.drills != nil {
		a.drills.record(s)
	}
	if a.keeperAuto != nil {
		s.KeeperDiscovery = a.keeperAuto.current().Reason
	}
}
