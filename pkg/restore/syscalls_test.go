package restore

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	storagefs "github.com/barnacle-pg/barnacle/pkg/storage/fs"
)

// syscallChildEnv, when set in the environment, makes
// TestRestoreSystemCallsPerFile the restore that its parent traces: the
// value is the JSON of a syscallJob.
const syscallChildEnv = "BARNACLE_TEST_SYSCALL_CHILD"

type syscallJob struct {
	Archive string         `json:"archive"`
	Backup  catalog.Backup `json:"backup"`
	Target  string         `json:"target"`
}

// syscallFiles is how many small files the traced restore writes: above
// syncfsMinFiles, so that one syncfs makes them durable.
const syscallFiles = 12000

// TestRestoreSystemCallsPerFile counts the system calls of a real restore
// of syscallFiles small files, traced by strace(1) in a child process, and
// fails if the calls per file grow back (issue 21): a file is one openat2
// from its directory's handle, its writes, utimensat and close, with no
// fchmod (created with its mode), no fcntl (os.NewFile's), no fsync or
// sync_file_range (one syncfs for all), and no walk of the path through
// os.Root (openat, fstat and close per directory on the way). strace
// must be installed (scripts/install-deps.sh): without it the test fails.
func TestRestoreSystemCallsPerFile(t *testing.T) {
	if job := os.Getenv(syscallChildEnv); job != "" {
		restoreSyscallChild(t, job)
		return
	}
	strace, err := exec.LookPath("strace")
	require.NoError(t, err, "strace counts the restore's system calls: install it (scripts/install-deps.sh)")
	if !openat2Works(t) {
		t.Fatal("openat2(2) is not available here, so files are created through os.Root: the counts below assume Linux 5.6 or later without a seccomp filter on it")
	}
	if !syncfsReportsErrors() {
		t.Fatal("this kernel's syncfs does not report write errors (before 5.8), so restore fsyncs every file: the counts below assume Linux 5.8 or later")
	}

	// A data directory of syscallFiles small relation files in 40
	// databases, half of them group-readable, and its manifest.
	var entries []entry
	var manifest strings.Builder
	manifest.WriteString(`{"PostgreSQL-Backup-Manifest-Version":1,"Files":[`)
	add := func(e entry) {
		if len(entries) > 0 {
			manifest.WriteString(",")
		}
		fmt.Fprintf(&manifest, `{"Path":%q,"Size":%d}`, e.name, len(e.body))
		entries = append(entries, e)
	}
	add(file("PG_VERSION", "15\n"))
	add(file(pgControlName, strings.Repeat("c", 8192)))
	body := strings.Repeat("r", 600)
	for i := range syscallFiles {
		e := file(fmt.Sprintf("base/%d/%d", 16384+i%40, 20000+i), body)
		if i%2 == 0 {
			e.mode = 0o600
		}
		add(e)
	}
	manifest.WriteString("]}\n")
	archive := t.TempDir()
	b, err := storagefs.New(archive, storagefs.Options{})
	require.NoError(t, err)
	doc := catalog.Backup{ID: "20261206T100000", Status: catalog.StatusDone}
	for name, data := range map[string][]byte{"base.tar": tarOf(t, entries...), manifestName: []byte(manifest.String())} {
		require.NoError(t, b.Put(t.Context(), catalog.BackupPrefix(testCluster, doc.ID)+name, bytes.NewReader(data), storage.PutOptions{}))
		doc.Files = append(doc.Files, catalog.BackupFile{Name: name, Bytes: int64(len(data)), StoredBytes: int64(len(data))})
	}

	dir := t.TempDir()
	job, err := json.Marshal(syscallJob{
		Archive: archive,
		Backup:  doc,
		Target:  filepath.Join(dir, "data"),
	})
	require.NoError(t, err)
	out := filepath.Join(dir, "strace.txt")
	cmd := exec.CommandContext(t.Context(), strace, "-f", "-c", "-o", out, "--",
		os.Args[0], "-test.run=^TestRestoreSystemCallsPerFile$", "-test.count=1")
	cmd.Env = append(os.Environ(), syscallChildEnv+"="+string(job))
	log, err := cmd.CombinedOutput()
	require.NoError(t, err, "traced restore: %s", log)

	calls := parseStraceCounts(t, out)
	n := len(entries)
	t.Logf("%d files restored; calls: %v", n, calls)
	// Calls that may be made per file, and their budget: what the
	// restore needs per file, plus a constant for the process and the
	// directories.
	const slack = 600
	assert.LessOrEqual(t, calls["openat2"], n+slack, "openat2: one per file")
	assert.LessOrEqual(t, calls["utimensat"], n+slack, "utimensat: one per file")
	assert.LessOrEqual(t, calls["close"], n+slack, "close: one per file")
	assert.LessOrEqual(t, calls["write"], n+slack, "write: one per small file")
	for _, name := range []string{"fchmod", "fcntl", "fsync", "fdatasync", "sync_file_range", "openat", "newfstatat", "fstat", "statx"} {
		assert.Less(t, calls[name], slack, "%s: none per file", name)
	}
	assert.Positive(t, calls["syncfs"], "one syncfs makes the files durable")
	perFile := 0
	for _, name := range []string{"openat2", "openat", "write", "fchmod", "fchown", "utimensat", "close", "fcntl", "fsync",
		"fdatasync", "sync_file_range", "newfstatat", "fstat", "statx", "mkdirat", "unlinkat", "readlinkat", "lseek"} {
		perFile += calls[name]
	}
	assert.LessOrEqual(t, perFile, 4*n+4*slack, "file system calls in all, for %d files", n)
	// The restore did write them all.
	got := 0
	for i := range 40 {
		des, err := os.ReadDir(filepath.Join(dir, "data", "base", strconv.Itoa(16384+i)))
		require.NoError(t, err)
		got += len(des)
	}
	assert.Equal(t, syscallFiles, got)
	st, err := os.Stat(filepath.Join(dir, "data", "base", "16385", "20001"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), st.Mode().Perm(), "group read kept")
	st, err = os.Stat(filepath.Join(dir, "data", "base", "16384", "20000"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	assert.Equal(t, tarTime, st.ModTime().UTC())
}

// restoreSyscallChild is the traced side: one Restore of the job.
func restoreSyscallChild(t *testing.T, job string) {
	var j syscallJob
	require.NoError(t, json.Unmarshal([]byte(job), &j))
	b, err := storagefs.New(j.Archive, storagefs.Options{})
	require.NoError(t, err)
	res, err := Restore(t.Context(), Options{Backend: b, Cluster: testCluster, Backup: j.Backup, TargetDir: j.Target})
	require.NoError(t, err)
	require.Equal(t, syscallFiles+2, res.Files) // with PG_VERSION and pg_control
}

// parseStraceCounts reads the summary table of strace -c: the number of
// calls by system call name.
func parseStraceCounts(t *testing.T, path string) map[string]int {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	calls := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || f[len(f)-1] == "total" || f[len(f)-1] == "syscall" {
			continue
		}
		n, err := strconv.Atoi(f[3])
		if err != nil {
			continue
		}
		calls[f[len(f)-1]] = n
	}
	require.NotEmpty(t, calls, "no counts in strace's summary:\n%s", data)
	return calls
}
