package coordinator

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
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

// NewClient connects to etcd with TLS and authentication as configured. It
// does not wait for the cluster to answer: the caller's requests do.
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
			cert, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("load etcd client certificate (store-cert-file, store-key): %w", err)
			}
			tlsCfg.Certificates = []tls.Certificate{cert}
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
