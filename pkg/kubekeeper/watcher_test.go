package kubekeeper

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
)

const ns = "stolon"

func keeperPod(name, node, ip string, lbl map[string]string) *corev1.Pod {
	if lbl == nil {
		lbl = map[string]string{"component": "stolon-keeper", "stolon-cluster": "kube-stolon"}
	}
	started := metav1.NewTime(time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC))
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: lbl},
		Spec:       corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			StartTime: &started},
	}
}

// fakePods is PodClient over client-go's fake clientset.
type fakePods struct{ c corev1client.PodsGetter }

func (f fakePods) List(ctx context.Context, ns string, o metav1.ListOptions) (*corev1.PodList, error) {
	return f.c.Pods(ns).List(ctx, o)
}

func (f fakePods) Watch(ctx context.Context, ns string, o metav1.ListOptions) (watch.Interface, error) {
	return f.c.Pods(ns).Watch(ctx, o)
}

// runWatcher starts a watcher of node n1 and stops it when the test ends.
func runWatcher(t *testing.T, pods PodClient) *Watcher {
	t.Helper()
	w, err := NewWatcher(Options{Pods: pods, Namespace: ns, NodeName: "n1", Selector: "component=stolon-keeper", MaxBackoff: 50 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err, "Run returns nil when its context ends")
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
	return w
}

// waitState waits for the watcher's state to satisfy cond.
func waitState(t *testing.T, w *Watcher, what string, cond func(State) bool) State {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		s := w.State()
		if cond(s) {
			return s
		}
		select {
		case <-w.Changed():
		case <-deadline:
			t.Fatalf("timed out waiting for %s; state %+v", what, s)
		}
	}
}

func names(s State) string {
	var out []string
	for _, p := range s.Pods {
		out = append(out, p.Name+"="+strings.Join(p.IPs, ","))
	}
	return strings.Join(out, " ")
}

func TestWatcherFollowsTheNodesKeeperPods(t *testing.T) {
	cs := fake.NewClientset(
		keeperPod("stolon-keeper-0", "n1", "10.0.0.10", nil),
		keeperPod("stolon-keeper-1", "n2", "10.0.1.11", nil),                                           // another node
		keeperPod("stolon-proxy-x", "n1", "10.0.0.20", map[string]string{"component": "stolon-proxy"}), // not a keeper
	)
	// The watch must start at the list's resource version.
	var watchRV atomic.Value
	cs.PrependWatchReactor("pods", func(a k8stesting.Action) (bool, watch.Interface, error) {
		watchRV.Store(a.(k8stesting.WatchActionImpl).WatchRestrictions.ResourceVersion)
		return false, nil, nil
	})
	w := runWatcher(t, fakePods{cs.CoreV1()})
	waitState(t, w, "the keeper pod of n1", func(s State) bool { return s.Synced && names(s) == "stolon-keeper-0=10.0.0.10" })

	ctx := t.Context()
	pods := cs.CoreV1().Pods(ns)
	// A keeper moves here: its new pod appears.
	_, err := pods.Create(ctx, keeperPod("stolon-keeper-2", "n1", "10.0.0.12", nil), metav1.CreateOptions{})
	require.NoError(t, err)
	waitState(t, w, "the new pod", func(s State) bool { return names(s) == "stolon-keeper-0=10.0.0.10 stolon-keeper-2=10.0.0.12" })
	// Pods of other nodes and other components are never taken, even
	// from a watch that does not filter (the fake's does not).
	_, err = pods.Create(ctx, keeperPod("stolon-keeper-3", "n2", "10.0.1.13", nil), metav1.CreateOptions{})
	require.NoError(t, err)
	// A pod being deleted no longer counts: its keeper is stopping.
	p, err := pods.Get(ctx, "stolon-keeper-0", metav1.GetOptions{})
	require.NoError(t, err)
	now := metav1.Now()
	p.DeletionTimestamp = &now
	_, err = pods.Update(ctx, p, metav1.UpdateOptions{})
	require.NoError(t, err)
	waitState(t, w, "the terminating pod to go", func(s State) bool { return names(s) == "stolon-keeper-2=10.0.0.12" })
	require.NoError(t, pods.Delete(ctx, "stolon-keeper-2", metav1.DeleteOptions{}))
	s := waitState(t, w, "no pod", func(s State) bool { return len(s.Pods) == 0 })
	assert.True(t, s.Synced)
	assert.NoError(t, s.Err)
	assert.NotNil(t, watchRV.Load(), "the watcher watches")
}

func TestWatcherForbiddenNamesVerbAndResource(t *testing.T) {
	for _, verb := range []string{"list", "watch"} {
		t.Run(verb, func(t *testing.T) {
			cs := fake.NewClientset(keeperPod("stolon-keeper-0", "n1", "10.0.0.10", nil))
			forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "",
				errors.New(`User "system:serviceaccount:stolon:barnacle" cannot `+verb+` resource "pods" in API group "" in the namespace "stolon"`))
			var allowed atomic.Bool
			if verb == "list" {
				cs.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
					if allowed.Load() {
						return false, nil, nil
					}
					return true, nil, forbidden
				})
			} else {
				cs.PrependWatchReactor("pods", func(k8stesting.Action) (bool, watch.Interface, error) {
					if allowed.Load() {
						return false, nil, nil
					}
					return true, nil, forbidden
				})
			}
			w := runWatcher(t, fakePods{cs.CoreV1()})
			s := waitState(t, w, "the forbidden error", func(s State) bool { return s.Err != nil })
			assert.False(t, s.Synced, "forbidden to %s: the pods are not known", verb)
			assert.Empty(t, s.Pods)
			var aerr *APIError
			require.ErrorAs(t, s.Err, &aerr)
			assert.Equal(t, verb, aerr.Verb)
			assert.Contains(t, s.Err.Error(), "kubernetes API forbids the agent to "+verb+" pods in namespace stolon: give its service account the verbs list and watch on pods there")
			// Granted later: the watcher recovers without a restart.
			allowed.Store(true)
			waitState(t, w, "the pods once allowed", func(s State) bool { return s.Synced && s.Err == nil && len(s.Pods) == 1 })
		})
	}
}

// TestWatcherRealClientErrors drives client-go's real REST client: a 403
// with the API server's Status body, and an API server that is not there.
func TestWatcherRealClientErrors(t *testing.T) {
	t.Run("forbidden", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			assert.Equal(t, "/api/v1/namespaces/stolon/pods", r.URL.Path)
			assert.Equal(t, "spec.nodeName=n1", r.URL.Query().Get("fieldSelector"))
			assert.Equal(t, "component=stolon-keeper", r.URL.Query().Get("labelSelector"))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:stolon:barnacle\" cannot list resource \"pods\" in API group \"\" in the namespace \"stolon\"","reason":"Forbidden","details":{"kind":"pods"},"code":403}`))
		}))
		t.Cleanup(srv.Close)
		cli, err := NewPodClient(&rest.Config{Host: srv.URL})
		require.NoError(t, err)
		w := runWatcher(t, cli)
		s := waitState(t, w, "the error", func(s State) bool { return s.Err != nil })
		assert.True(t, apierrors.IsForbidden(s.Err))
		assert.Contains(t, s.Err.Error(), `kubernetes API forbids the agent to list pods in namespace stolon`)
		assert.Contains(t, s.Err.Error(), `cannot list resource "pods"`)
	})
	t.Run("unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		require.NoError(t, l.Close()) // nothing listens there now
		cli, err := NewPodClient(&rest.Config{Host: "http://" + addr, Timeout: 5 * time.Second})
		require.NoError(t, err)
		w := runWatcher(t, cli)
		s := waitState(t, w, "the error", func(s State) bool { return s.Err != nil })
		assert.False(t, s.Synced)
		assert.Contains(t, s.Err.Error(), "kubernetes API: cannot list pods in namespace stolon (is the API server reachable?)")
	})
}

func TestNewWatcherRejectsBadOptions(t *testing.T) {
	cs := fake.NewClientset()
	_, err := NewWatcher(Options{Pods: fakePods{cs.CoreV1()}, Namespace: ns, NodeName: "n1", Selector: "a in (b"})
	assert.ErrorContains(t, err, `label selector "a in (b"`)
	_, err = NewWatcher(Options{Pods: fakePods{cs.CoreV1()}, Namespace: ns, Selector: "a=b"})
	assert.ErrorContains(t, err, "node name and namespace are required")
}
