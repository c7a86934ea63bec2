package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// postgresCredential is the OS user postgres when the test runs as root
// (nil otherwise: the test's own user is then no superuser already).
func postgresCredential(t *testing.T) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	require.NoError(t, err, "tests run as root need the OS user postgres")
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	require.NoError(t, err)
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	require.NoError(t, err)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// barnacleAsPostgres runs the binary as the OS user postgres (see
// postgresCredential) and returns stdout, stderr and the exit code.
func barnacleAsPostgres(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := barnacleCmd(ctx, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: postgresCredential(t)}
	return runToExit(t, ctx, cmd)
}

// readOnlyForPostgres makes the archive dir readable but not writable for
// the OS user postgres, the way README's restore recipe says: owned by the
// writer (root here), group postgres, setgid, mode 2750; the directories
// above it searchable.
func readOnlyForPostgres(t *testing.T, dir string) {
	t.Helper()
	cred := postgresCredential(t)
	if cred == nil {
		require.NoError(t, os.Chmod(dir, 0o555))
		return
	}
	require.NoError(t, os.Chown(dir, 0, int(cred.Gid)))
	require.NoError(t, os.Chmod(dir, 0o750|os.ModeSetgid))
	tmp := filepath.Clean(os.TempDir())
	for d := filepath.Dir(dir); strings.HasPrefix(d, tmp+string(filepath.Separator)); d = filepath.Dir(d) {
		st, err := os.Stat(d)
		require.NoError(t, err)
		require.NoError(t, os.Chmod(d, st.Mode().Perm()|0o055))
	}
}

// TestRestoreArchiveVanishes is issue 16's data-safety scenario with real
// PostgreSQL: the archive belongs to the agents and is only readable by
// the postgres OS user, which runs the read commands, barnacle restore and
// (as PostgreSQL's restore_command) wal-fetch. The archive vanishing
// before or during recovery never yields a promoted server with fewer
// rows: recovery stops with a message naming the cause, and once the
// archive is back, starting the server again recovers every row. After
// the promotion the prefetch spool is gone.
func TestRestoreArchiveVanishes(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{WALSegmentSizeMB: 1}, "--compression", "zstd")
	readOnlyForPostgres(t, env.dir)
	env.startAgents()
	primary := env.pg.Primary()
	env.leaderFor(primary)
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE safety (id int PRIMARY KEY, pad text NOT NULL)"))
	require.NoError(t, primary.Exec(ctx, "INSERT INTO safety SELECT g, repeat('x', 200) FROM generate_series(1, 1000) g"))
	store := env.store()
	out, stderr, code := barnacle(t, append([]string{"backup", "--wait"}, store...)...)
	require.Equal(t, 0, code, "backup: %s %s", out, stderr)

	// About ten segments of WAL after the backup, one batch per segment;
	// recovery is made to lose the archive in the middle of them.
	var vanishAt string
	for batch := 1; batch <= 10; batch++ {
		from := batch * 10000
		require.NoError(t, primary.Exec(ctx, "INSERT INTO safety SELECT g, repeat('x', 200) FROM generate_series($1::int, $1::int + 2999) g", from))
		if batch == 6 {
			require.NoError(t, primary.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&vanishAt))
		}
		require.NoError(t, primary.Exec(ctx, "SELECT pg_switch_wal()"))
	}
	want, err := primary.QueryInt64(ctx, "SELECT count(*) FROM safety")
	require.NoError(t, err)
	env.waitArchived(primary, 60*time.Second)
	t.Logf("%d rows; the archive vanishes when recovery asks for %s", want, vanishAt)

	archiveArgs := []string{"--cluster-name", cluster, "--archive-url", "file://" + env.dir}
	t.Run("read commands as a user who may only read", func(t *testing.T) {
		for _, args := range [][]string{{"list-backups"}, {"show-backup", "latest"}, {"verify-backup", "latest"}} {
			out, stderr, code := barnacleAsPostgres(t, append(args, archiveArgs...)...)
			assert.Equal(t, 0, code, "%v:\n%s\n%s", args, out, stderr)
			assert.NotContains(t, stderr, "not writable", args)
		}
		// check reads the archive as well and keeps its own line for
		// write access.
		out, stderr, _ := barnacleAsPostgres(t, append(append([]string{"check"}, store...), archiveArgs[2:]...)...)
		lines := checkLines(out)
		assert.Contains(t, lines["archive writable"], "FAILED", "%s\n%s", out, stderr)
		assert.Contains(t, lines["archive identity"], "OK", out)
		assert.Contains(t, lines["WAL continuity"], "OK", out)
	})

	// restoreAsPostgres restores the latest backup, to the end of WAL, as
	// the postgres OS user, into a new directory.
	restoreAsPostgres := func(t *testing.T) string {
		t.Helper()
		parent := t.TempDir()
		testenv.PGOwn(t, parent)
		dir := filepath.Join(parent, "pgdata")
		out, stderr, code := barnacleAsPostgres(t, append([]string{"restore", "--target-dir", dir}, archiveArgs...)...)
		require.Equal(t, 0, code, "restore:\n%s\n%s", out, stderr)
		// The archive stays away longer than wal-fetch's retries: a short
		// --retry-for keeps the server's stop well inside the harness'
		// start timeout (TestWALFetchRetriesArchiveOutage covers an
		// archive that comes back in time).
		auto := filepath.Join(dir, "postgresql.auto.conf")
		conf, err := os.ReadFile(auto)
		require.NoError(t, err)
		require.Contains(t, string(conf), " wal-fetch ")
		conf = []byte(strings.Replace(string(conf), " wal-fetch ", " wal-fetch --retry-for=1s ", 1))
		require.NoError(t, os.WriteFile(auto, conf, 0o600))
		return dir
	}
	gone := env.dir + ".gone"
	vanish := func(t *testing.T) {
		t.Helper()
		require.NoError(t, os.Rename(env.dir, gone))
		t.Cleanup(func() { _ = os.Rename(gone, env.dir) })
	}
	comeBack := func(t *testing.T) { require.NoError(t, os.Rename(gone, env.dir)) }
	// requireStoppedShort checks that the server stopped in recovery,
	// neither promoted nor past the failure, with wal-fetch's reason.
	requireStoppedShort := func(t *testing.T, r *testenv.Restored) {
		t.Helper()
		log, err := os.ReadFile(r.LogPath())
		require.NoError(t, err)
		assert.Contains(t, string(log), gone[:len(gone)-len(".gone")]+" does not exist", "the log names the cause")
		assert.NotContains(t, string(log), "archive recovery complete", "never promoted")
		assert.NotContains(t, string(log), "selected new timeline ID", "never promoted")
	}
	// requireAllRows starts r again and checks it recovers every row and
	// leaves no prefetch spool behind.
	requireAllRows := func(t *testing.T, r *testenv.Restored, dir string) {
		t.Helper()
		require.NoError(t, r.Start())
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		end, err := r.WaitRecoveryEnd(wctx)
		require.NoError(t, err)
		require.Equal(t, testenv.RecoveryPromoted, end, r.LogTail(30))
		n, err := r.QueryInt64(ctx, "SELECT count(*) FROM safety")
		require.NoError(t, err)
		require.Equal(t, want, n, "rows after the restore")
		entries, err := os.ReadDir(filepath.Join(dir, "pg_wal"))
		require.NoError(t, err)
		for _, e := range entries {
			assert.False(t, strings.HasPrefix(e.Name(), ".barnacle-prefetch"), "the prefetch spool is removed at the end of recovery: %s", e.Name())
		}
	}

	t.Run("archive gone before recovery", func(t *testing.T) {
		dir := restoreAsPostgres(t)
		vanish(t)
		r := testenv.NewRestored(t, dir)
		err := r.Start()
		require.Error(t, err, "PostgreSQL must stop recovery, not start")
		requireStoppedShort(t, r)
		comeBack(t)
		requireAllRows(t, r, dir)
	})

	t.Run("archive gone during recovery", func(t *testing.T) {
		dir := restoreAsPostgres(t)
		// restore_command waits at vanishAt until the test has moved the
		// archive away: the same wal-fetch, at a known point of replay.
		marks := t.TempDir()
		testenv.PGOwn(t, marks)
		script := filepath.Join(marks, "restore-command.sh")
		require.NoError(t, os.WriteFile(script, []byte(fmt.Sprintf(`#!/bin/sh
if [ "$1" = %q ] && [ ! -e %q ]; then
	: > %q
	i=0
	while [ ! -e %q ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
fi
exec %q wal-fetch --retry-for=1s --cluster-name %q --archive-url %q "$1" "$2"
`, vanishAt, marks+"/seen", marks+"/seen", marks+"/gone", binary, cluster, "file://"+env.dir)), 0o755))
		testenv.PGOwn(t, script)
		f, err := os.OpenFile(filepath.Join(dir, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = fmt.Fprintf(f, "restore_command = '%s %%f %%p'\n", script)
		require.NoError(t, err)
		require.NoError(t, f.Close())

		r := testenv.NewRestored(t, dir)
		started := make(chan error, 1)
		go func() { started <- r.Start() }()
		waitFor(t, 2*time.Minute, "recovery to ask for "+vanishAt, func() bool {
			_, err := os.Stat(filepath.Join(marks, "seen"))
			return err == nil
		})
		vanish(t)
		require.NoError(t, os.WriteFile(filepath.Join(marks, "gone"), nil, 0o644))
		if err := <-started; err == nil {
			// It had become a hot standby before the archive went away.
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			end, err := r.WaitRecoveryEnd(wctx)
			require.NoError(t, err)
			require.Equal(t, testenv.RecoveryShutdown, end, "recovery must stop, not promote:\n%s", r.LogTail(30))
		}
		requireStoppedShort(t, r)
		comeBack(t)
		requireAllRows(t, r, dir)
	})

	// Last: it damages the archive. A flipped byte in a segment the backup
	// needs and in a later one: names-only checks stay green, the reading
	// ones must not.
	t.Run("flipped byte in archived segments", func(t *testing.T) {
		out, stderr, code := barnacleAsPostgres(t, append([]string{"show-backup", "latest", "--json"}, archiveArgs...)...)
		require.Equal(t, 0, code, "%s %s", out, stderr)
		var detail struct {
			WAL struct{ First string } `json:"wal"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &detail), out)
		require.NotEmpty(t, detail.WAL.First)
		flip := func(segment string) string {
			matches, err := filepath.Glob(filepath.Join(env.dir, cluster, "wals", segment+"*"))
			require.NoError(t, err)
			require.Len(t, matches, 1, segment)
			f, err := os.OpenFile(matches[0], os.O_RDWR, 0)
			require.NoError(t, err)
			defer f.Close()
			fi, err := f.Stat()
			require.NoError(t, err)
			b := make([]byte, 1)
			at := fi.Size() / 2
			_, err = f.ReadAt(b, at)
			require.NoError(t, err)
			b[0] ^= 0x01
			_, err = f.WriteAt(b, at)
			require.NoError(t, err)
			return filepath.Base(matches[0])
		}
		needed, later := flip(detail.WAL.First), flip(vanishAt)

		out, stderr, code = barnacleAsPostgres(t, append([]string{"verify-backup", "latest"}, archiveArgs...)...)
		assert.Equal(t, 1, code, "verify-backup:\n%s\n%s", out, stderr)
		assert.Contains(t, out, "PROBLEM: wals/"+needed+": ")
		assert.NotContains(t, out, later, "after the consistency point: not the backup's")

		out, stderr, code = barnacleAsPostgres(t, append([]string{"verify-wal"}, archiveArgs...)...)
		assert.Equal(t, 1, code, "verify-wal:\n%s\n%s", out, stderr)
		assert.Contains(t, out, "PROBLEM: "+needed+": ")
		assert.Contains(t, out, "PROBLEM: "+later+": ")
		out, stderr, code = barnacleAsPostgres(t, append([]string{"verify-wal", "--from", vanishAt}, archiveArgs...)...)
		assert.Equal(t, 1, code, "verify-wal --from:\n%s\n%s", out, stderr)
		assert.NotContains(t, out, needed)
		assert.Contains(t, out, "PROBLEM: "+later+": ")
	})
}
