package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Restored is a PostgreSQL 15 server started on a restored data directory
// (a base backup unpacked by barnacle, with or without recovery settings).
// It embeds Node, so Connect, QueryInt64, Stop, Kill, LogTail, ... work as
// on a cluster node; Start is overridden to keep the address overrides.
type Restored struct {
	*Node
	args []string
}

// RecoveryEnd is how archive recovery of a Restored server ended.
type RecoveryEnd string

// How recovery ended, as recovery_target_action decides.
const (
	// RecoveryPromoted: recovery is over and the server accepts writes.
	RecoveryPromoted RecoveryEnd = "promoted"
	// RecoveryPaused: replay is paused at the target (hot standby reads).
	RecoveryPaused RecoveryEnd = "paused"
	// RecoveryShutdown: the server shut down at the target.
	RecoveryShutdown RecoveryEnd = "shutdown"
)

// StartRestored gives dataDir, and the tablespace directories that its
// pg_tblspc links and tablespace_map name, to the PostgreSQL OS user
// (PGOwn), then starts PostgreSQL on it listening on 127.0.0.1 and a free
// port, and waits until it accepts connections: at once for a server that
// is not recovering, after the consistent point for one in archive
// recovery (hot_standby is forced on so that this happens). The address
// settings are given on the command line (-c), so they override the
// restored configuration without changing any file; the recovery settings
// in postgresql.auto.conf stay as they are. The server is stopped in
// t.Cleanup. It fails the test (never skips) when PostgreSQL is missing or
// does not start; the failure shows the end of the server log.
func StartRestored(t testing.TB, dataDir string) *Restored {
	t.Helper()
	r := NewRestored(t, dataDir)
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = r.Start(); err == nil || !strings.Contains(err.Error(), "could not bind") {
			break
		}
		r.pickPort(t)
	}
	if err != nil {
		t.Fatalf("start PostgreSQL on restored %s: %v", dataDir, err)
	}
	return r
}

// NewRestored is StartRestored without the start: for a test that expects
// the start to fail (Start returns the error, with the end of the log).
func NewRestored(t testing.TB, dataDir string) *Restored {
	t.Helper()
	env := loadPGEnv(t)
	PGOwn(t, dataDir)
	for _, ts := range restoredTablespaces(t, dataDir) {
		PGOwn(t, ts)
	}
	dir := t.TempDir()
	if err := env.makeTraversable(dir); err != nil {
		t.Fatalf("prepare %s for the postgres user: %v", dir, err)
	}
	if err := env.mkdir(dir); err != nil {
		t.Fatalf("prepare %s for the postgres user: %v", dir, err)
	}
	c := &Cluster{t: t, env: env, root: dir}
	n := &Node{
		Name:    "restored",
		DataDir: dataDir,
		Host:    "127.0.0.1",
		c:       c,
		dir:     dir,
		logPath: filepath.Join(dir, "postgres.log"),
	}
	c.Nodes = []*Node{n}
	r := &Restored{Node: n}
	t.Cleanup(n.stopImmediate)
	r.pickPort(t)
	return r
}

// pickPort chooses a free port (and the socket directory) for the next
// Start.
func (r *Restored) pickPort(t testing.TB) {
	n := r.Node
	n.Port = FreePort(t)
	n.socketDir = ""
	if len(filepath.Join(n.dir, fmt.Sprintf(".s.PGSQL.%d", n.Port))) <= 100 {
		n.socketDir = n.dir
	}
	r.args = []string{
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port=" + strconv.Itoa(n.Port),
		"-c", "unix_socket_directories=" + n.socketDir,
		"-c", "hot_standby=on",
	}
}

// restoredTablespaces lists the directories a restored data directory's
// tablespaces live in: pg_tblspc link targets and tablespace_map paths.
func restoredTablespaces(t testing.TB, dataDir string) []string {
	t.Helper()
	var out []string
	links, err := os.ReadDir(filepath.Join(dataDir, "pg_tblspc"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("list pg_tblspc of %s: %v", dataDir, err)
	}
	for _, l := range links {
		if target, err := os.Readlink(filepath.Join(dataDir, "pg_tblspc", l.Name())); err == nil {
			out = append(out, target)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dataDir, "tablespace_map")); err == nil {
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			if _, p, ok := strings.Cut(sc.Text(), " "); ok {
				out = append(out, p)
			}
		}
	}
	return out
}

// Start starts the server again with the address overrides StartRestored
// chose, and waits as StartRestored does. Start on a running server does
// nothing.
func (r *Restored) Start() error { return r.Node.start(r.args) }

// WaitRecoveryEnd polls until archive recovery has ended: the server was
// promoted (pg_is_in_recovery() is false), paused at its target
// (pg_get_wal_replay_pause_state() = 'paused'), or exited
// (recovery_target_action = 'shutdown'; a crash looks the same, so check the
// log). It returns ctx's error, with the end of the server log, when ctx
// ends first.
func (r *Restored) WaitRecoveryEnd(ctx context.Context) (RecoveryEnd, error) {
	var last error
	for {
		r.mu.Lock()
		exited := r.exited
		r.mu.Unlock()
		if exited == nil {
			return RecoveryShutdown, nil
		}
		select {
		case <-exited:
			r.mu.Lock()
			r.proc, r.exited = nil, nil
			r.mu.Unlock()
			return RecoveryShutdown, nil
		default:
		}
		var inRecovery bool
		var state string
		err := r.QueryRow(ctx, `SELECT pg_is_in_recovery(),
			CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END`).Scan(&inRecovery, &state)
		switch {
		case err != nil:
			last = err
		case !inRecovery:
			return RecoveryPromoted, nil
		case state == "paused":
			return RecoveryPaused, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for the end of recovery (last error %v): %w\n--- last lines of %s ---\n%s",
				last, ctx.Err(), r.logPath, r.LogTail(40))
		case <-exited:
		case <-time.After(20 * time.Millisecond):
		}
	}
}
