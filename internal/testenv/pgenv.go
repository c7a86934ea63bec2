package testenv

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// pgMissingMsg is the failure message when no PostgreSQL 15 server binaries
// can be found. Tests must fail, not skip, so that a missing installation is
// never mistaken for a passing run.
const pgMissingMsg = "PostgreSQL 15 server binaries not found (initdb); install them: apt-get update && apt-get install -y postgresql-15"

// pgEnv is how this process runs PostgreSQL programs: where they are and,
// when we are root, as which OS user (PostgreSQL refuses to run as root).
type pgEnv struct {
	binDir string
	// cred is nil when the programs run as the current user.
	cred *syscall.Credential
}

var (
	pgEnvOnce sync.Once
	pgEnvVal  *pgEnv
	pgEnvErr  error
)

// PGBinDir returns the directory of the PostgreSQL server binaries: env
// BARNACLE_PG_BINDIR, else /usr/lib/postgresql/15/bin, else `pg_config
// --bindir`, else the directory of initdb on PATH. It fails the test when
// none has initdb.
func PGBinDir(t testing.TB) string {
	t.Helper()
	return loadPGEnv(t).binDir
}

// PGCommand returns a command that runs the PostgreSQL program name (initdb,
// pg_waldump, pg_verifybackup, ...) from PGBinDir, as the `postgres` OS user
// when the test runs as root, with an environment free of the caller's PG*
// variables. The command gets SIGKILL if the test process dies.
func PGCommand(ctx context.Context, t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	return loadPGEnv(t).command(ctx, name, args...)
}

// PGOwn makes path (a directory tree or a file) usable by the OS user that
// runs PostgreSQL: when the test runs as root it is chowned to `postgres`,
// and every directory above it up to the filesystem root gets the search
// (x) permission for others, so a data directory inside t.TempDir() works.
// It does nothing when the test does not run as root.
func PGOwn(t testing.TB, path string) {
	t.Helper()
	e := loadPGEnv(t)
	if err := e.chownTree(path); err != nil {
		t.Fatalf("give %s to the postgres user: %v", path, err)
	}
	if err := e.makeTraversable(filepath.Dir(path)); err != nil {
		t.Fatalf("make the parents of %s traversable: %v", path, err)
	}
}

func loadPGEnv(t testing.TB) *pgEnv {
	t.Helper()
	pgEnvOnce.Do(func() { pgEnvVal, pgEnvErr = findPGEnv() })
	if pgEnvErr != nil {
		t.Fatal(pgEnvErr)
	}
	return pgEnvVal
}

func findPGEnv() (*pgEnv, error) {
	if d := os.Getenv("BARNACLE_PG_BINDIR"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			return nil, fmt.Errorf("BARNACLE_PG_BINDIR=%s has no initdb (%v); %s", d, err, pgMissingMsg)
		}
	}
	bin := findPGBinDir()
	if bin == "" {
		return nil, fmt.Errorf("%s", pgMissingMsg)
	}
	e := &pgEnv{binDir: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("tests run as root and PostgreSQL refuses to run as root, but the OS user postgres does not exist (%v); create it: useradd --system --user-group --home-dir /var/lib/postgresql postgres, or install postgresql-15 which creates it", err)
		}
		uid, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("parse uid of user postgres %q: %w", u.Uid, err)
		}
		gid, err := strconv.ParseUint(u.Gid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("parse gid of user postgres %q: %w", u.Gid, err)
		}
		e.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	return e, nil
}

func findPGBinDir() string {
	has := func(dir string) bool {
		if dir == "" {
			return false
		}
		st, err := os.Stat(filepath.Join(dir, "initdb"))
		return err == nil && !st.IsDir()
	}
	if d := os.Getenv("BARNACLE_PG_BINDIR"); has(d) {
		return d
	}
	if d := "/usr/lib/postgresql/15/bin"; has(d) {
		return d
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); has(d) {
			return d
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

// command builds an exec.Cmd for a PostgreSQL program. Pdeathsig makes the
// kernel kill it if the test binary dies, so no server outlives a crashed
// or timed-out test run.
func (e *pgEnv) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(e.binDir, name), args...)
	cmd.Env = e.environ()
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// environ is a minimal environment: the caller's PGHOST, PGPASSWORD, ... must
// not leak into the harness' programs, and HOME must not be root's (libpq
// would try to read /root/.pgpass as the postgres user).
func (e *pgEnv) environ() []string {
	env := []string{
		"PATH=" + e.binDir + ":/usr/local/bin:/usr/bin:/bin",
		"HOME=/tmp",
		"LC_ALL=C",
		"LANG=C",
		"PGCONNECT_TIMEOUT=10",
	}
	if tz := os.Getenv("TZ"); tz != "" {
		env = append(env, "TZ="+tz)
	}
	return env
}

// chownTree gives path and everything below it to the postgres OS user.
func (e *pgEnv) chownTree(path string) error {
	if e.cred == nil {
		return nil
	}
	return filepath.WalkDir(path, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(e.cred.Uid), int(e.cred.Gid))
	})
}

// makeTraversable adds o+x to dir and its parents below os.TempDir():
// t.TempDir() directories are 0700 root, which the postgres user could not
// enter. Directories outside the temporary directory are never changed; an
// error names the first one the postgres user cannot enter.
func (e *pgEnv) makeTraversable(dir string) error {
	if e.cred == nil {
		return nil
	}
	tmp := filepath.Clean(os.TempDir())
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			if !strings.HasPrefix(d, tmp+string(filepath.Separator)) {
				return fmt.Errorf("directory %s is not searchable by others and is outside %s; the postgres user cannot reach the data directory", d, tmp)
			}
			if err := os.Chmod(d, st.Mode().Perm()|0o055); err != nil {
				return err
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// writeFile writes a file that PostgreSQL must be able to read.
func (e *pgEnv) writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	if e.cred != nil {
		return os.Chown(path, int(e.cred.Uid), int(e.cred.Gid))
	}
	return nil
}

// mkdir creates a directory owned by the PostgreSQL OS user.
func (e *pgEnv) mkdir(path string) error {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return err
	}
	if e.cred != nil {
		return os.Chown(path, int(e.cred.Uid), int(e.cred.Gid))
	}
	return nil
}

// run runs a PostgreSQL program to completion and returns its output in the
// error when it fails.
func (e *pgEnv) run(ctx context.Context, extraEnv []string, name string, args ...string) error {
	cmd := e.command(ctx, name, args...)
	cmd.Env = append(cmd.Env, extraEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, Tail(string(out), 30))
	}
	return nil
}

// Tail returns the last n lines of s, for logs quoted in failure messages.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
