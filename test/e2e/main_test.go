// Package e2e holds barnacle's black-box scenarios: the built binary, agents
// as separate processes beside a real PostgreSQL cluster and a real etcd,
// with Stolon's part played by internal/testenv.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/barnacle-pg/barnacle/agent"
	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// binary is the barnacle binary built once for all scenarios.
var binary string

// defaultParallel is how many scenarios marked t.Parallel run at once when
// go test is given no -parallel. Its own default, GOMAXPROCS (2 on CI),
// suits CPU-bound tests; these mostly wait for PostgreSQL, etcd leases and
// the agents' polling, so more of them fit on 2 cores. The scenarios that
// judge lease timing (TestChaos: never two leaders at once;
// TestAgentsFollowTheMaster: takeover and follow delays) and the
// measurement TestDrillPGBench do not call t.Parallel: go test runs them
// first, one at a time, on a quiet machine.
const defaultParallel = 4

func TestMain(m *testing.M) {
	flag.Parse()
	parallelGiven := false
	flag.Visit(func(f *flag.Flag) { parallelGiven = parallelGiven || f.Name == "test.parallel" })
	if !parallelGiven {
		if err := flag.Set("test.parallel", strconv.Itoa(defaultParallel)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	dir, err := os.MkdirTemp("", "barnacle-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// PostgreSQL runs barnacle wal-fetch as restore_command, as the
	// postgres OS user when the tests run as root.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "barnacle")
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	build := exec.Command("go", "build", "-race", "-o", binary, "./cmd/barnacle")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build barnacle:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// agentProc is one `barnacle agent` process.
type agentProc struct {
	name    string
	args    []string
	metrics string // host:port of /status
	logPath string
	// env is added to the test's environment: the credentials of the
	// test's own S3 server, which the processes of parallel tests cannot
	// share through the test process's environment.
	env []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan error
}

func startAgent(t *testing.T, name string, args ...string) *agentProc {
	t.Helper()
	a := newAgentProc(t, name, args...)
	a.start(t)
	return a
}

// newAgentProc prepares an agent and its cleanup without starting it: the
// chaos isolation starts its agents inside their network namespaces.
func newAgentProc(t *testing.T, name string, args ...string) *agentProc {
	t.Helper()
	a := &agentProc{
		name:    name,
		metrics: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		logPath: filepath.Join(t.TempDir(), name+".log"),
	}
	a.args = append([]string{"agent", "--agent-name", name, "--metrics-listen-address", a.metrics}, args...)
	t.Cleanup(func() {
		a.signal(syscall.SIGKILL)
		a.wait(5 * time.Second)
		if t.Failed() {
			b, _ := os.ReadFile(a.logPath)
			t.Logf("--- log of agent %s ---\n%s", name, testenv.Tail(string(b), 60))
		}
	})
	return a
}

func (a *agentProc) start(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, a.args...)
	cmd.Env = append(os.Environ(), a.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent %s: %v", a.name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); logf.Close() }()
	a.mu.Lock()
	a.cmd, a.done = cmd, done
	a.mu.Unlock()
}

func (a *agentProc) signal(sig syscall.Signal) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil && a.cmd.Process != nil {
		_ = a.cmd.Process.Signal(sig)
	}
}

// wait waits for the process to exit and returns its error; ok is false if
// it did not exit in time.
func (a *agentProc) wait(d time.Duration) (err error, ok bool) {
	a.mu.Lock()
	done := a.done
	a.mu.Unlock()
	if done == nil {
		return nil, true
	}
	select {
	case err := <-done:
		a.mu.Lock()
		a.cmd, a.done = nil, nil
		a.mu.Unlock()
		return err, true
	case <-time.After(d):
		return nil, false
	}
}

func (a *agentProc) running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cmd != nil
}

var httpClient = &http.Client{Timeout: 500 * time.Millisecond}

// status asks the agent for its own view; ok is false when it does not
// answer (not started, dead).
func (a *agentProc) status() (agent.Status, bool) {
	var s agent.Status
	resp, err := httpClient.Get("http://" + a.metrics + "/status")
	if err != nil {
		return s, false
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return s, false
	}
	return s, true
}

// barnacle runs the binary to completion and returns stdout, stderr and the
// exit code.
func barnacle(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return barnacleEnv(t, nil, args...)
}

// barnacleEnv is barnacle with extra environment variables, and without any
// BARNACLE_* variables of the test's own environment.
func barnacleEnv(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := barnacleCmd(ctx, args...)
	cmd.Env = append(cmd.Env, env...)
	return runToExit(t, ctx, cmd)
}

// barnacleCmd is the binary with args in the test's environment, without
// the test's own BARNACLE_* variables (a scenario sets those it means).
func barnacleCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, binary, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BARNACLE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	return cmd
}

// runToExit runs cmd to completion and returns stdout, stderr and the exit
// code; a command that does not start, or that ctx ends, fails the test.
func runToExit(t *testing.T, ctx context.Context, cmd *exec.Cmd) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee) && ctx.Err() == nil:
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatalf("barnacle %v: %v (stderr: %s)", cmd.Args[1:], err, stderr.String())
	return "", "", 0
}

// archiveDir makes an empty directory for a file:// archive.
func archiveDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "archive")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
