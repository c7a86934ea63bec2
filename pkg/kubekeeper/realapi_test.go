package kubekeeper

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// TestWatcherAgainstRealAPIServer runs the watcher against a real
// kube-apiserver (over the embedded etcd) with the service account and RBAC
// of deploy/kubernetes/rbac.yaml: the API server's own 403 before the Role
// is bound, then its list and watch, filtered by node and labels on the
// server, as pods appear, get their IPs and go.
func TestWatcherAgainstRealAPIServer(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	api := testenv.StartKubeAPIServer(t, etcd)
	tlsCfg := rest.TLSClientConfig{Insecure: true}
	admin, err := kubernetes.NewForConfig(&rest.Config{Host: api.URL, BearerToken: api.AdminToken, TLSClientConfig: tlsCfg})
	require.NoError(t, err)
	ctx := t.Context()

	_, err = admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	require.NoError(t, err)
	// The ServiceAccount, Role and RoleBinding the DaemonSet ships.
	data, err := os.ReadFile("../../deploy/kubernetes/rbac.yaml")
	require.NoError(t, err)
	var sa corev1.ServiceAccount
	var role rbacv1.Role
	var binding rbacv1.RoleBinding
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var tm metav1.TypeMeta
		require.NoError(t, sigsyaml.Unmarshal([]byte(doc), &tm))
		switch tm.Kind {
		case "ServiceAccount":
			require.NoError(t, sigsyaml.UnmarshalStrict([]byte(doc), &sa))
		case "Role":
			require.NoError(t, sigsyaml.UnmarshalStrict([]byte(doc), &role))
		case "RoleBinding":
			require.NoError(t, sigsyaml.UnmarshalStrict([]byte(doc), &binding))
		}
	}
	_, err = admin.CoreV1().ServiceAccounts(ns).Create(ctx, &sa, metav1.CreateOptions{})
	require.NoError(t, err)
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa.Name, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))}}, metav1.CreateOptions{})
	require.NoError(t, err)
	pods, err := NewPodClient(&rest.Config{Host: api.URL, BearerToken: tr.Status.Token, TLSClientConfig: tlsCfg})
	require.NoError(t, err)

	// No Role yet: the API server forbids the list.
	w := runWatcher(t, pods)
	s := waitState(t, w, "the API server's 403", func(s State) bool { return s.Err != nil })
	assert.Contains(t, s.Err.Error(), "kubernetes API forbids the agent to list pods in namespace stolon")
	assert.Contains(t, s.Err.Error(), `cannot list resource "pods"`)

	_, err = admin.RbacV1().Roles(ns).Create(ctx, &role, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = admin.RbacV1().RoleBindings(ns).Create(ctx, &binding, metav1.CreateOptions{})
	require.NoError(t, err)
	waitState(t, w, "the list once the Role is bound", func(s State) bool { return s.Synced && s.Err == nil })

	// Pods as a scheduler and kubelet would leave them: bound to a node,
	// then running with an IP.
	create := func(name, node, ip string, lbl map[string]string) {
		t.Helper()
		p := keeperPod(name, node, ip, lbl)
		status := p.Status
		p.Status = corev1.PodStatus{}
		p.Spec.Containers = []corev1.Container{{Name: "keeper", Image: "sorintlab/stolon:master-pg15"}}
		created, err := admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		require.NoError(t, err)
		created.Status = status
		_, err = admin.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		require.NoError(t, err)
	}
	create("stolon-keeper-1", "n2", "10.0.1.11", nil)
	create("stolon-proxy-x", "n1", "10.0.0.20", map[string]string{"component": "stolon-proxy"})
	create("stolon-keeper-0", "n1", "10.0.0.10", nil)
	got := waitState(t, w, "the keeper pod of n1 with its IP", func(s State) bool { return names(s) == "stolon-keeper-0=10.0.0.10" })
	assert.Equal(t, time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC), got.Pods[0].StartTime.UTC())

	require.NoError(t, admin.CoreV1().Pods(ns).Delete(ctx, "stolon-keeper-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}))
	waitState(t, w, "the pod to go", func(s State) bool { return s.Synced && len(s.Pods) == 0 })
}
