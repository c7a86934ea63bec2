package testenv

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// KubeAPIServerVersion is the kube-apiserver the harness runs; `make
// kube-apiserver` (scripts/kube-apiserver.sh) builds it into
// KubeAPIServerPath's directory. Keep the two in step.
const KubeAPIServerVersion = "v1.37.2"

// KubeAPIServerPath returns where the kube-apiserver binary is looked for:
// env BARNACLE_KUBE_APISERVER, else <user cache
// dir>/barnacle/kube-apiserver-<version>/kube-apiserver.
func KubeAPIServerPath() string {
	return cachedBinary("BARNACLE_KUBE_APISERVER", "kube-apiserver", KubeAPIServerVersion)
}

// KubeAPIServer is a real kube-apiserver on a free 127.0.0.1 port that
// stores in the test's etcd (under its own prefix), authorizes with RBAC
// and signs service account tokens. No controller manager or kubelet runs:
// pods stay where the test puts them.
type KubeAPIServer struct {
	// URL is https://127.0.0.1:<port>; its certificate is self-signed.
	URL string
	// AdminToken authenticates as a member of system:masters.
	AdminToken string
}

// StartKubeAPIServer starts kube-apiserver over etcd and stops it in
// t.Cleanup. It fails the test, saying how to build it, when the binary is
// missing.
func StartKubeAPIServer(t testing.TB, etcd *Etcd) *KubeAPIServer {
	t.Helper()
	bin := KubeAPIServerPath()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("kube-apiserver %s (the Kubernetes API server the tests run against) not found at %s: build it with `make kube-apiserver` (or set BARNACLE_KUBE_APISERVER)", KubeAPIServerVersion, bin)
	}
	dir := t.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	saKey := filepath.Join(dir, "sa.key")
	writeFile(t, saKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	s := &KubeAPIServer{AdminToken: hex.EncodeToString(tok)}
	tokens := filepath.Join(dir, "tokens.csv")
	writeFile(t, tokens, []byte(s.AdminToken+",admin,admin,system:masters\n"))
	port := FreePort(t)
	s.URL = fmt.Sprintf("https://127.0.0.1:%d", port)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin,
		"--etcd-servers="+etcd.Endpoints()[0],
		"--etcd-prefix=/kube-"+hex.EncodeToString(tok[:4]),
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir="+filepath.Join(dir, "certs"),
		"--token-auth-file="+tokens,
		"--anonymous-auth=false",
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+saKey,
		"--service-account-signing-key-file="+saKey,
		"--service-cluster-ip-range=10.96.0.0/24",
		// Without a controller manager no namespace gets its "default"
		// service account, which that admission plugin requires of pods.
		"--disable-admission-plugins=ServiceAccount",
	)
	logPath := filepath.Join(dir, "kube-apiserver.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start kube-apiserver: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cancel()
		<-exited
		_ = logf.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("kube-apiserver log (tail):\n%s", Tail(string(data), 40))
		}
	})
	// Ready: /readyz answers ok to the admin (it also waits for the
	// bootstrap RBAC roles).
	cli := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the test server's self-signed certificate
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case <-exited:
			data, _ := os.ReadFile(logPath)
			t.Fatalf("kube-apiserver exited at start:\n%s", Tail(string(data), 40))
		default:
		}
		req, _ := http.NewRequest(http.MethodGet, s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.AdminToken)
		if resp, err := cli.Do(req); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(logPath)
			t.Fatalf("kube-apiserver not ready within 90s:\n%s", Tail(string(data), 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
