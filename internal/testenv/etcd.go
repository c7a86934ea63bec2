package testenv

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// Etcd is a real etcd server (go.etcd.io/etcd/server/v3/embed) listening on
// free loopback ports. It keeps its data directory and ports across Stop and
// Start, so a test can restart it the way an operator restarts a member.
type Etcd struct {
	t          testing.TB
	dir        string
	clientURL  url.URL
	peerURL    url.URL
	mu         sync.Mutex
	server     *embed.Etcd
	restartCnt int
}

// StartEtcd starts an etcd server for the test and stops it in t.Cleanup.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	e := &Etcd{
		t:         t,
		dir:       filepath.Join(t.TempDir(), "etcd"),
		clientURL: url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", FreePort(t))},
		peerURL:   url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", FreePort(t))},
	}
	if err := e.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Stop)
	return e
}

// Endpoints returns the client URLs, for clientv3.Config.Endpoints and for
// barnacle's --store-endpoints.
func (e *Etcd) Endpoints() []string { return []string{e.clientURL.String()} }

// Start starts the server (again) on the same ports and data directory. It
// blocks until the server is ready to serve clients.
func (e *Etcd) Start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.server != nil {
		return nil
	}
	cfg := embed.NewConfig()
	cfg.Name = "testenv"
	cfg.Dir = e.dir
	cfg.ListenClientUrls = []url.URL{e.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{e.clientURL}
	cfg.ListenPeerUrls = []url.URL{e.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{e.peerURL}
	cfg.InitialCluster = cfg.Name + "=" + e.peerURL.String()
	cfg.Logger = "zap"
	cfg.LogLevel = "info"
	if os.Getenv("BARNACLE_TEST_ETCD_LOG") == "" {
		// Closing the server logs errors about closed listeners; they are
		// noise in test output. Set BARNACLE_TEST_ETCD_LOG=1 to see them.
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(NopZapLogger())
	}
	// The defaults (100 ms heartbeat, 1 s election) are fine for one member;
	// keep the backend small so that many tests can run side by side.
	cfg.QuotaBackendBytes = 256 << 20
	var srv *embed.Etcd
	var err error
	// The ports were free when chosen, but another process may take one
	// before we bind it; a retry with the same ports is all we can do while
	// keeping the endpoints stable.
	for attempt := 0; attempt < 5; attempt++ {
		srv, err = embed.StartEtcd(cfg)
		if err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-srv.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		srv.Close()
		return fmt.Errorf("embedded etcd was not ready within 30s")
	}
	e.server = srv
	return nil
}

// Stop stops the server. The data directory is kept for Start.
func (e *Etcd) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.server == nil {
		return
	}
	e.server.Close()
	<-e.server.Server.StopNotify()
	e.server = nil
}

// Restart stops the server, waits for down, then starts it again.
func (e *Etcd) Restart(down time.Duration) error {
	e.Stop()
	time.Sleep(down)
	e.restartCnt++
	return e.Start()
}

// Client returns a client for the server that is closed in t.Cleanup.
func (e *Etcd) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   e.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      NopZapLogger(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// Put writes key=value, failing the test on error.
func (e *Etcd) Put(t testing.TB, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.Client(t).Put(ctx, key, value); err != nil {
		t.Fatalf("etcd put %s: %v", key, err)
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
