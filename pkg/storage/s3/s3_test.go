package s3_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/redact"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/s3"
	"github.com/barnacle-pg/barnacle/pkg/storage/storagetest"
)

func TestMain(m *testing.M) {
	// Tests must never reach the instance metadata address.
	defer s3.SetNoIAM()()
	goleak.VerifyTestMain(m,
		// minio-go's HTTP transport keeps idle connections with their
		// reader and writer goroutines.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// server is shared by the tests of this package: starting versitygw takes
// a moment, and every test works under its own prefix.
var server struct {
	s *testenv.S3Server
}

// open returns a backend on a fresh prefix of the shared server.
func open(t *testing.T, extra string) *s3.Backend {
	t.Helper()
	s := shared(t)
	prefix := strings.NewReplacer("/", "-", " ", "-", "=", "-").Replace(t.Name()) + "-" + randomHex(4)
	u, err := url.Parse(s.URL(prefix, extra))
	require.NoError(t, err)
	b, err := s3.Open(t.Context(), u)
	require.NoError(t, err)
	return b
}

func shared(t *testing.T) *testenv.S3Server {
	t.Helper()
	if server.s == nil {
		t.Fatal("no shared server: call startShared in the top-level test")
	}
	return server.s
}

// startShared starts the server for one top-level test and its subtests.
func startShared(t *testing.T) *testenv.S3Server {
	t.Helper()
	s := testenv.StartS3(t)
	s.SetEnv(t)
	server.s = s
	t.Cleanup(func() { server.s = nil })
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return hex.EncodeToString(b)
}

// sum is the checksum Put stores when it is given none.
func sum(b []byte) string { return storage.ChecksumOf(storage.DefaultAlgorithm, b) }

// sha256Sum is a checksum of the older form, which callers may still give.
func sha256Sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{byte(seed)}).Read(b) // never fails
	return b
}

func TestS3(t *testing.T) {
	s := startShared(t)

	t.Run("Conformance", func(t *testing.T) {
		storagetest.Run(t, func(t *testing.T) storage.Backend { return open(t, "part-size=5MB") })
	})

	t.Run("MultipartRoundTrip", func(t *testing.T) {
		// 12 MB in 5 MB parts: three parts, the last one short.
		data := randomBytes(12<<20, 1)
		cases := []struct {
			name string
			opts storage.PutOptions
		}{
			{"digest given", storage.PutOptions{Checksum: sum(data)}},
			{"digest given if absent", storage.PutOptions{Checksum: sum(data), IfAbsent: true}},
			{"sha256 digest given", storage.PutOptions{Checksum: sha256Sum(data)}},
			{"digest unknown", storage.PutOptions{}},
			{"digest unknown if absent", storage.PutOptions{IfAbsent: true}},
		}
		b := open(t, "part-size=5MB&concurrency=2")
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				name := fmt.Sprintf("big/%d", i)
				before := b.Stats()
				require.NoError(t, b.Put(t.Context(), name, bytes.NewReader(data), tc.opts))
				after := b.Stats()
				assert.GreaterOrEqual(t, after.Parts-before.Parts, uint64(3), "parts uploaded")
				got, err := storage.ReadAll(t.Context(), b, name)
				require.NoError(t, err)
				require.True(t, bytes.Equal(data, got), "read back %d bytes", len(got))
				info, err := b.Stat(t.Context(), name)
				require.NoError(t, err)
				assert.Equal(t, int64(len(data)), info.Size)
				want := tc.opts.Checksum
				if want == "" {
					want = sum(data)
				}
				assert.Equal(t, want, info.Checksum)
				if tc.opts.IfAbsent {
					err := b.Put(t.Context(), name, bytes.NewReader(data), tc.opts)
					require.ErrorIs(t, err, storage.ErrExist)
				}
			})
		}
		t.Run("wrong digest stores nothing", func(t *testing.T) {
			err := b.Put(t.Context(), "big/wrong", bytes.NewReader(data), storage.PutOptions{Checksum: sum([]byte("other"))})
			require.ErrorIs(t, err, storage.ErrChecksum)
			_, err = b.Stat(t.Context(), "big/wrong")
			require.ErrorIs(t, err, storage.ErrNotExist)
		})
		t.Run("exactly one part", func(t *testing.T) {
			part := data[:5<<20]
			require.NoError(t, b.Put(t.Context(), "big/part", bytes.NewReader(part), storage.PutOptions{}))
			got, err := storage.ReadAll(t.Context(), b, "big/part")
			require.NoError(t, err)
			require.True(t, bytes.Equal(part, got))
		})
		infos, err := b.List(t.Context(), "big/")
		require.NoError(t, err)
		assert.Len(t, infos, len(cases)+1, "no temporary objects listed")
		requireNoUploads(t, s, b)
	})

	t.Run("CancelledMultipartLeavesNothing", func(t *testing.T) {
		// An agent killed mid-upload: the context ends after two parts went
		// up. Nothing may be visible, and the upload must be aborted.
		b := open(t, "part-size=5MB&concurrency=2")
		data := randomBytes(40<<20, 2)
		for _, opts := range []storage.PutOptions{{}, {Checksum: sum([]byte("x"))}, {IfAbsent: true}} {
			ctx, cancel := context.WithCancel(t.Context())
			r := &cancelAfter{r: bytes.NewReader(data), after: 12 << 20, cancel: cancel}
			err := b.Put(ctx, "wals/000000010000000000000001", r, opts)
			cancel()
			require.ErrorIs(t, err, context.Canceled, "opts %+v", opts)
			_, err = b.Stat(t.Context(), "wals/000000010000000000000001")
			require.ErrorIs(t, err, storage.ErrNotExist)
			infos, err := b.List(t.Context(), "")
			require.NoError(t, err)
			assert.Empty(t, infos)
		}
		requireNoUploads(t, s, b)
		objs := s.Client(t).ListObjects(t.Context(), s.Bucket, minio.ListObjectsOptions{Prefix: b.Prefix(), Recursive: true})
		for o := range objs {
			require.NoError(t, o.Err)
			t.Errorf("object %s left behind", o.Key)
		}
	})

	t.Run("IfAbsentRace", func(t *testing.T) {
		b := open(t, "part-size=5MB&concurrency=1")
		const writers = 8
		cases := []struct {
			name string
			size int  // bytes per writer
			hash bool // give the digest
		}{
			{"single put", 100, false},
			{"single put with digest", 100, true},
			{"multipart with digest", 6 << 20, true},
			{"multipart via server copy", 6 << 20, false},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				name := "race/" + strings.ReplaceAll(tc.name, " ", "-")
				datas := make([][]byte, writers)
				for i := range datas {
					datas[i] = randomBytes(tc.size, uint64(10+i))
				}
				var wins, winner atomic.Int32
				var g errgroup.Group
				for i := range writers {
					g.Go(func() error {
						opts := storage.PutOptions{IfAbsent: true}
						if tc.hash {
							opts.Checksum = sum(datas[i])
						}
						err := b.Put(t.Context(), name, bytes.NewReader(datas[i]), opts)
						switch {
						case err == nil:
							wins.Add(1)
							winner.Store(int32(i))
							return nil
						case errors.Is(err, storage.ErrExist):
							return nil
						default:
							return err
						}
					})
				}
				require.NoError(t, g.Wait())
				require.Equal(t, int32(1), wins.Load(), "writers that won")
				got, err := storage.ReadAll(t.Context(), b, name)
				require.NoError(t, err)
				require.True(t, bytes.Equal(datas[winner.Load()], got), "the winner's bytes are stored")
			})
		}
		requireNoUploads(t, s, b)
	})

	t.Run("CorruptedOnServer", func(t *testing.T) {
		b := open(t, "")
		data := randomBytes(100<<10, 3)
		require.NoError(t, b.Put(t.Context(), "obj", bytes.NewReader(data), storage.PutOptions{}))
		path := s.ObjectPath(s.Bucket, b.Prefix()+"obj")
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		require.NoError(t, err, "object file %s", path)
		_, err = f.WriteAt([]byte{data[1000] ^ 0xff}, 1000)
		require.NoError(t, err)
		require.NoError(t, f.Close())
		_, err = storage.ReadAll(t.Context(), b, "obj")
		var cerr *storage.ChecksumError
		require.ErrorAs(t, err, &cerr)
		assert.Equal(t, sum(data), cerr.Want)
	})

	t.Run("NoStoredChecksum", func(t *testing.T) {
		b := open(t, "")
		_, err := s.Client(t).PutObject(t.Context(), s.Bucket, b.Prefix()+"foreign", strings.NewReader("x"), 1, minio.PutObjectOptions{})
		require.NoError(t, err)
		_, err = b.Get(t.Context(), "foreign")
		require.ErrorIs(t, err, storage.ErrNoChecksum)
		info, err := b.Stat(t.Context(), "foreign")
		require.NoError(t, err)
		assert.Empty(t, info.Checksum)
	})

	t.Run("ServerDown", func(t *testing.T) {
		b := open(t, "")
		require.NoError(t, b.Put(t.Context(), "before", strings.NewReader("x"), storage.PutOptions{}))
		s.Stop()
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		start := time.Now()
		_, err := b.Stat(ctx, "before")
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded, "retrying until the context ends")
		assert.Less(t, time.Since(start), 5*time.Second)
		require.NoError(t, s.Start())
		info, err := b.Stat(t.Context(), "before")
		require.NoError(t, err)
		assert.Equal(t, int64(1), info.Size)
	})

	t.Run("Cleanup", func(t *testing.T) {
		b := open(t, "")
		c := minio.Core{Client: s.Client(t)}
		_, err := c.NewMultipartUpload(t.Context(), s.Bucket, b.Prefix()+"abandoned", minio.PutObjectOptions{})
		require.NoError(t, err)
		_, err = s.Client(t).PutObject(t.Context(), s.Bucket, b.Prefix()+".barnacle-tmp/old", strings.NewReader("x"), 1, minio.PutObjectOptions{})
		require.NoError(t, err)
		// With the default age nothing is young enough to go.
		require.NoError(t, b.Cleanup(t.Context()))
		young, err := s3.New(t.Context(), s3.Options{
			Endpoint: s.Endpoint, Bucket: s.Bucket, Prefix: strings.TrimSuffix(b.Prefix(), "/"),
			Region: testenv.S3Region, PathStyle: true, TempMaxAge: time.Nanosecond,
		})
		require.NoError(t, err)
		require.NoError(t, young.Cleanup(t.Context()))
		requireNoUploads(t, s, b)
		for o := range s.Client(t).ListObjects(t.Context(), s.Bucket, minio.ListObjectsOptions{Prefix: b.Prefix(), Recursive: true}) {
			require.NoError(t, o.Err)
			t.Errorf("object %s left behind", o.Key)
		}
	})
}

// requireNoUploads fails when multipart uploads under b's prefix are left.
func requireNoUploads(t *testing.T, s *testenv.S3Server, b *s3.Backend) {
	t.Helper()
	for u := range s.Client(t).ListIncompleteUploads(t.Context(), s.Bucket, b.Prefix(), true) {
		require.NoError(t, u.Err)
		t.Errorf("multipart upload of %s left behind", u.Key)
	}
}

// cancelAfter cancels its context once it has yielded after bytes.
type cancelAfter struct {
	r       io.Reader
	after   int
	yielded int
	cancel  context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.yielded >= c.after {
		c.cancel()
	}
	n, err := c.r.Read(p)
	c.yielded += n
	return n, err
}

func TestOpenURL(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secretexample")
	cases := []struct {
		url  string
		want string // error substring; "" for success
		back string // URL() when it differs from url
	}{
		{url: "s3://bucket/prefix?endpoint=http%3A%2F%2F127.0.0.1%3A7070&path-style=true&region=us-east-1"},
		{url: "s3://bucket?region=eu-west-1"},
		{url: "s3://bucket/a/b/?part-size=16MB&concurrency=8&sse=AES256", back: "s3://bucket/a/b?concurrency=8&part-size=16777216&sse=AES256"},
		{url: "s3://bucket/p?sse=aws:kms&sse-kms-key-id=key-1", back: "s3://bucket/p?sse=aws%3Akms&sse-kms-key-id=key-1"},
		{url: "s3://AKID:mysecretvalue@bucket/p", want: "has user information; credentials never go in the URL"},
		{url: "s3://bucket/p?acl=private", want: `unknown query parameter "acl"; known: endpoint, region, path-style, part-size, concurrency, sse, sse-kms-key-id, ca-file`},
		{url: "s3://bucket/p?region=a&region=b", want: `query parameter "region" given 2 times`},
		{url: "s3:///p", want: "names no bucket"},
		{url: "s3://bucket/p?part-size=1MB", want: "outside S3's limits"},
		{url: "s3://bucket/p?part-size=lots", want: `part-size: "lots" is not a size`},
		{url: "s3://bucket/p?concurrency=0", want: `concurrency "0" is not a positive integer`},
		{url: "s3://bucket/p?path-style=maybe", want: "path-style"},
		{url: "s3://bucket/p?sse=rot13", want: `sse "rot13" is not AES256 or aws:kms`},
		{url: "s3://bucket/p?sse-kms-key-id=k", want: "sse-kms-key-id needs sse=aws:kms"},
		{url: "s3://bucket/p?endpoint=ftp://x", want: "is not an http:// or https:// URL"},
		{url: "s3://bucket/p?endpoint=http://u:mysecretvalue@x", want: `endpoint "http://REDACTED@x" has user information; credentials never go in the URL`},
		// A secret pasted into the URL is refused and never repeated.
		{url: "s3://bucket/p?region=r&secret_key=mysecretvalue", want: `s3: archive URL "s3://bucket/p?region=r&secret_key=REDACTED": unknown query parameter "secret_key"; known: endpoint,`},
		{url: "s3://bucket/p?endpoint=http://AKID:mysecretvalue@x:9000", want: `archive URL "s3://bucket/p?endpoint=http%3A%2F%2FREDACTED%40x%3A9000": endpoint "http://REDACTED@x:9000" has user information`},
		{url: "s3://AKID:mysecretvalue@bucket/p?aws_secret_access_key=mysecretvalue", want: `archive URL "s3://REDACTED@bucket/p?aws_secret_access_key=REDACTED" has user information`},
		{url: "s3://bucket/p?endpoint=http://x/?token=mysecretvalue", want: `endpoint "http://x/?token=REDACTED" must be a scheme and host only`},
		{url: "s3://bucket/.hidden", want: "prefix"},
		{url: "s3://bucket/p?endpoint=http://x&ca-file=/nonexistent", want: "ca-file given for the plain http endpoint"},
		{url: "s3://bucket/p?endpoint=https://x&ca-file=/nonexistent", want: "read ca-file"},
		{url: "s3://bucket/p#frag", want: "fragment"},
	}
	for _, tc := range cases {
		t.Run(tc.url, func(t *testing.T) {
			u, err := url.Parse(tc.url)
			require.NoError(t, err)
			b, err := s3.Open(t.Context(), u)
			if tc.want != "" {
				require.ErrorContains(t, err, tc.want)
				assert.NotContains(t, err.Error(), "mysecretvalue")
				return
			}
			require.NoError(t, err)
			want := tc.url
			if tc.back != "" {
				want = tc.back
			}
			assert.Equal(t, want, b.URL())
		})
	}
}

// TestQueryParamsShown: every parameter Open accepts holds no secret, and
// redact.URL shows its value; any other parameter's value it hides.
func TestQueryParamsShown(t *testing.T) {
	for _, k := range s3.QueryParams() {
		assert.True(t, redact.SafeParam(k), "redact.URL hides the value of accepted parameter %q; add it to redact's list", k)
	}
}

func TestMissingCredentials(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY",
		"AWS_SESSION_TOKEN", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "AWS_PROFILE"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	u, err := url.Parse("s3://bucket/p?endpoint=http://127.0.0.1:1")
	require.NoError(t, err)
	_, err = s3.Open(t.Context(), u)
	require.ErrorContains(t, err, "s3: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")

	t.Run("shared credentials file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "credentials")
		require.NoError(t, os.WriteFile(file, []byte("[archive]\naws_access_key_id = AKIDFILE\naws_secret_access_key = filesecret\n"), 0o600))
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", file)
		t.Setenv("AWS_PROFILE", "archive")
		_, err := s3.Open(t.Context(), u)
		require.NoError(t, err)
	})
}

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want int64
	}{
		{"5242880", 5 << 20}, {"5MB", 5 << 20}, {"5MiB", 5 << 20}, {"1GB", 1 << 30}, {"64KiB", 64 << 10}, {"100B", 100},
	}
	for _, tc := range cases {
		got, err := s3.ParseSize(tc.in)
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
	for _, bad := range []string{"", "MB", "-5MB", "5TB", "1.5GB"} {
		_, err := s3.ParseSize(bad)
		require.Error(t, err, bad)
	}
}
