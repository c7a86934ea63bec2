package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/kubekeeper"
	"github.com/barnacle-pg/barnacle/pkg/pgaddr"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
)

const autoNS = "stolon"

// fakePods is kubekeeper.PodClient over client-go's fake clientset.
type fakePods struct{ c corev1client.PodsGetter }

func (f fakePods) List(ctx context.Context, ns string, o metav1.ListOptions) (*corev1.PodList, error) {
	return f.c.Pods(ns).List(ctx, o)
}

func (f fakePods) Watch(ctx context.Context, ns string, o metav1.ListOptions) (watch.Interface, error) {
	return f.c.Pods(ns).Watch(ctx, o)
}

func autoPod(name, ip string) *corev1.Pod {
	started := metav1.NewTime(time.Now().Add(-time.Hour))
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: autoNS, Labels: map[string]string{"component": "stolon-keeper"}},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &started},
	}
}

// autoEnv is etcd with Stolon's clusterdata (the fixture: keeper1 is the
// master) whose keepers listen on loopback addresses and were healthy just
// now.
func autoEnv(t *testing.T, cluster string) *testenv.Etcd {
	t.Helper()
	etcd := testenv.StartEtcd(t)
	data, err := os.ReadFile("../pkg/stolon/testdata/clusterdata-initial.raw.json")
	require.NoError(t, err)
	var cd map[string]any
	require.NoError(t, json.Unmarshal(data, &cd))
	addr := map[string]string{"keeper0": "127.0.0.10", "keeper1": "127.0.0.11", "keeper2": "127.0.0.12"}
	for _, db := range cd["dbs"].(map[string]any) {
		m := db.(map[string]any)
		uid := m["spec"].(map[string]any)["keeperUID"].(string)
		m["status"].(map[string]any)["listenAddress"] = addr[uid]
	}
	for _, k := range cd["keepers"].(map[string]any) {
		k.(map[string]any)["status"].(map[string]any)["lastHealthyTime"] = time.Now().UTC().Format(time.RFC3339Nano)
	}
	out, err := json.Marshal(cd)
	require.NoError(t, err)
	etcd.Put(t, stolon.ClusterDataKey(stolon.DefaultStorePrefix, cluster), string(out))
	return etcd
}

// startAuto runs an agent with keeper-uid auto on node n1 against pods;
// extra are more flags, name then value.
func startAuto(t *testing.T, etcd *testenv.Etcd, cluster string, pods corev1client.PodsGetter, extra ...string) (*Agent, *testenv.SyncBuffer) {
	t.Helper()
	if pods != nil {
		old := inCluster
		inCluster = func() (kubekeeper.PodClient, string, error) { return fakePods{pods}, autoNS, nil }
		t.Cleanup(func() { inCluster = old })
	}
	flags := map[string]string{
		"cluster-name": cluster, "store-endpoints": etcd.Endpoints()[0], "keeper-uid": "auto", "node-name": "n1",
		"agent-name": "barnacle-abcde", "archive-url": "file://" + t.TempDir(), "metrics-listen-address": "127.0.0.1:0",
		"lease-ttl": "3s", "standby-slots": "false",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		flags[extra[i]] = extra[i+1]
	}
	cfg, err := config.Load(config.Sources{Env: func(string) (string, bool) { return "", false }, Flags: flags}, config.Needs{Agent: true})
	require.NoError(t, err)
	var out testenv.SyncBuffer
	a, err := New(cfg, hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: &out}), "test")
	require.NoError(t, err)
	runAgent(t, a, &out)
	return a, &out
}

func httpGet(t *testing.T, a *Agent, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + a.listener.Addr().String() + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func agentStatus(t *testing.T, a *Agent) Status {
	t.Helper()
	code, body := httpGet(t, a, "/status")
	var s Status
	if code == http.StatusOK {
		require.NoError(t, json.Unmarshal([]byte(body), &s))
	}
	return s
}

func agentRecord(t *testing.T, etcd *testenv.Etcd, cluster, name string) coordinator.AgentStatus {
	t.Helper()
	snap, err := coordinator.ReadSnapshot(t.Context(), etcd.Client(t), coordinator.NewKeys("barnacle", cluster))
	require.NoError(t, err)
	return snap.Agents[name]
}

// TestKeeperUIDAuto runs an agent with keeper-uid auto against real etcd and
// client-go's fake API: it serves the keeper whose listen address is its
// node's keeper pod's IP, serves none when that pod goes or a second
// keeper shares the node, says why in /readyz, /status, its etcd record
// and barnacle status's report, and serves the keeper again once it is
// alone.
func TestKeeperUIDAuto(t *testing.T) {
	const cluster = "auto"
	etcd := autoEnv(t, cluster)
	cs := fake.NewClientset(autoPod("stolon-keeper-0", "127.0.0.10"))
	a, out := startAuto(t, etcd, cluster, cs.CoreV1())
	name := a.Name()

	testenv.WaitUntil(t, 30*time.Second, "the agent to serve keeper0", func() bool {
		s := agentStatus(t, a)
		return s.KeeperUID == "keeper0" && agentRecord(t, etcd, cluster, name).KeeperUID == "keeper0"
	})
	s := agentStatus(t, a)
	require.NotNil(t, s.KeeperDiscovery)
	assert.Equal(t, "stolon-keeper-0", s.KeeperDiscovery.Pod)
	assert.Equal(t, "pod stolon-keeper-0 on node n1 has IP 127.0.0.10, the listen address of keeper keeper0 (db 662fe529) in clusterdata", s.KeeperDiscovery.Reason)
	assert.Contains(t, out.String(), "serving keeper: keeper=keeper0 pod=stolon-keeper-0 ip=127.0.0.10")
	testenv.WaitUntil(t, 20*time.Second, "/readyz", func() bool { code, _ := httpGet(t, a, "/readyz"); return code == http.StatusOK })
	code, _ := httpGet(t, a, "/metrics")
	assert.Equal(t, http.StatusOK, code)

	// The keeper pod goes: no keeper here.
	pods := cs.CoreV1().Pods(autoNS)
	require.NoError(t, pods.Delete(t.Context(), "stolon-keeper-0", metav1.DeleteOptions{}))
	noPod := `no running pod on node n1 matches the label selector "component=stolon-keeper" (keeper-pod-selector)`
	testenv.WaitUntil(t, 30*time.Second, "the agent to serve none", func() bool {
		r := agentRecord(t, etcd, cluster, name)
		return agentStatus(t, a).KeeperUID == "" && r.Name == name && r.KeeperUID == "" && r.KeeperDiscovery == noPod
	})
	code, body := httpGet(t, a, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "not ready: keeper-uid auto serves no keeper: "+noPod+"\n", body)
	report, err := coordinator.ReadReport(t.Context(), etcd.Client(t), stolon.DefaultStorePrefix, cluster, coordinator.NewKeys("barnacle", cluster))
	require.NoError(t, err)
	assert.Contains(t, report.Problems, "agent barnacle-abcde (keeper-uid auto) serves no keeper: "+noPod)
	assert.Contains(t, out.String(), "switching keeper: from=keeper0 to=\"\"")

	// Two keepers on the node: serve neither.
	_, err = pods.Create(t.Context(), autoPod("stolon-keeper-0", "127.0.0.10"), metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = pods.Create(t.Context(), autoPod("stolon-keeper-1", "127.0.0.11"), metav1.CreateOptions{})
	require.NoError(t, err)
	testenv.WaitUntil(t, 30*time.Second, "several keepers to be reported", func() bool {
		return strings.HasPrefix(agentRecord(t, etcd, cluster, name).KeeperDiscovery, "several keepers on node n1")
	})
	assert.Equal(t, "", agentStatus(t, a).KeeperUID)

	// keeper1 leaves: keeper0 alone again.
	require.NoError(t, pods.Delete(t.Context(), "stolon-keeper-1", metav1.DeleteOptions{}))
	testenv.WaitUntil(t, 30*time.Second, "the agent to serve keeper0 again", func() bool {
		return agentRecord(t, etcd, cluster, name).KeeperUID == "keeper0"
	})
}

// TestKeeperUIDAutoForbidden: without RBAC the agent runs, serves no
// keeper, and names the missing verb and resource everywhere. Its pg-host
// and pg-port (this node's keeper's PostgreSQL) are not taken for the
// master's address, as they would be for an agent without a keeper-uid.
func TestKeeperUIDAutoForbidden(t *testing.T) {
	const cluster = "autoforbidden"
	etcd := autoEnv(t, cluster)
	cs := fake.NewClientset(autoPod("stolon-keeper-0", "127.0.0.10"))
	cs.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "",
			errors.New(`User "system:serviceaccount:stolon:barnacle" cannot list resource "pods" in API group "" in the namespace "stolon"`))
	})
	a, _ := startAuto(t, etcd, cluster, cs.CoreV1(), "pg-host", "127.0.0.99", "pg-port", "7000")
	want := "kubernetes API forbids the agent to list pods in namespace stolon: give its service account the verbs list and watch on pods there"
	testenv.WaitUntil(t, 30*time.Second, "the record to say why", func() bool {
		return strings.HasPrefix(agentRecord(t, etcd, cluster, a.Name()).KeeperDiscovery, want)
	})
	code, body := httpGet(t, a, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, want)
	s := agentStatus(t, a)
	assert.Empty(t, s.KeeperUID)
	require.NotNil(t, s.KeeperDiscovery)
	assert.Contains(t, s.KeeperDiscovery.Reason, want)
	in := a.auto.inner.Load()
	require.NotNil(t, in)
	assert.Empty(t, in.cfg.KeeperUID)
	m := &stolon.Master{KeeperUID: "keeper1", Host: "127.0.0.11", Port: 5432}
	addr, err := pgaddr.Master(in.cfg, m)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.11:5432", addr.String(), "the master from clusterdata, not pg-host")
}

// TestKeeperUIDAutoRealAPIServer runs keeper-uid auto against a real
// kube-apiserver with the DaemonSet's RBAC (deploy/kubernetes/rbac.yaml) and
// a service account token, as in a pod: the agent serves the keeper of its
// node's pod, and none once the pod is deleted.
func TestKeeperUIDAutoRealAPIServer(t *testing.T) {
	const cluster = "autoreal"
	etcd := autoEnv(t, cluster)
	api := testenv.StartKubeAPIServer(t, etcd)
	tlsCfg := rest.TLSClientConfig{Insecure: true}
	admin, err := kubernetes.NewForConfig(&rest.Config{Host: api.URL, BearerToken: api.AdminToken, TLSClientConfig: tlsCfg})
	require.NoError(t, err)
	ctx := t.Context()
	_, err = admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: autoNS}}, metav1.CreateOptions{})
	require.NoError(t, err)
	data, err := os.ReadFile("../deploy/kubernetes/rbac.yaml")
	require.NoError(t, err)
	var saName string
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var tm metav1.TypeMeta
		require.NoError(t, sigsyaml.Unmarshal([]byte(doc), &tm))
		switch tm.Kind {
		case "ServiceAccount":
			var sa corev1.ServiceAccount
			require.NoError(t, sigsyaml.UnmarshalStrict([]byte(doc), &sa))
			_, err = admin.CoreV1().ServiceAccounts(autoNS).Create(ctx, &sa, metav1.CreateOptions{})
			saName = sa.Name
		case "Role":
			var r rbacv1.Role
			require.NoError(t, sigsyaml.UnmarshalStrict([]byte(doc), &r))
			_, err = admin.RbacV1().Roles(autoNS).Create(ctx, &r, metav1.CreateOptions{})
		case "RoleBinding":
			var rb rbacv1.RoleBinding
			require.NoError(t, sigsyaml.UnmarshalStrict([]byte(doc), &rb))
			_, err = admin.RbacV1().RoleBindings(autoNS).Create(ctx, &rb, metav1.CreateOptions{})
		}
		require.NoError(t, err)
	}
	tr, err := admin.CoreV1().ServiceAccounts(autoNS).CreateToken(ctx, saName, &authv1.TokenRequest{}, metav1.CreateOptions{})
	require.NoError(t, err)
	pods, err := kubekeeper.NewPodClient(&rest.Config{Host: api.URL, BearerToken: tr.Status.Token, TLSClientConfig: tlsCfg})
	require.NoError(t, err)

	p := autoPod("stolon-keeper-0", "127.0.0.10")
	status := p.Status
	p.Status = corev1.PodStatus{}
	p.Spec.Containers = []corev1.Container{{Name: "keeper", Image: "sorintlab/stolon:master-pg15"}}
	created, err := admin.CoreV1().Pods(autoNS).Create(ctx, p, metav1.CreateOptions{})
	require.NoError(t, err)
	created.Status = status
	_, err = admin.CoreV1().Pods(autoNS).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	require.NoError(t, err)

	old := inCluster
	inCluster = func() (kubekeeper.PodClient, string, error) { return pods, autoNS, nil }
	t.Cleanup(func() { inCluster = old })
	a, _ := startAuto(t, etcd, cluster, nil)
	testenv.WaitUntil(t, 30*time.Second, "the agent to serve keeper0", func() bool {
		return agentRecord(t, etcd, cluster, a.Name()).KeeperUID == "keeper0"
	})
	require.NoError(t, admin.CoreV1().Pods(autoNS).Delete(ctx, "stolon-keeper-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}))
	testenv.WaitUntil(t, 30*time.Second, "the agent to serve none", func() bool {
		r := agentRecord(t, etcd, cluster, a.Name())
		return r.Name != "" && r.KeeperUID == "" && strings.HasPrefix(r.KeeperDiscovery, "no running pod on node n1")
	})
}
