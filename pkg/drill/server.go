package drill

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// serverSettings are the settings the drill gives on the command line;
// they override the restored configuration files.
func (r *runner) serverSettings(dataDir string) []string {
	hba := filepath.Join(r.scratch, "pg_hba.conf")
	return []string{
		// Files of the source host the restored configuration may name:
		// the server reads and writes only below the scratch directory
		// (a data_directory there would even point it at a live one).
		"data_directory=" + dataDir,
		"ident_file=" + filepath.Join(r.scratch, "pg_ident.conf"),
		"external_pid_file=",
		// Never runs a command of the source host's on the archive: an
		// archive_cleanup_command (pg_archivecleanup) would delete WAL
		// at each restartpoint of the replay.
		"archive_cleanup_command=",
		// A library of the source host is not needed to replay or
		// check, and one missing here fails every connection.
		"session_preload_libraries=",
		"local_preload_libraries=",
		// The source's timeouts would cancel pg_amcheck on a large
		// table; the drill bounds its own work.
		"statement_timeout=0",
		"lock_timeout=0",
		"idle_in_transaction_session_timeout=0",
		"idle_session_timeout=0",
		// Reachable only through the drill's own socket.
		"listen_addresses=",
		"port=" + strconv.Itoa(port),
		"unix_socket_directories=" + r.socketDir,
		"unix_socket_permissions=0700",
		"unix_socket_group=",
		"hba_file=" + hba,
		"ssl=off",
		// Never archive, replicate, or wait for a standby.
		"archive_mode=off",
		"archive_command=",
		"archive_library=",
		"max_wal_senders=0",
		"primary_conninfo=",
		"primary_slot_name=",
		"synchronous_standby_names=",
		"hot_standby=off",
		// Small: the drill shares a host with a cluster member.
		"shared_buffers=32MB",
		"max_connections=10",
		"superuser_reserved_connections=1",
		"huge_pages=off",
		"max_wal_size=" + maxWALSize,
		"min_wal_size=32MB",
		"wal_keep_size=0",
		"autovacuum=off",
		"jit=off",
		"shared_preload_libraries=",
		"max_parallel_workers_per_gather=0",
		// A log the drill can read: to stderr (its file), in English, UTC.
		"logging_collector=off",
		"log_destination=stderr",
		"log_min_messages=warning",
		"lc_messages=C",
		"log_timezone=UTC",
		"timezone=UTC",
		"cluster_name=barnacle-drill",
		"default_transaction_read_only=off",
	}
}

// server is the restored postmaster.
type server struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // set before exited closes
}

// startAndWait starts PostgreSQL on the restored directory and waits until
// it has promoted.
func (r *runner) startAndWait(ctx context.Context, dataDir string) error {
	hba := "# barnacle drill: local socket connections only\nlocal all all trust\n"
	hbaPath := filepath.Join(r.scratch, "pg_hba.conf")
	if err := os.WriteFile(hbaPath, []byte(hba), 0o600); err != nil {
		return fmt.Errorf("drill: write %s: %w", hbaPath, err)
	}
	if err := r.chown(hbaPath); err != nil {
		return err
	}
	identPath := filepath.Join(r.scratch, "pg_ident.conf")
	if err := os.WriteFile(identPath, nil, 0o600); err != nil {
		return fmt.Errorf("drill: write %s: %w", identPath, err)
	}
	if err := r.chown(identPath); err != nil {
		return err
	}
	dropped, err := dropOutsideIncludes(dataDir)
	if err != nil {
		return err
	}
	for _, line := range dropped {
		r.log.Warn("include of the restored configuration ignored: it names a path outside the restored data directory", "directive", line)
	}
	logf, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("drill: create the server log: %w", err)
	}
	defer logf.Close()
	args := []string{"-D", dataDir}
	for _, s := range append(r.serverSettings(dataDir), r.opts.Settings...) {
		args = append(args, "-c", s)
	}
	cmd := exec.Command(filepath.Join(r.opts.PGBinDir, "postgres"), args...)
	cmd.Dir = dataDir
	cmd.Env = serverEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a last SIGKILL reaches every
	// backend; Pdeathsig so that it does not outlive a killed agent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if o := r.opts.Owner; o != nil && os.Geteuid() == 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(o.UID), Gid: uint32(o.GID), NoSetGroups: true} //nolint:gosec // IDs fit
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("drill: start postgres from pg-bin-dir %s: %w", r.opts.PGBinDir, err)
	}
	s := &server{cmd: cmd, exited: make(chan struct{})}
	r.server = s
	go func() { s.err = cmd.Wait(); close(s.exited) }()
	r.log.Info("server started", "pid", cmd.Process.Pid, "data_dir", dataDir, "socket_dir", r.socketDir)

	timeout := r.opts.ReplayTimeout
	if timeout <= 0 {
		timeout = DefaultReplayTimeout
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	users := r.candidateUsers()
	var last error
	for {
		select {
		case <-s.exited:
			return fmt.Errorf("PostgreSQL exited before recovery ended (%v); last lines of its log:\n%s\nfix what the log names (a setting the restored configuration or the drill's settings give, the host's PostgreSQL installation in pg-bin-dir, or the WAL restore_command could not fetch)",
				s.err, r.logTail(15))
		default:
		}
		// Connect only once the postmaster says it is ready (with
		// hot_standby off: recovery ended), as pg_ctl does: attempts
		// before would each log a FATAL that hides the lines that
		// matter in the log tail of a failure.
		var promoted bool
		var err error
		if serverReady(dataDir) {
			promoted, err = r.promoted(wctx, users)
		}
		if promoted {
			return nil
		}
		if err != nil {
			var missing *missingRoleError
			if errors.As(err, &missing) {
				return err
			}
			if refused(err) {
				return fmt.Errorf("the restored server ended recovery but refuses the drill's connections (%v); last lines of its log:\n%s\nfix what the log names (a setting of the restored configuration or the drill's settings)",
					err, r.logTail(10))
			}
			last = err
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("drill cancelled during replay: %w", cancelled(ctx))
			}
			return fmt.Errorf("recovery did not end within %s (last: %v); last lines of the server log:\n%s\nallow more time (restore-drill-replay-timeout) or take backups more often so that less WAL must be replayed",
				timeout, last, r.logTail(10))
		case <-s.exited:
		case <-time.After(pollInterval):
		}
	}
}

// serverEnv is the agent's environment without libpq's PG* variables,
// which must not redirect the server or the tools: restore_command runs
// barnacle wal-fetch, which needs the archive's credentials from it.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// refused reports whether err is the server's FATAL refusal of a
// connection for a reason that does not pass by itself (a preload
// library missing on this host, a bad setting), once the postmaster said
// it is ready: waiting would only end at the replay timeout, hours later.
// "Starting up" (57P03) and "too many connections" (53300) pass.
func refused(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Severity == "FATAL" && pe.Code != "57P03" && pe.Code != "53300"
}

// candidateUsers are the roles the drill tries to connect as.
func (r *runner) candidateUsers() []string {
	if r.opts.Superuser != "" {
		return []string{r.opts.Superuser}
	}
	uid := os.Geteuid()
	if r.opts.Owner != nil && uid == 0 {
		uid = r.opts.Owner.UID
	}
	var out []string
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil && u.Username != "" {
		out = append(out, u.Username)
	}
	if !slices.Contains(out, "postgres") {
		out = append(out, "postgres")
	}
	return out
}

// missingRoleError means the server accepts connections but none of the
// candidate roles exists, or the one that does is not a superuser
// (pg_amcheck and the sample's queries need one).
type missingRoleError struct {
	users        []string
	named        bool   // users is Options.Superuser (restore-drill-superuser)
	notSuperuser string // the role that connected but is no superuser
}

// superuserHint is what to change: the drill cannot guess a superuser
// name that Stolon's keeper was told with --pg-su-username.
const superuserHint = "set restore-drill-superuser to the cluster's superuser name (Stolon's keeper --pg-su-username)"

func (e *missingRoleError) Error() string {
	switch {
	case e.notSuperuser != "":
		return fmt.Sprintf("the restored server runs, but role %s is not a superuser, and the drill's checks need one: %s", e.notSuperuser, superuserHint)
	case e.named:
		return fmt.Sprintf("the restored server runs, but role %s (restore-drill-superuser) does not exist in it: %s", strings.Join(e.users, ", "), superuserHint)
	}
	return fmt.Sprintf("the restored server runs, but none of the roles %s exists in it: %s", strings.Join(e.users, ", "), superuserHint)
}

// promoted reports whether the server accepts connections and is out of
// recovery; it settles r.user on the first role that connects.
func (r *runner) promoted(ctx context.Context, users []string) (bool, error) {
	try := users
	if r.user != "" {
		try = []string{r.user}
	}
	var (
		err      error
		notSuper string
	)
	for _, u := range try {
		var conn *pgx.Conn
		conn, err = r.connect(ctx, u, "template1")
		if err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "28000" && strings.Contains(pe.Message, "does not exist") {
				continue // no such role: try the next
			}
			return false, err
		}
		var in, super bool
		err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&in, &super)
		_ = conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return false, err
		}
		if !super {
			notSuper = u // an OS user's own role may exist without being the superuser: try the next
			continue
		}
		r.user = u
		return !in, nil
	}
	if notSuper != "" {
		return false, &missingRoleError{notSuperuser: notSuper}
	}
	return false, &missingRoleError{users: try, named: r.opts.Superuser != ""}
}

func (r *runner) dsn(db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=10",
		quoteDSN(r.socketDir), port, quoteDSN(r.user), quoteDSN(db))
}

func quoteDSN(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'"
}

func (r *runner) connect(ctx context.Context, user, db string) (*pgx.Conn, error) {
	saved := r.user
	r.user = user
	dsn := r.dsn(db)
	r.user = saved
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// readReached sets Reached from the history file the promotion wrote (the
// newest timeline's, in pg_wal: its last line is the timeline left and
// where replay ended on it) and ReachedTime from the server log.
func (r *runner) readReached(dataDir string) error {
	walDir := filepath.Join(dataDir, "pg_wal")
	entries, err := os.ReadDir(walDir)
	if err != nil {
		return fmt.Errorf("drill: list %s: %w", walDir, err)
	}
	var newest wal.Timeline
	for _, e := range entries {
		if tli, err := wal.ParseHistoryFileName(e.Name()); err == nil && tli > newest {
			newest = tli
		}
	}
	if newest == 0 {
		return fmt.Errorf("drill: the restored server promoted but %s has no timeline history file: cannot tell where replay ended", walDir)
	}
	name := filepath.Join(walDir, wal.HistoryFileName(newest))
	data, err := os.ReadFile(name)
	if err != nil {
		return fmt.Errorf("drill: read %s: %w", name, err)
	}
	h, err := wal.ParseHistory(data)
	if err != nil || len(h) == 0 {
		return fmt.Errorf("drill: history file %s of the promotion: %v", name, err)
	}
	last := h[len(h)-1]
	r.d.Reached = catalog.Position{Timeline: last.Timeline, LSN: last.SwitchPoint}
	r.d.ReachedTime = r.lastCommitTime()
	return nil
}

var lastCommitRE = regexp.MustCompile(`last completed transaction was at log time (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d(?::?\d\d)?)`)

// lastCommitTime finds the time PostgreSQL logs at the end of recovery for
// the last transaction it replayed; zero when the log has none.
func (r *runner) lastCommitTime() time.Time {
	f, err := os.Open(r.logPath)
	if err != nil {
		return time.Time{}
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if m := lastCommitRE.FindStringSubmatch(sc.Text()); m != nil {
			last = m[1]
		}
	}
	for _, layout := range []string{"2006-01-02 15:04:05.999999-07", "2006-01-02 15:04:05.999999-07:00", "2006-01-02 15:04:05.999999-0700"} {
		if t, err := time.Parse(layout, last); err == nil {
			return t.UTC()
		}
	}
	return time.Time{}
}

// logTail returns the last n lines of the server log.
func (r *runner) logTail(n int) string {
	b, err := os.ReadFile(r.logPath)
	if err != nil {
		return "(no server log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cleanup stops the server and removes the scratch directory. Removing
// what cannot be removed is an error: a drill leaves nothing behind.
func (r *runner) cleanup(ctx context.Context) error {
	var errs []error
	if r.server != nil {
		if err := r.stopServer(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for i, dir := range []string{r.scratch, r.socketDir} {
		if dir == "" || i == 1 && dir == r.scratch {
			continue
		}
		if err := os.RemoveAll(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("drill: remove %s: %w (remove it by hand)", dir, err))
		} else {
			r.log.Debug("removed", "directory", dir)
		}
	}
	if r.lock != nil {
		_ = r.lock.Close()
	}
	if r.socketLock != nil {
		_ = r.socketLock.Close()
	}
	return errors.Join(errs...)
}

// stopServer stops the postmaster: fast shutdown, then immediate, then
// SIGKILL of its process group.
func (r *runner) stopServer(ctx context.Context) error {
	s := r.server
	pid := s.cmd.Process.Pid
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
		what string
	}{
		{syscall.SIGINT, fastStop, "fast shutdown"},
		{syscall.SIGQUIT, immediateStop, "immediate shutdown"},
		{syscall.SIGKILL, immediateStop, "kill"},
	} {
		select {
		case <-s.exited:
			return r.reap(pid)
		default:
		}
		if step.sig == syscall.SIGKILL {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		} else {
			_ = s.cmd.Process.Signal(step.sig)
		}
		r.log.Debug("stopping the server", "how", step.what, "pid", pid)
		t := time.NewTimer(step.wait)
		select {
		case <-s.exited:
			t.Stop()
			return r.reap(pid)
		case <-ctx.Done():
			t.Stop()
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		case <-t.C:
		}
	}
	select {
	case <-s.exited:
		return r.reap(pid)
	case <-time.After(immediateStop):
		return fmt.Errorf("drill: the restored server (pid %d) did not exit after SIGKILL", pid)
	}
}

// reap kills what may remain of the server's process group once the
// postmaster has exited (backends exit on their own when it dies; a
// restore_command child might not) and waits until none is left, so the
// directory is not removed under a running process.
func (r *runner) reap(pid int) error {
	deadline := time.Now().Add(immediateStop)
	for {
		if err := syscall.Kill(-pid, 0); errors.Is(err, syscall.ESRCH) {
			r.log.Info("server stopped", "pid", pid)
			return nil
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		if time.Now().After(deadline) {
			return fmt.Errorf("drill: processes of the restored server (group %d) are still running", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
