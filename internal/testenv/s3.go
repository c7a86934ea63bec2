package testenv

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// VersitygwVersion is the versitygw release the harness runs; `make
// versitygw` (scripts/versitygw.sh) builds it with `go install` into
// VersitygwPath's directory. Keep the two in step.
const VersitygwVersion = "v1.8.0"

// versitygwMissingMsg says how to get the server. Tests fail, never skip,
// without it.
const versitygwMissingMsg = "versitygw " + VersitygwVersion + " (the S3 server the tests run against) not found at %s: " +
	"build it with `make versitygw` (or set BARNACLE_VERSITYGW to a versitygw binary)"

// S3Region is the region the harness server answers for.
const S3Region = "us-east-1"

// VersitygwPath returns where the versitygw binary is looked for: env
// BARNACLE_VERSITYGW, else <user cache dir>/barnacle/versitygw-<version>/versitygw
// (~/.cache/... unless XDG_CACHE_HOME is set), where `make versitygw` puts it.
func VersitygwPath() string {
	return cachedBinary("BARNACLE_VERSITYGW", "versitygw", VersitygwVersion)
}

// cachedBinary is where a server binary the harness runs is looked for:
// env, else <user cache dir>/barnacle/<name>-<version>/<name>, where the
// Makefile's scripts build it (~/.cache/... unless XDG_CACHE_HOME is set).
func cachedBinary(env, name, version string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = filepath.Join(os.TempDir(), "barnacle-cache")
	}
	return filepath.Join(dir, "barnacle", name+"-"+version, name)
}

// S3Server is a real S3-compatible server, versitygw with its posix backend
// on a directory in t.TempDir(), listening on a free 127.0.0.1 port with
// random root credentials. It keeps its port, credentials and data across
// Stop and Start, so a test can take the object store away and bring it
// back. Its methods are safe for concurrent use.
type S3Server struct {
	// Endpoint is the server's base URL, http://127.0.0.1:<port>.
	Endpoint string
	// AccessKey and SecretKey are the root user's credentials.
	AccessKey, SecretKey string
	// Bucket is a bucket created at start, named after the test.
	Bucket string
	// Root is the posix backend's directory: bucket B's object K is the
	// file Root/B/K.
	Root string

	t       testing.TB
	bin     string
	addr    string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

// StartS3 starts an S3 server for the test, creates S3Server.Bucket, and
// stops the server in t.Cleanup. It fails the test, with a message saying
// how to build it, when the versitygw binary is missing or does not start.
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	bin := VersitygwPath()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf(versitygwMissingMsg, bin)
	}
	dir := t.TempDir()
	s := &S3Server{
		AccessKey: "barnacle" + randomHex(6),
		SecretKey: randomHex(20),
		Root:      filepath.Join(dir, "data"),
		t:         t,
		bin:       bin,
		addr:      fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		logPath:   filepath.Join(dir, "versitygw.log"),
	}
	s.Endpoint = "http://" + s.addr
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		t.Fatalf("create versitygw root: %v", err)
	}
	t.Cleanup(s.Stop)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	s.Bucket = s.CreateBucket(t, t.Name())
	return s
}

// Start starts the server (again) on the same port and directory and blocks
// until it accepts connections. It does nothing when it is running.
func (s *S3Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open versitygw log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(s.bin, "--port", s.addr, "--region", S3Region, "--quiet", "posix", s.Root)
	// The secrets go through the environment, not the command line that
	// ps shows.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The server dies with the test process, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw (%s): %w; rebuild it with `make versitygw`", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			return fmt.Errorf("versitygw exited at start: %s", s.logTail())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("versitygw did not listen on %s within 30s: %s", s.addr, s.logTail())
		}
	}
	s.cmd, s.done = cmd, done
	return nil
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s) and waits for
// it to exit. The data is kept for Start. It does nothing when the server
// is not running.
func (s *S3Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd, s.done = nil, nil
}

// Running reports whether the server process is up.
func (s *S3Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

func (s *S3Server) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return "(no log)"
	}
	return Tail(string(b), 20)
}

var bucketUnsafe = regexp.MustCompile(`[^a-z0-9-]+`)

// CreateBucket creates a bucket whose name is derived from base (lower-cased,
// other characters replaced, a random suffix added) and returns the name.
func (s *S3Server) CreateBucket(t testing.TB, base string) string {
	t.Helper()
	name := strings.Trim(bucketUnsafe.ReplaceAllString(strings.ToLower(base), "-"), "-")
	if len(name) > 40 {
		name = name[:40]
	}
	name = strings.Trim(name, "-")
	if name == "" {
		name = "bucket"
	}
	name += "-" + randomHex(4)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client(t).MakeBucket(ctx, name, minio.MakeBucketOptions{Region: S3Region}); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	return name
}

// Client returns a minio-go client with the root credentials, for tests
// that look at the bucket behind the backend's back.
func (s *S3Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	u, _ := url.Parse(s.Endpoint)
	c, err := minio.New(u.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region:       S3Region,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatalf("s3 client: %v", err)
	}
	return c
}

// URL returns the archive URL of prefix in the test bucket, with the
// endpoint, region and path style the server needs; extra is appended to
// the query ("part-size=5MB", or "" for none).
func (s *S3Server) URL(prefix, extra string) string {
	u := fmt.Sprintf("s3://%s/%s?endpoint=%s&region=%s&path-style=true",
		s.Bucket, prefix, url.QueryEscape(s.Endpoint), S3Region)
	if extra != "" {
		u += "&" + extra
	}
	return u
}

// Env returns the environment variables that give a barnacle process the
// server's credentials through the standard AWS variables.
func (s *S3Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_SESSION_TOKEN=",
		"AWS_REGION=" + S3Region,
	}
}

// SetEnv sets Env in this process for the rest of the test (t.Setenv, so
// not in parallel tests).
func (s *S3Server) SetEnv(t testing.TB) {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// ObjectPath returns the file that holds object key of bucket on disk.
func (s *S3Server) ObjectPath(bucket, key string) string {
	return filepath.Join(s.Root, bucket, filepath.FromSlash(key))
}
