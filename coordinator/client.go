package coordinator

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/barnacle-pg/barnacle/pkg/config"
)

// ClientOptions configure the etcd client. File names, not secrets, are
// passed in; the files are read here.
type ClientOptions struct {
	Endpoints    []string
	CertFile     string
	KeyFile      string
	CAFile       string
	Username     string
	PasswordFile string
	DialTimeout  time.Duration
}

// ClientOptionsFor takes the etcd endpoints, TLS files and credentials
// from the configuration's store-* keys.
func ClientOptionsFor(cfg config.Config) ClientOptions {
	return ClientOptions{
		Endpoints: cfg.StoreEndpoints, CertFile: cfg.StoreCertFile, KeyFile: cfg.StoreKeyFile,
		CAFile: cfg.StoreCAFile, Username: cfg.StoreUsername, PasswordFile: cfg.StorePasswordFile,
	}
}

// NewClient connects to etcd with TLS and authentication as configured. It
// does not wait for the cluster to answer: the caller's requests do. The
// client certificate and key files are read again when they change (each
// new connection checks), so that a rotated certificate is used without a
// restart; the CA file and the password are read once.
func NewClient(opts ClientOptions) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:            opts.Endpoints,
		DialTimeout:          opts.DialTimeout,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// The etcd client logs every reconnect attempt at warn level through
		// zap; our own logs say what matters (etcd errors, lost leadership).
		Logger: zap.NewNop(),
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if opts.CertFile != "" || opts.CAFile != "" {
		tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if opts.CertFile != "" {
			kp, err := newKeyPairFiles(opts.CertFile, opts.KeyFile)
			if err != nil {
				return nil, err
			}
			tlsCfg.GetClientCertificate = kp.get
		}
		if opts.CAFile != "" {
			pem, err := os.ReadFile(opts.CAFile)
			if err != nil {
				return nil, fmt.Errorf("read etcd CA (store-ca-file): %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("store-ca-file %s holds no PEM certificate", opts.CAFile)
			}
			tlsCfg.RootCAs = pool
		}
		cfg.TLS = tlsCfg
	}
	if opts.Username != "" {
		cfg.Username = opts.Username
		if opts.PasswordFile != "" {
			pw, err := os.ReadFile(opts.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("read etcd password (store-password-file): %w", err)
			}
			cfg.Password = strings.TrimRight(string(pw), "\r\n")
		}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(opts.Endpoints, ","), err)
	}
	return cli, nil
}

// keyPairFiles serves the client certificate from its files, loading them
// again when either file's size or modification time changes: cert-manager
// and Kubernetes secrets rotate them in place. A pair that fails to load
// (the two files caught half-way through a rotation) leaves the previous
// one in use until the files are consistent again.
type keyPairFiles struct {
	certFile, keyFile string

	mu    sync.Mutex
	cert  *tls.Certificate
	stamp string
}

func newKeyPairFiles(certFile, keyFile string) (*keyPairFiles, error) {
	kp := &keyPairFiles{certFile: certFile, keyFile: keyFile}
	if err := kp.load(); err != nil {
		return nil, err
	}
	return kp, nil
}

// stamp identifies the files' current versions.
func (kp *keyPairFiles) currentStamp() string {
	var b strings.Builder
	for _, f := range []string{kp.certFile, kp.keyFile} {
		if fi, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%d/%d;", fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return b.String()
}

func (kp *keyPairFiles) load() error {
	stamp := kp.currentStamp()
	cert, err := tls.LoadX509KeyPair(kp.certFile, kp.keyFile)
	if err != nil {
		return fmt.Errorf("load etcd client certificate (store-cert-file, store-key): %w", err)
	}
	kp.cert, kp.stamp = &cert, stamp
	return nil
}

// get is tls.Config.GetClientCertificate.
func (kp *keyPairFiles) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.currentStamp() != kp.stamp {
		_ = kp.load() // on failure the previous pair stays
	}
	return kp.cert, nil
}
