package testenv

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// ReplUser is the replication role every harness cluster has, like
	// Stolon's --pg-repl-username.
	ReplUser = "repluser"

	// nodeConfFile holds the settings that differ per node (port, socket);
	// it is rewritten after pg_basebackup copied the primary's.
	nodeConfFile = "barnacle_test_node.conf"
	// recoveryConfFile holds primary_conninfo; Follow rewrites it. Recovery
	// settings must not go to postgresql.auto.conf (pg_basebackup -R), which
	// is read last and would override this file.
	recoveryConfFile = "barnacle_test_recovery.conf"

	startTimeout = 60 * time.Second
	stopTimeout  = 60 * time.Second
)

// ClusterOptions configures NewCluster. The zero value is one primary
// without standbys.
type ClusterOptions struct {
	// Standbys is the number of streaming standbys besides the primary.
	Standbys int
	// WALKeepSize is wal_keep_size; default "128MB" (Stolon's default).
	WALKeepSize string
	// Params are extra postgresql.conf settings, written after the harness'
	// own so they override them. Values are written verbatim: quote strings
	// yourself ("'on'" is not needed for booleans, "'5min'" is for units).
	Params map[string]string
	// WALSegmentSizeMB is initdb --wal-segsize; default 16.
	WALSegmentSizeMB int
}

// Cluster is a PostgreSQL 15 primary with streaming standbys on 127.0.0.1.
// All nodes are stopped in t.Cleanup, also when the test failed.
//
// Standbys stream WITHOUT replication slots (they rely on wal_keep_size) so
// that the harness works without a Stolon simulator; the simulator creates
// the stolon_* slots a keeper would, and nothing streams from them.
type Cluster struct {
	// Nodes are the cluster's nodes; Nodes[0] is the first primary. Rejoin
	// and failover change roles, never this slice.
	Nodes []*Node

	t            testing.TB
	env          *pgEnv
	opts         ClusterOptions
	root         string
	replPassword string

	mu      sync.Mutex
	primary *Node
}

// Node is one PostgreSQL server of a Cluster.
type Node struct {
	// Name is "keeper0", "keeper1", ...; it is also the standby's
	// application_name in pg_stat_replication.
	Name    string
	DataDir string
	Host    string
	Port    int
	// ReplUser and ReplPassword are the replication role's credentials
	// (scram-sha-256 over 127.0.0.1).
	ReplUser     string
	ReplPassword string

	c         *Cluster
	dir       string
	logPath   string
	socketDir string

	mu     sync.Mutex
	proc   *os.Process
	exited chan struct{}
}

// NewCluster creates and starts a primary and opts.Standbys standbys, waits
// until every standby streams, and stops all nodes in t.Cleanup. It fails
// the test (never skips) when PostgreSQL is not installed.
func NewCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	if opts.WALKeepSize == "" {
		opts.WALKeepSize = "128MB"
	}
	if opts.WALSegmentSizeMB == 0 {
		opts.WALSegmentSizeMB = 16
	}
	env := loadPGEnv(t)
	c := &Cluster{
		t:            t,
		env:          env,
		opts:         opts,
		root:         t.TempDir(),
		replPassword: randomHex(12),
	}
	if err := env.makeTraversable(c.root); err != nil {
		t.Fatalf("prepare %s for the postgres user: %v", c.root, err)
	}
	used := map[int]bool{}
	for i := 0; i <= opts.Standbys; i++ {
		port := FreePort(t)
		for used[port] {
			port = FreePort(t)
		}
		used[port] = true
		dir := filepath.Join(c.root, fmt.Sprintf("n%d", i))
		n := &Node{
			Name:         fmt.Sprintf("keeper%d", i),
			DataDir:      filepath.Join(dir, "data"),
			Host:         "127.0.0.1",
			Port:         port,
			ReplUser:     ReplUser,
			ReplPassword: c.replPassword,
			c:            c,
			dir:          dir,
			logPath:      filepath.Join(dir, "postgres.log"),
		}
		// Unix socket paths are limited to 107 bytes; without a socket the
		// node is reachable over TCP only, which is all the harness uses.
		if len(filepath.Join(dir, fmt.Sprintf(".s.PGSQL.%d", port))) <= 100 {
			n.socketDir = dir
		}
		if err := env.mkdir(dir); err != nil {
			t.Fatalf("create node directory: %v", err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	t.Cleanup(c.stopAll)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	primary := c.Nodes[0]
	if err := c.initPrimary(ctx, primary); err != nil {
		t.Fatalf("create primary: %v", err)
	}
	c.primary = primary

	// The standbys' base backups run at once, and a base backup holds no
	// WAL until its streaming connection made its temporary slot: one
	// backup's checkpoint could remove the segment another one starts in
	// (wal_keep_size 0 in the gap tests). A slot reserved before any of
	// them holds that WAL until all stream.
	const holdSlot = "testenv_standby_setup"
	if len(c.Nodes) > 2 {
		if err := primary.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", holdSlot); err != nil {
			t.Fatalf("create standbys: reserve WAL: %v", err)
		}
	}
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i+1] = c.createStandby(ctx, n, primary)
		}()
	}
	wg.Wait()
	if len(c.Nodes) > 2 {
		errs = append(errs, primary.Exec(ctx, "SELECT pg_drop_replication_slot($1)", holdSlot))
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("create standbys: %v", err)
	}
	return c
}

// Primary returns the node the harness last made primary: Nodes[0] at
// first, then whichever node Promote was last called on.
func (c *Cluster) Primary() *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.primary
}

// Standbys returns the nodes other than Primary(), running or not.
func (c *Cluster) Standbys() []*Node {
	p := c.Primary()
	var out []*Node
	for _, n := range c.Nodes {
		if n != p {
			out = append(out, n)
		}
	}
	return out
}

// ReplPassword returns the replication role's password.
func (c *Cluster) ReplPassword() string { return c.replPassword }

// ReplPasswordFile writes the replication role's password, with the
// trailing newline an editor leaves, to a file of its own (mode 0600) and
// returns its path, for pg-password-file.
func (c *Cluster) ReplPasswordFile(t testing.TB) string {
	t.Helper()
	pw := filepath.Join(t.TempDir(), "replpw")
	if err := os.WriteFile(pw, []byte(c.replPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return pw
}

// Rejoin turns node into a standby of newPrimary the way Stolon resyncs a
// failed old master: it stops node if it still runs, wipes its data
// directory, takes a pg_basebackup from newPrimary, starts it and waits
// until it streams.
func (c *Cluster) Rejoin(ctx context.Context, node, newPrimary *Node) error {
	if node.Running() {
		if err := node.Kill(); err != nil {
			return fmt.Errorf("rejoin %s: %w", node.Name, err)
		}
	}
	if err := os.RemoveAll(node.DataDir); err != nil {
		return fmt.Errorf("rejoin %s: wipe data directory: %w", node.Name, err)
	}
	if err := c.createStandby(ctx, node, newPrimary); err != nil {
		return fmt.Errorf("rejoin %s: %w", node.Name, err)
	}
	return nil
}

func (c *Cluster) initPrimary(ctx context.Context, n *Node) error {
	args := []string{
		"-D", n.DataDir, "-U", "postgres", "--auth=trust", "--no-sync",
		"--no-locale", "-E", "UTF8",
	}
	if c.opts.WALSegmentSizeMB != 16 {
		args = append(args, fmt.Sprintf("--wal-segsize=%d", c.opts.WALSegmentSizeMB))
	}
	if err := c.env.run(ctx, nil, "initdb", args...); err != nil {
		return err
	}
	if err := c.appendConf(n); err != nil {
		return err
	}
	hba := strings.Join([]string{
		"local all all trust",
		"local replication all trust",
		"host all postgres 127.0.0.1/32 trust",
		"host replication " + ReplUser + " 127.0.0.1/32 scram-sha-256",
		"host all all 127.0.0.1/32 scram-sha-256",
		"",
	}, "\n")
	if err := c.env.writeFile(filepath.Join(n.DataDir, "pg_hba.conf"), hba); err != nil {
		return fmt.Errorf("write pg_hba.conf: %w", err)
	}
	if err := n.writeNodeConf(); err != nil {
		return err
	}
	if err := n.startRetryingPort(ctx); err != nil {
		return err
	}
	// The password is random hex, so quoting is safe.
	return n.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN REPLICATION PASSWORD '%s'", ReplUser, c.replPassword))
}

// appendConf appends the harness settings and the include lines to the
// postgresql.conf written by initdb. Standbys get the file through
// pg_basebackup.
func (c *Cluster) appendConf(n *Node) error {
	var b strings.Builder
	b.WriteString("\n# barnacle testenv\n")
	for _, kv := range [][2]string{
		{"listen_addresses", "'127.0.0.1'"},
		{"wal_level", "replica"},
		{"max_wal_senders", "20"},
		{"max_replication_slots", "20"},
		{"wal_keep_size", "'" + c.opts.WALKeepSize + "'"},
		{"hot_standby", "on"},
		{"fsync", "on"},
		{"shared_buffers", "32MB"},
		{"max_connections", "50"},
		{"logging_collector", "off"},
		{"log_destination", "'stderr'"},
		{"log_line_prefix", "'%m [%p] %q%a '"},
		// A standby whose primary died retries streaming after this long
		// (default 5s); short keeps failover tests quick.
		{"wal_retrieve_retry_interval", "'200ms'"},
		{"recovery_target_timeline", "'latest'"},
	} {
		fmt.Fprintf(&b, "%s = %s\n", kv[0], kv[1])
	}
	keys := make([]string, 0, len(c.opts.Params))
	for k := range c.opts.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, c.opts.Params[k])
	}
	fmt.Fprintf(&b, "include_if_exists = '%s'\ninclude_if_exists = '%s'\n", nodeConfFile, recoveryConfFile)
	f, err := os.OpenFile(filepath.Join(n.DataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	return f.Close()
}

// createStandby takes a base backup of primary into n's (absent or empty)
// data directory, configures it to stream from primary, starts it and waits
// until primary lists it as streaming.
func (c *Cluster) createStandby(ctx context.Context, n, primary *Node) error {
	err := c.env.run(ctx, []string{"PGPASSWORD=" + c.replPassword}, "pg_basebackup",
		"-D", n.DataDir, "-h", primary.Host, "-p", strconv.Itoa(primary.Port),
		"-U", ReplUser, "-X", "stream", "-c", "fast", "--no-sync", "-w")
	if err != nil {
		return err
	}
	if err := c.env.writeFile(filepath.Join(n.DataDir, "standby.signal"), ""); err != nil {
		return fmt.Errorf("write standby.signal: %w", err)
	}
	if err := n.writeNodeConf(); err != nil {
		return err
	}
	if err := n.writeRecoveryConf(primary); err != nil {
		return err
	}
	if err := n.startRetryingPort(ctx); err != nil {
		return err
	}
	return waitStreaming(ctx, primary, n)
}

// waitStreaming polls primary's pg_stat_replication until standby streams.
func waitStreaming(ctx context.Context, primary, standby *Node) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for {
		n, err := primary.QueryInt64(ctx,
			"SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
			standby.Name)
		if err == nil && n > 0 {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to stream from %s (last error %v): %w\n%s",
				standby.Name, primary.Name, last, ctx.Err(), standby.LogTail(30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (n *Node) writeNodeConf() error {
	conf := fmt.Sprintf("port = %d\nunix_socket_directories = '%s'\n", n.Port, n.socketDir)
	if err := n.c.env.writeFile(filepath.Join(n.DataDir, nodeConfFile), conf); err != nil {
		return fmt.Errorf("write %s: %w", nodeConfFile, err)
	}
	return nil
}

func (n *Node) writeRecoveryConf(primary *Node) error {
	// Like Stolon's keeper (getReplConnParams), minus the slot.
	conninfo := fmt.Sprintf("application_name=%s host=%s port=%d user=%s password=%s sslmode=disable",
		n.Name, primary.Host, primary.Port, primary.ReplUser, primary.ReplPassword)
	conf := fmt.Sprintf("primary_conninfo = '%s'\nrecovery_target_timeline = 'latest'\n", conninfo)
	if err := n.c.env.writeFile(filepath.Join(n.DataDir, recoveryConfFile), conf); err != nil {
		return fmt.Errorf("write %s: %w", recoveryConfFile, err)
	}
	return nil
}

// startRetryingPort starts a new node, moving it to another free port when
// someone took the chosen one between FreePort and bind.
func (n *Node) startRetryingPort(ctx context.Context) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = n.Start(); err == nil || !strings.Contains(err.Error(), "could not bind") {
			return err
		}
		port, perr := freePort()
		if perr != nil {
			return perr
		}
		n.Port = port
		if err := n.writeNodeConf(); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return err
}

// Start starts the server and waits until it accepts connections (a
// standby: until it reached a consistent state). The postmaster is a child
// of the test process and gets SIGKILL if the test process dies. Start on a
// running node does nothing.
func (n *Node) Start() error { return n.start(nil) }

// start is Start with extra postgres command-line arguments (-c name=value).
func (n *Node) start(args []string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil {
		return nil
	}
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: open log: %w", n.Name, err)
	}
	defer logf.Close()
	cmd := n.c.env.command(context.Background(), "postgres", append([]string{"-D", n.DataDir}, args...)...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group, so that signals sent to the test's group (^C)
	// reach the harness first and the shutdown stays orderly.
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	if err := n.waitReady(cmd.Process.Pid, exited); err != nil {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		return fmt.Errorf("start %s on port %d: %w\n--- last lines of %s ---\n%s", n.Name, n.Port, err, n.logPath, n.LogTail(50))
	}
	n.proc = cmd.Process
	n.exited = exited
	return nil
}

// waitReady polls postmaster.pid until the postmaster with pid reports
// "ready" (primary) or "standby" (hot standby accepting connections).
func (n *Node) waitReady(pid int, exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	pidFile := filepath.Join(n.DataDir, "postmaster.pid")
	for {
		if b, err := os.ReadFile(pidFile); err == nil {
			lines := strings.Split(string(b), "\n")
			if len(lines) >= 8 && strings.TrimSpace(lines[0]) == strconv.Itoa(pid) {
				switch strings.TrimSpace(lines[7]) {
				case "ready", "standby":
					return nil
				}
			}
		}
		select {
		case <-exited:
			return errors.New("postgres exited during start-up")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %s", startTimeout)
		}
	}
}

// Running reports whether the harness started the server and it has not
// exited since.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return false
	}
	select {
	case <-n.exited:
		n.proc, n.exited = nil, nil
		return false
	default:
		return true
	}
}

// Stop shuts the server down in fast mode (what pg_ctl stop -m fast sends)
// and waits until it exited. Stop on a stopped node does nothing.
func (n *Node) Stop() error {
	return n.shutdown(syscall.SIGINT, stopTimeout)
}

// stopImmediate is the cleanup path: immediate mode, then SIGKILL.
func (n *Node) stopImmediate() {
	if err := n.shutdown(syscall.SIGQUIT, 10*time.Second); err != nil {
		_ = n.Kill()
	}
}

func (n *Node) shutdown(sig syscall.Signal, timeout time.Duration) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return nil
	}
	if err := n.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s: %w", n.Name, err)
	}
	select {
	case <-n.exited:
		n.proc, n.exited = nil, nil
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("stop %s: still running after %s", n.Name, timeout)
	}
}

// Kill kills the postmaster and all its children with SIGKILL, like a
// crashed host: no shutdown checkpoint, no walsender says goodbye. The PID
// comes from postmaster.pid (falling back to the harness' own record).
func (n *Node) Kill() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	pid := 0
	if b, err := os.ReadFile(filepath.Join(n.DataDir, "postmaster.pid")); err == nil {
		pid, _ = strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	}
	if n.proc != nil && (pid == 0 || pid != n.proc.Pid) {
		pid = n.proc.Pid
	}
	if pid <= 0 {
		return nil
	}
	// Freeze the postmaster so it cannot fork while its children are
	// collected; each child is its own process group leader (PostgreSQL
	// calls setsid), so kill the groups to catch grandchildren too.
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	children := childPIDs(pid)
	for _, child := range children {
		_ = syscall.Kill(-child, syscall.SIGKILL)
		_ = syscall.Kill(child, syscall.SIGKILL)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s (pid %d): %w", n.Name, pid, err)
	}
	// A child that has not finished dying still holds the shared memory
	// segment, and a new postmaster would refuse to start.
	deadline := time.Now().Add(stopTimeout)
	for _, child := range children {
		for !processGone(child) {
			if time.Now().After(deadline) {
				return fmt.Errorf("kill %s: child pid %d did not exit", n.Name, child)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if n.proc != nil {
		select {
		case <-n.exited:
		case <-time.After(stopTimeout):
			return fmt.Errorf("kill %s: pid %d did not exit", n.Name, pid)
		}
		n.proc, n.exited = nil, nil
	}
	return nil
}

// processGone reports whether pid no longer runs (absent or a zombie).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || len(s) < i+3 || s[i+2] == 'Z' || s[i+2] == 'X'
}

// childPIDs lists the processes whose parent is pid, from /proc.
func childPIDs(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name may contain spaces and parentheses; the fields
		// after the last ')' are state, ppid, ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 2 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

// LogTail returns the last n lines of the node's server log.
func (n *Node) LogTail(lines int) string {
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return Tail(string(b), lines)
}

// LogPath is the server log file (stderr of the postmaster).
func (n *Node) LogPath() string { return n.logPath }

// Promote runs pg_ctl promote -w and waits until pg_is_in_recovery() is
// false; the cluster's Primary() becomes n.
func (n *Node) Promote(ctx context.Context) error {
	if err := n.c.env.run(ctx, nil, "pg_ctl", "promote", "-D", n.DataDir, "-w", "-t", "60"); err != nil {
		return fmt.Errorf("promote %s: %w", n.Name, err)
	}
	for {
		in, err := n.IsInRecovery(ctx)
		if err == nil && !in {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("promote %s: wait for end of recovery: %w", n.Name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	n.c.mu.Lock()
	n.c.primary = n
	n.c.mu.Unlock()
	return nil
}

// Follow re-points the standby n to primary: it rewrites primary_conninfo
// (with recovery_target_timeline='latest', so n follows primary's new
// timeline) and reloads the configuration if n runs. n must be a standby.
func (n *Node) Follow(primary *Node) error {
	if _, err := os.Stat(filepath.Join(n.DataDir, "standby.signal")); err != nil {
		return fmt.Errorf("follow %s: %s is not a standby: %w", primary.Name, n.Name, err)
	}
	if err := n.writeRecoveryConf(primary); err != nil {
		return fmt.Errorf("follow %s: %w", primary.Name, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil {
		if err := n.proc.Signal(syscall.SIGHUP); err != nil {
			return fmt.Errorf("follow %s: reload %s: %w", primary.Name, n.Name, err)
		}
	}
	return nil
}

// DSN returns a URL connection string for dbname as the superuser
// postgres, which needs no password over 127.0.0.1.
func (n *Node) DSN(dbname string) string {
	return fmt.Sprintf("postgres://postgres@%s:%d/%s?sslmode=disable&connect_timeout=10",
		n.Host, n.Port, url.PathEscape(dbname))
}

// ReplDSN returns a URL connection string for database postgres as the
// replication role, WITHOUT replication=true: a normal SQL session with
// the credentials an agent would reuse. Add "&replication=true" (or use
// ReplConnString) for a physical replication connection.
func (n *Node) ReplDSN() string {
	return fmt.Sprintf("postgres://%s:%s@%s:%d/postgres?sslmode=disable&connect_timeout=10",
		url.PathEscape(n.ReplUser), url.QueryEscape(n.ReplPassword), n.Host, n.Port)
}

// ReplConnString returns a keyword/value connection string for a physical
// replication connection as the replication role, WITH replication=true:
// pgconn.Connect with it accepts IDENTIFY_SYSTEM, TIMELINE_HISTORY,
// BASE_BACKUP and START_REPLICATION (pglogrepl).
func (n *Node) ReplConnString() string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=postgres sslmode=disable connect_timeout=10 replication=true",
		n.Host, n.Port, n.ReplUser, n.ReplPassword)
}

// Connect opens a new superuser connection to database postgres; the
// caller closes it.
func (n *Node) Connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, n.DSN("postgres"))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", n.Name, err)
	}
	return conn, nil
}

// Exec runs sql as superuser in database postgres on a new connection.
func (n *Node) Exec(ctx context.Context, sql string, args ...any) error {
	conn, err := n.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("exec on %s: %w", n.Name, err)
	}
	return nil
}

// Row is the lazily run result of Node.QueryRow.
type Row struct {
	n    *Node
	ctx  context.Context
	sql  string
	args []any
}

// QueryRow returns a row whose Scan connects, runs sql as superuser in
// database postgres, scans the first row and closes the connection, like
// pgx's QueryRow (pgx.ErrNoRows when there is no row).
func (n *Node) QueryRow(ctx context.Context, sql string, args ...any) Row {
	return Row{n: n, ctx: ctx, sql: sql, args: args}
}

// Scan runs the query; see Node.QueryRow.
func (r Row) Scan(dest ...any) error {
	conn, err := r.n.Connect(r.ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(r.ctx))
	if err := conn.QueryRow(r.ctx, r.sql, r.args...).Scan(dest...); err != nil {
		return fmt.Errorf("query on %s: %w", r.n.Name, err)
	}
	return nil
}

// QueryInt64 returns the single integer value sql returns.
func (n *Node) QueryInt64(ctx context.Context, sql string, args ...any) (int64, error) {
	var v int64
	err := n.QueryRow(ctx, sql, args...).Scan(&v)
	return v, err
}

// QueryString returns the single text value sql returns.
func (n *Node) QueryString(ctx context.Context, sql string, args ...any) (string, error) {
	var v string
	err := n.QueryRow(ctx, sql, args...).Scan(&v)
	return v, err
}

// IsInRecovery returns pg_is_in_recovery().
func (n *Node) IsInRecovery(ctx context.Context) (bool, error) {
	var v bool
	err := n.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&v)
	return v, err
}

// SystemID returns the database system identifier (decimal, as
// IDENTIFY_SYSTEM and Stolon's systemdID show it).
func (n *Node) SystemID(ctx context.Context) (string, error) {
	return n.QueryString(ctx, "SELECT system_identifier::text FROM pg_control_system()")
}

// CurrentLSN returns the WAL position as a uint64: pg_current_wal_lsn() on
// a primary; on a standby pg_last_wal_receive_lsn(), or the replay position
// if nothing was received yet.
func (n *Node) CurrentLSN(ctx context.Context) (uint64, error) {
	s, err := n.QueryString(ctx, `SELECT ((CASE WHEN pg_is_in_recovery()
		THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
		ELSE pg_current_wal_lsn() END) - '0/0'::pg_lsn)::text`)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %q from %s: %w", s, n.Name, err)
	}
	return v, nil
}

// SystemInfo is what IDENTIFY_SYSTEM returns.
type SystemInfo struct {
	SystemID string
	Timeline uint64
	XLogPos  uint64
}

// TimelineHistoryEntry is one line of a timeline history file: timeline
// Timeline ended at SwitchPoint.
type TimelineHistoryEntry struct {
	Timeline    uint64
	SwitchPoint uint64
	Reason      string
}

// IdentifySystem runs IDENTIFY_SYSTEM over a replication connection. On a
// standby the timeline is the one being replayed.
func (n *Node) IdentifySystem(ctx context.Context) (SystemInfo, error) {
	info, _, err := n.identify(ctx, false)
	return info, err
}

// Timeline returns the node's current timeline (IDENTIFY_SYSTEM).
func (n *Node) Timeline(ctx context.Context) (uint64, error) {
	info, _, err := n.identify(ctx, false)
	return info.Timeline, err
}

// TimelineHistory returns the parsed history of the node's current
// timeline (TIMELINE_HISTORY), empty on timeline 1, as Stolon's keeper
// reports it in timelinesHistory.
func (n *Node) TimelineHistory(ctx context.Context) ([]TimelineHistoryEntry, error) {
	_, h, err := n.identify(ctx, true)
	return h, err
}

func (n *Node) identify(ctx context.Context, history bool) (SystemInfo, []TimelineHistoryEntry, error) {
	conn, err := pgconn.Connect(ctx, n.ReplConnString())
	if err != nil {
		return SystemInfo{}, nil, fmt.Errorf("replication connection to %s: %w", n.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	res, err := conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		return SystemInfo{}, nil, fmt.Errorf("IDENTIFY_SYSTEM on %s: %w", n.Name, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3 {
		return SystemInfo{}, nil, fmt.Errorf("IDENTIFY_SYSTEM on %s: unexpected result", n.Name)
	}
	row := res[0].Rows[0]
	info := SystemInfo{SystemID: string(row[0])}
	if info.Timeline, err = strconv.ParseUint(string(row[1]), 10, 64); err != nil {
		return SystemInfo{}, nil, fmt.Errorf("IDENTIFY_SYSTEM on %s: timeline %q: %w", n.Name, row[1], err)
	}
	if info.XLogPos, err = ParseLSN(string(row[2])); err != nil {
		return SystemInfo{}, nil, fmt.Errorf("IDENTIFY_SYSTEM on %s: %w", n.Name, err)
	}
	if !history || info.Timeline <= 1 {
		return info, nil, nil
	}
	res, err = conn.Exec(ctx, fmt.Sprintf("TIMELINE_HISTORY %d", info.Timeline)).ReadAll()
	if err != nil {
		return SystemInfo{}, nil, fmt.Errorf("TIMELINE_HISTORY on %s: %w", n.Name, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 2 {
		return SystemInfo{}, nil, fmt.Errorf("TIMELINE_HISTORY on %s: unexpected result", n.Name)
	}
	h, err := parseTimelineHistory(string(res[0].Rows[0][1]))
	if err != nil {
		return SystemInfo{}, nil, fmt.Errorf("TIMELINE_HISTORY on %s: %w", n.Name, err)
	}
	return info, h, nil
}

func parseTimelineHistory(s string) ([]TimelineHistoryEntry, error) {
	var out []TimelineHistoryEntry
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.SplitN(line, "\t", 3)
		if len(f) < 2 {
			return nil, fmt.Errorf("bad history line %q", line)
		}
		tli, err := strconv.ParseUint(strings.TrimSpace(f[0]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad history line %q: %w", line, err)
		}
		lsn, err := ParseLSN(strings.TrimSpace(f[1]))
		if err != nil {
			return nil, fmt.Errorf("bad history line %q: %w", line, err)
		}
		e := TimelineHistoryEntry{Timeline: tli, SwitchPoint: lsn}
		if len(f) == 3 {
			e.Reason = strings.TrimSpace(f[2])
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// ParseLSN parses "X/Y" (hex) into a uint64.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("parse LSN %q: no '/'", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %q: %w", s, err)
	}
	return h<<32 | l, nil
}

// OldestWALFile returns the first WAL segment file name in pg_wal, what
// Stolon's keeper reports as olderWalFile ("" if there is none).
func (n *Node) OldestWALFile() (string, error) {
	entries, err := os.ReadDir(filepath.Join(n.DataDir, "pg_wal"))
	if err != nil {
		return "", fmt.Errorf("list pg_wal of %s: %w", n.Name, err)
	}
	for _, e := range entries { // ReadDir sorts by name
		if isWALSegmentName(e.Name()) {
			return e.Name(), nil
		}
	}
	return "", nil
}

func isWALSegmentName(s string) bool {
	if len(s) != 24 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789ABCDEF", r) {
			return false
		}
	}
	return true
}

// PGBench runs pgbench from the PostgreSQL bin directory (as the postgres
// OS user when root) against node's database postgres as superuser; args
// are pgbench's options, e.g. "-i", "-s", "1" or "-T", "2", "-c", "2".
func PGBench(ctx context.Context, node *Node, args ...string) error {
	env := []string{
		"PGHOST=" + node.Host,
		"PGPORT=" + strconv.Itoa(node.Port),
		"PGUSER=postgres",
		"PGDATABASE=postgres",
	}
	return node.c.env.run(ctx, env, "pgbench", args...)
}

// stopAll is the cluster's t.Cleanup: every node stops (immediate mode,
// then SIGKILL), in parallel.
func (c *Cluster) stopAll() {
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.stopImmediate()
		}()
	}
	wg.Wait()
}

// freePort is FreePort for goroutines that must not call t.Fatal.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(nbytes int) string {
	b := make([]byte, nbytes)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
