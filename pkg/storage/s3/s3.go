// Package s3 is the storage.Backend for S3-compatible object storage (AWS
// S3, MinIO, versitygw, Ceph RGW, ...), opened from an archive URL of the
// form
//
//	s3://bucket/prefix?endpoint=http://127.0.0.1:7070&region=us-east-1&path-style=true
//
// (see Open for every query parameter). Objects are stored under
// "<prefix>/<name>". Credentials never come from the URL: they come from the
// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
// or MINIO_ROOT_USER/MINIO_ROOT_PASSWORD), the shared credentials file
// (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile AWS_PROFILE),
// or the IAM role of the instance or container, in that order.
//
// # Checksums
//
// Every object carries its checksum (storage.Algorithm: "blake3:<hex>", or
// "<hex>" for SHA-256) in the user metadata x-amz-meta-barnacle-sha256,
// named after the only algorithm of the first versions, set in the same
// request that creates the
// object (PUT or CreateMultipartUpload), so the bytes and their checksum
// appear together. Get verifies the bytes against it at EOF. When Put is
// given the digest (PutOptions.Checksum) the data streams straight to the
// final name and the upload is aborted, storing nothing, if the bytes turn
// out not to match. When the digest is unknown and the data fits in one
// part, Put hashes the buffered part before sending it. When it is unknown
// and larger than one part, S3 offers no way to attach metadata after the
// upload has started, so Put streams the data to a hidden temporary object
// (under "<prefix>/.barnacle-tmp/") while hashing it, then has the server
// copy it (UploadPartCopy, at most 5 GiB per part) into a multipart upload
// of the final name that carries the digest, and deletes the temporary
// object. That costs a server-side copy but no local disk, which matters
// because the agent runs beside the database it backs up. Callers that know
// the digest in advance should pass it.
//
// # Write-if-absent
//
// PutOptions.IfAbsent sends "If-None-Match: *" with the request that makes
// the object visible (the single PUT or CompleteMultipartUpload); the server
// decides atomically and answers 412 Precondition Failed when the name is
// taken, which Put reports as storage.ErrExist. AWS S3 (since August 2024),
// MinIO and versitygw (v1.8.0, checked under its object publish lock) honour
// it. A server that ignores the header silently turns IfAbsent into an
// overwrite; barnacle's write-once names (WAL segments, backup files) are
// written with the same bytes by every writer in normal operation, so the
// damage is limited to the alarm for different bytes being missed, but such
// a server is not supported. Because a request whose response was lost is
// retried, every write also stores a random token in
// x-amz-meta-barnacle-upload; a 412 for an object carrying our own token is
// our own earlier attempt, and Put succeeds.
//
// # Memory and retries
//
// Put holds at most Concurrency buffers of PartSize bytes. Every request is
// retried with exponential backoff and jitter by minio-go (network errors,
// 5xx, throttling), up to MaxRetries attempts, and every wait ends with ctx.
// A multipart upload that fails or is cancelled is aborted; one left behind
// by a killed process is invisible (List, Stat and Get never see it) and
// Cleanup aborts it later (an AbortIncompleteMultipartUpload lifecycle rule
// on the bucket does the same).
//
// Other modules may import this package, but its API is not stable.
package s3

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/encrypt"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/barnacle-pg/barnacle/pkg/redact"
	"github.com/barnacle-pg/barnacle/pkg/storage"
)

const (
	// MinPartSize is the smallest part S3 accepts, except for the last one.
	MinPartSize = 5 << 20
	// MaxPartSize is the largest part S3 accepts.
	MaxPartSize = 5 << 30
	// DefaultPartSize is the part size when Options.PartSize is zero: a
	// 16 MiB WAL segment goes up in one request.
	DefaultPartSize = 16 << 20
	// DefaultConcurrency is the number of parts uploaded at once when
	// Options.Concurrency is zero.
	DefaultConcurrency = 4
	// DefaultTempMaxAge is how old a temporary object or an unfinished
	// multipart upload must be before Cleanup removes it; far above the
	// time any single Put takes, so Cleanup never races a live one.
	DefaultTempMaxAge = 24 * time.Hour

	// metaSHA256 and metaUpload are user metadata keys; S3 sends them as
	// x-amz-meta-barnacle-sha256 and x-amz-meta-barnacle-upload.
	metaSHA256 = "Barnacle-Sha256"
	metaUpload = "Barnacle-Upload"
	// tempDir holds the temporary objects of Puts with an unknown digest.
	// storage.CheckName forbids components starting with ".", so it never
	// collides with an object and List skips it by name alone.
	tempDir = ".barnacle-tmp/"
	// headConcurrency bounds the HEAD requests List makes to read digests.
	headConcurrency = 16
)

// Options configures New.
type Options struct {
	// Endpoint is the server's base URL, "http://host:port" or
	// "https://host"; empty means AWS S3 (https://s3.amazonaws.com).
	Endpoint string
	// Bucket must exist; New does not create it.
	Bucket string
	// Prefix is prepended, with a "/", to every object name; it may be
	// empty and must pass storage.CheckName otherwise.
	Prefix string
	// Region is the bucket's region; empty lets the client ask the server.
	Region string
	// PathStyle addresses the bucket in the path (http://host/bucket/key)
	// instead of the host name, as MinIO and versitygw need.
	PathStyle bool
	// PartSize is the multipart part size, MinPartSize to MaxPartSize;
	// zero means DefaultPartSize.
	PartSize int64
	// Concurrency is how many parts one Put uploads at once; zero means
	// DefaultConcurrency. A Put holds Concurrency×PartSize bytes at most.
	Concurrency int
	// SSE is the server-side encryption: "", "AES256" or "aws:kms".
	SSE string
	// SSEKMSKeyID is the KMS key for SSE "aws:kms"; empty means the
	// bucket's default key.
	SSEKMSKeyID string
	// CAFile is a PEM file of extra CA certificates trusted for an https
	// endpoint, in addition to the system's.
	CAFile string
	// MaxRetries is how many times a request is tried before its error is
	// returned; zero means minio-go's default (10).
	MaxRetries int
	// TempMaxAge is Cleanup's age threshold; zero means DefaultTempMaxAge.
	TempMaxAge time.Duration
	// Credentials overrides the default credential chain (environment,
	// shared credentials file, IAM); tests use it.
	Credentials *credentials.Credentials
}

// Backend stores objects in an S3 bucket. It is safe for concurrent use,
// also by many processes on many hosts.
type Backend struct {
	client     *minio.Client
	core       minio.Core
	bucket     string
	prefix     string // "" or ending in "/"
	url        string
	partSize   int64
	conc       int
	sse        encrypt.ServerSide
	tempMaxAge time.Duration
	// listMetadata asks listings for user metadata (?metadata=true, a
	// MinIO extension), which saves List a HEAD per object where it works.
	listMetadata bool
	bufs         sync.Pool
	stats        stats
}

var (
	_ storage.Backend = (*Backend)(nil)
	_ storage.Cleaner = (*Backend)(nil)
)

// queryParams are the query parameters Open accepts, in the order its
// error message lists them.
var queryParams = []string{"endpoint", "region", "path-style", "part-size", "concurrency", "sse", "sse-kms-key-id", "ca-file"}

// Open returns a Backend for an s3://bucket/prefix?query URL. The query
// parameters are endpoint, region, path-style (true or false), part-size
// (bytes with an optional unit B, KB, MB, GB, KiB, MiB or GiB, where KB and
// KiB both mean 1024 bytes, at least 5MB), concurrency, sse (AES256 or
// aws:kms), sse-kms-key-id and ca-file; see Options. An unknown parameter,
// user information (credentials never go in the URL) or a fragment is an
// error naming the problem; errors never repeat a secret.
func Open(ctx context.Context, u *url.URL) (*Backend, error) {
	opts, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	return New(ctx, opts)
}

func parseURL(u *url.URL) (Options, error) {
	shown := redact.URL(u.String())
	var opts Options
	switch {
	case u.Scheme != "s3":
		return opts, fmt.Errorf("s3: archive URL %q: scheme is %q, not s3", shown, u.Scheme)
	case u.User != nil:
		return opts, fmt.Errorf("s3: archive URL %q has user information; credentials never go in the URL: "+
			"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, use a shared credentials file, or an IAM role", shown)
	case u.Opaque != "":
		return opts, fmt.Errorf("s3: archive URL %q: use s3://bucket/prefix", shown)
	case u.Host == "":
		return opts, fmt.Errorf("s3: archive URL %q names no bucket: use s3://bucket/prefix", shown)
	case u.Fragment != "":
		return opts, fmt.Errorf("s3: archive URL %q has a fragment, which s3 URLs do not take", shown)
	}
	opts.Bucket = u.Host
	opts.Prefix = strings.Trim(u.Path, "/")
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return opts, fmt.Errorf("s3: archive URL %q: parse query: %w", shown, err)
	}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range q {
			if !yield(k) {
				return
			}
		}
	}) {
		if !slices.Contains(queryParams, k) {
			return opts, fmt.Errorf("s3: archive URL %q: unknown query parameter %q; known: %s", shown, k, strings.Join(queryParams, ", "))
		}
		if len(q[k]) != 1 {
			return opts, fmt.Errorf("s3: archive URL %q: query parameter %q given %d times", shown, k, len(q[k]))
		}
	}
	opts.Endpoint = q.Get("endpoint")
	if err := checkEndpoint(opts.Endpoint); err != nil {
		return opts, fmt.Errorf("s3: archive URL %q: %w", shown, err)
	}
	opts.Region = q.Get("region")
	opts.SSE = q.Get("sse")
	opts.SSEKMSKeyID = q.Get("sse-kms-key-id")
	opts.CAFile = q.Get("ca-file")
	if v := q.Get("path-style"); v != "" {
		if opts.PathStyle, err = strconv.ParseBool(v); err != nil {
			return opts, fmt.Errorf("s3: archive URL %q: path-style %q is not true or false", shown, v)
		}
	}
	if v := q.Get("part-size"); v != "" {
		if opts.PartSize, err = parseSize(v); err != nil {
			return opts, fmt.Errorf("s3: archive URL %q: part-size: %w", shown, err)
		}
	}
	if v := q.Get("concurrency"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return opts, fmt.Errorf("s3: archive URL %q: concurrency %q is not a positive integer", shown, v)
		}
		opts.Concurrency = n
	}
	return opts, nil
}

// checkEndpoint accepts "" or an http:// or https:// URL of a scheme and a
// host only; its errors show the endpoint redacted.
func checkEndpoint(ep string) error {
	if ep == "" {
		return nil
	}
	eu, err := url.Parse(ep)
	switch {
	case err != nil || eu.Host == "" || (eu.Scheme != "http" && eu.Scheme != "https"):
		return fmt.Errorf("endpoint %q is not an http:// or https:// URL", redact.URL(ep))
	case eu.User != nil:
		return fmt.Errorf("endpoint %q has user information; credentials never go in the URL: "+
			"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, use a shared credentials file, or an IAM role", redact.URL(ep))
	case strings.Trim(eu.Path, "/") != "" || eu.RawQuery != "" || eu.Fragment != "":
		return fmt.Errorf("endpoint %q must be a scheme and host only", redact.URL(ep))
	}
	return nil
}

// CheckURL reports what Open would refuse in u without opening anything:
// no network, no credentials. Its errors never repeat a secret.
func CheckURL(u *url.URL) error {
	_, err := parseURL(u)
	return err
}

// parseSize parses "16MB", "16MiB", "5242880" or "1GB"; K, M and G are
// powers of 1024 whether or not an "i" follows, as in PostgreSQL.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}}
	num, mult := s, int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size such as 16MB", s)
	}
	return n * mult, nil
}

// New returns a Backend for opts. It checks the options and that some
// credentials are available, and makes no request to the bucket, so an
// unreachable server does not stop a process from starting; ctx bounds the
// credential lookup (which talks to the IAM endpoint when it gets that far).
func New(ctx context.Context, opts Options) (*Backend, error) {
	if opts.Bucket == "" {
		return nil, errors.New("s3: no bucket given")
	}
	if opts.Prefix != "" {
		if err := storage.CheckName(opts.Prefix); err != nil {
			return nil, fmt.Errorf("s3: prefix: %w", err)
		}
	}
	partSize := opts.PartSize
	switch {
	case partSize == 0:
		partSize = DefaultPartSize
	case partSize < MinPartSize || partSize > MaxPartSize:
		return nil, fmt.Errorf("s3: part size %d is outside S3's limits (5 MiB to 5 GiB)", partSize)
	}
	conc := opts.Concurrency
	switch {
	case conc == 0:
		conc = DefaultConcurrency
	case conc < 0:
		return nil, fmt.Errorf("s3: concurrency %d is not positive", conc)
	}
	var sse encrypt.ServerSide
	switch opts.SSE {
	case "":
		if opts.SSEKMSKeyID != "" {
			return nil, errors.New("s3: sse-kms-key-id needs sse=aws:kms")
		}
	case "AES256":
		if opts.SSEKMSKeyID != "" {
			return nil, errors.New("s3: sse-kms-key-id needs sse=aws:kms, not AES256")
		}
		sse = encrypt.NewSSE()
	case "aws:kms":
		var err error
		if sse, err = encrypt.NewSSEKMS(opts.SSEKMSKeyID, nil); err != nil {
			return nil, fmt.Errorf("s3: sse: %w", err)
		}
	default:
		return nil, fmt.Errorf("s3: sse %q is not AES256 or aws:kms", opts.SSE)
	}

	host, secure := "s3.amazonaws.com", true
	if opts.Endpoint != "" {
		if err := checkEndpoint(opts.Endpoint); err != nil {
			return nil, fmt.Errorf("s3: %w", err)
		}
		eu, _ := url.Parse(opts.Endpoint)
		host, secure = eu.Host, eu.Scheme == "https"
	}
	transport, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("s3: build transport: %w", err)
	}
	if opts.CAFile != "" {
		if !secure {
			return nil, fmt.Errorf("s3: ca-file given for the plain http endpoint %s", redact.URL(opts.Endpoint))
		}
		pool, err := caPool(opts.CAFile)
		if err != nil {
			return nil, err
		}
		if transport.TLSClientConfig == nil {
			transport.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		transport.TLSClientConfig.RootCAs = pool
	}

	creds := opts.Credentials
	if creds == nil {
		creds = credentials.NewChainCredentials(defaultProviders())
	}
	v, err := creds.GetWithContext(&credentials.CredContext{Client: &http.Client{Transport: transport, Timeout: 10 * time.Second}})
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("s3: get credentials: %w", err)
	}
	if v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return nil, errors.New("s3: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY " +
			"(and AWS_SESSION_TOKEN for temporary ones), or put them in the shared credentials file " +
			"(AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile AWS_PROFILE), or run with an IAM role")
	}

	lookup := minio.BucketLookupAuto
	if opts.PathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(host, &minio.Options{
		Creds:        creds,
		Secure:       secure,
		Transport:    transport,
		Region:       opts.Region,
		BucketLookup: lookup,
		MaxRetries:   opts.MaxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3: create client: %w", err)
	}
	maxAge := opts.TempMaxAge
	if maxAge <= 0 {
		maxAge = DefaultTempMaxAge
	}
	b := &Backend{
		client:     client,
		core:       minio.Core{Client: client},
		bucket:     opts.Bucket,
		url:        buildURL(opts),
		partSize:   partSize,
		conc:       conc,
		sse:        sse,
		tempMaxAge: maxAge,
	}
	ep := client.EndpointURL()
	b.listMetadata = !s3utils.IsAmazonEndpoint(*ep) && !s3utils.IsGoogleEndpoint(*ep)
	if opts.Prefix != "" {
		b.prefix = opts.Prefix + "/"
	}
	b.bufs.New = func() any {
		buf := make([]byte, b.partSize)
		return &buf
	}
	return b, nil
}

// defaultProviders is the credential chain; a variable so that tests can
// leave out IAM, which would query the instance metadata address.
var defaultProviders = func() []credentials.Provider {
	return []credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.EnvMinio{},
		&credentials.FileAWSCredentials{},
		&credentials.IAM{},
	}
}

func caPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("s3: read ca-file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("s3: ca-file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// buildURL renders opts as the s3:// URL that Open would accept. It holds
// no secret: credentials never go in it.
func buildURL(opts Options) string {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("endpoint", opts.Endpoint)
	set("region", opts.Region)
	if opts.PathStyle {
		q.Set("path-style", "true")
	}
	if opts.PartSize != 0 {
		q.Set("part-size", strconv.FormatInt(opts.PartSize, 10))
	}
	if opts.Concurrency != 0 {
		q.Set("concurrency", strconv.Itoa(opts.Concurrency))
	}
	set("sse", opts.SSE)
	set("sse-kms-key-id", opts.SSEKMSKeyID)
	set("ca-file", opts.CAFile)
	u := url.URL{Scheme: "s3", Host: opts.Bucket, RawQuery: q.Encode()}
	if opts.Prefix != "" {
		u.Path = "/" + opts.Prefix
	}
	return u.String()
}

// URL returns the s3:// URL of the archive, with every option that was set.
// It holds no secret.
func (b *Backend) URL() string { return b.url }

// Bucket returns the bucket name.
func (b *Backend) Bucket() string { return b.bucket }

// Prefix returns the key prefix, "" or ending in "/".
func (b *Backend) Prefix() string { return b.prefix }

func (b *Backend) key(name string) string { return b.prefix + name }

func randomHex() string {
	var p [12]byte
	_, _ = rand.Read(p[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(p[:])
}

// errorCode returns the S3 error code of err ("NoSuchKey", ...), or "".
func errorCode(err error) string {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return er.Code
	}
	return ""
}

// isNotExist reports whether err says the object (or key) is missing.
func isNotExist(err error) bool {
	var er minio.ErrorResponse
	if !errors.As(err, &er) {
		return false
	}
	switch er.Code {
	case "NoSuchKey", "NoSuchObject", "NotFound":
		return true
	}
	return er.StatusCode == http.StatusNotFound && er.Code != "NoSuchBucket"
}

// ctxErr prefers ctx's error to err once ctx has ended, so that callers
// can match context.Canceled whatever the client made of the cancellation.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}
