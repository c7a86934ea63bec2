package kubekeeper

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// Options configure a Watcher.
type Options struct {
	// Pods is the Kubernetes API's pod client: InCluster's, or a fake in
	// tests.
	Pods      PodClient
	Namespace string
	NodeName  string
	// Selector is an equality-based label selector (keeper-pod-selector).
	Selector string
	Logger   hclog.Logger
	// MaxBackoff bounds the wait between failed lists (default 30s).
	MaxBackoff time.Duration
}

// State is what a Watcher knows of the keeper pods on its node.
type State struct {
	// Synced is true once a list succeeded and until one fails; Pods is
	// only meaningful then.
	Synced bool
	Pods   []Pod
	// Err says why the pods are not known: an *APIError.
	Err error
}

// APIError is a failed request to the Kubernetes API, worded for an
// operator: which verb on which resource, and what to change.
type APIError struct {
	Verb      string // list or watch
	Namespace string
	Err       error
}

func (e *APIError) Error() string {
	switch {
	case apierrors.IsForbidden(e.Err):
		return fmt.Sprintf("kubernetes API forbids the agent to %s pods in namespace %s: give its service account the verbs list and watch on pods there (a Role and RoleBinding, deploy/kubernetes/rbac.yaml): %v", e.Verb, e.Namespace, e.Err)
	case apierrors.IsUnauthorized(e.Err):
		return fmt.Sprintf("kubernetes API rejects the agent's credentials to %s pods in namespace %s (is the service account token mounted?): %v", e.Verb, e.Namespace, e.Err)
	default:
		return fmt.Sprintf("kubernetes API: cannot %s pods in namespace %s (is the API server reachable?): %v", e.Verb, e.Namespace, e.Err)
	}
}

func (e *APIError) Unwrap() error { return e.Err }

// Watcher follows the pods of one node that match a label selector, with a
// list and then a watch from the list's resource version, and lists again
// whenever the watch ends. Create it with NewWatcher, start it with Run.
type Watcher struct {
	opts     Options
	field    string
	selector labels.Selector
	log      hclog.Logger
	mu       sync.Mutex
	state    State
	pods     map[string]Pod
	changed  chan struct{}
	lastWarn string
}

// NewWatcher checks the options; it starts nothing.
func NewWatcher(opts Options) (*Watcher, error) {
	if opts.Pods == nil {
		return nil, errors.New("kubekeeper: no pod client")
	}
	if opts.NodeName == "" || opts.Namespace == "" {
		return nil, errors.New("kubekeeper: node name and namespace are required")
	}
	sel, err := labels.Parse(opts.Selector)
	if err != nil {
		return nil, fmt.Errorf("kubekeeper: label selector %q: %w", opts.Selector, err)
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	return &Watcher{
		opts:     opts,
		field:    fields.OneTermEqualSelector("spec.nodeName", opts.NodeName).String(),
		selector: sel,
		log:      opts.Logger.Named("kubekeeper").With("node", opts.NodeName, "namespace", opts.Namespace, "selector", opts.Selector),
		changed:  make(chan struct{}, 1),
	}, nil
}

// State returns the current state. Safe for concurrent use.
func (w *Watcher) State() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.state
	s.Pods = slices.Clone(s.Pods)
	return s
}

// Changed is signalled (coalesced) whenever State may have changed.
func (w *Watcher) Changed() <-chan struct{} { return w.changed }

// Run lists and watches until ctx ends, then returns nil. Failures are not
// returned: they are retried with backoff and reported through State.
func (w *Watcher) Run(ctx context.Context) error {
	backoff := time.Second
	for {
		listed, err := w.listAndWatch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if listed {
			backoff = time.Second
		}
		if err == nil {
			continue
		}
		// Jitter spreads the agents of all nodes after an API server
		// restart.
		wait := backoff/2 + rand.N(backoff/2+1)
		w.log.Debug("retrying the kubernetes API", "in", wait, "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(2*backoff, w.opts.MaxBackoff)
	}
}

// listAndWatch lists the pods, then follows them until the watch ends. A
// failed list, or a watch the API forbids, makes the pods unknown; any
// other end of the watch only calls for a new list.
func (w *Watcher) listAndWatch(ctx context.Context) (listed bool, err error) {
	pods := w.opts.Pods
	opts := metav1.ListOptions{FieldSelector: w.field, LabelSelector: w.opts.Selector}
	list, err := pods.List(ctx, w.opts.Namespace, opts)
	if err != nil {
		if ctx.Err() != nil {
			return false, nil
		}
		return false, w.fail(&APIError{Verb: "list", Namespace: w.opts.Namespace, Err: err})
	}
	w.mu.Lock()
	w.pods = map[string]Pod{}
	for i := range list.Items {
		if p, ok := w.podOf(&list.Items[i]); ok {
			w.pods[p.Name] = p
		}
	}
	w.mu.Unlock()
	w.publish()

	opts.ResourceVersion = list.ResourceVersion
	opts.AllowWatchBookmarks = true
	wi, err := pods.Watch(ctx, w.opts.Namespace, opts)
	if err != nil {
		if ctx.Err() != nil {
			return true, nil
		}
		aerr := &APIError{Verb: "watch", Namespace: w.opts.Namespace, Err: err}
		if apierrors.IsForbidden(err) {
			// Without watch the pods would go stale unnoticed.
			return true, w.fail(aerr)
		}
		return true, aerr
	}
	defer wi.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case ev, ok := <-wi.ResultChan():
			if !ok {
				return true, nil // watches end routinely; list again
			}
			switch ev.Type {
			case watch.Added, watch.Modified, watch.Deleted:
				pod, isPod := ev.Object.(*corev1.Pod)
				if !isPod {
					continue
				}
				w.mu.Lock()
				delete(w.pods, pod.Name)
				if p, ok := w.podOf(pod); ok && ev.Type != watch.Deleted {
					w.pods[p.Name] = p
				}
				w.mu.Unlock()
				w.log.Debug("keeper pod event", "type", ev.Type, "pod", pod.Name)
				w.publish()
			case watch.Error:
				// Most often 410 Gone: the resource version is too old.
				// List again, without backoff.
				w.log.Debug("pod watch ended", "error", apierrors.FromObject(ev.Object))
				return true, nil
			}
		}
	}
}

// podOf keeps a pod of the node that matches the selector and runs or is
// about to: not finished, not being deleted (its keeper stops), with at
// least one IP. The API server already selects by node and labels; the
// check here keeps a watch that does not (or a proxy in between) from
// adding another node's keeper.
func (w *Watcher) podOf(p *corev1.Pod) (Pod, bool) {
	if p.Spec.NodeName != w.opts.NodeName || !w.selector.Matches(labels.Set(p.Labels)) {
		return Pod{}, false
	}
	if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return Pod{}, false
	}
	out := Pod{Name: p.Name}
	for _, ip := range p.Status.PodIPs {
		out.IPs = append(out.IPs, ip.IP)
	}
	if len(out.IPs) == 0 && p.Status.PodIP != "" {
		out.IPs = []string{p.Status.PodIP}
	}
	if p.Status.StartTime != nil {
		out.StartTime = p.Status.StartTime.Time
	}
	return out, len(out.IPs) > 0
}

func (w *Watcher) publish() {
	w.mu.Lock()
	s := State{Synced: true}
	for _, name := range sortedKeys(w.pods) {
		s.Pods = append(s.Pods, w.pods[name])
	}
	w.state = s
	w.lastWarn = ""
	w.mu.Unlock()
	w.signal()
}

func (w *Watcher) fail(err error) error {
	w.mu.Lock()
	w.state = State{Err: err}
	w.pods = nil
	warn := err.Error() != w.lastWarn
	w.lastWarn = err.Error()
	w.mu.Unlock()
	if warn {
		w.log.Warn("cannot follow the keeper pods", "error", err)
	}
	w.signal()
	return err
}

func (w *Watcher) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// PodClient lists and watches pods: the part of the Kubernetes API the
// watcher uses.
type PodClient interface {
	List(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.PodList, error)
	Watch(ctx context.Context, namespace string, opts metav1.ListOptions) (watch.Interface, error)
}

// restPods is PodClient over client-go's REST client with a scheme of the
// core group only. client-go's typed clientset would do the same, but it
// links every API group's types and apply configurations (about 35 MB
// more binary).
type restPods struct {
	c      *rest.RESTClient
	params runtime.ParameterCodec
}

// NewPodClient makes a PodClient for the API server that cfg names.
func NewPodClient(cfg *rest.Config) (PodClient, error) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = "barnacle"
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, err
	}
	return restPods{c: rc, params: runtime.NewParameterCodec(scheme)}, nil
}

func (p restPods) List(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.PodList, error) {
	out := &corev1.PodList{}
	err := p.c.Get().Namespace(namespace).Resource("pods").VersionedParams(&opts, p.params).Do(ctx).Into(out)
	return out, err
}

func (p restPods) Watch(ctx context.Context, namespace string, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return p.c.Get().Namespace(namespace).Resource("pods").VersionedParams(&opts, p.params).Watch(ctx)
}

// serviceAccountNamespace is where Kubernetes mounts the pod's namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// InCluster returns a pod client that authenticates with the pod's
// service account, and the pod's namespace. It fails outside a pod.
func InCluster() (PodClient, string, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes API: not running in a pod with a service account: %w", err)
	}
	cli, err := NewPodClient(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes API client: %w", err)
	}
	ns, err := os.ReadFile(serviceAccountNamespace)
	if err != nil {
		return cli, "", fmt.Errorf("read the pod's namespace: %w", err)
	}
	return cli, strings.TrimSpace(string(ns)), nil
}
