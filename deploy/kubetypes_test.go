package deploy_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/barnacle-pg/barnacle/pkg/config"
)

// typedObject is one manifest document decoded into its Kubernetes Go type.
type typedObject struct {
	where string
	meta  metav1.TypeMeta
	obj   any
}

// newTyped returns the Go type the API server decodes apiVersion/kind into:
// k8s.io/api at the version go.mod pins, and the Prometheus Operator's CRD
// types for the ServiceMonitor.
func newTyped(apiVersion, kind string) (any, bool) {
	switch apiVersion + " " + kind {
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "apps/v1 DaemonSet":
		return &appsv1.DaemonSet{}, true
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, true
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1 Secret":
		return &corev1.Secret{}, true
	case "v1 Service":
		return &corev1.Service{}, true
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "rbac.authorization.k8s.io/v1 Role":
		return &rbacv1.Role{}, true
	case "rbac.authorization.k8s.io/v1 RoleBinding":
		return &rbacv1.RoleBinding{}, true
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}, true
	}
	return nil, false
}

// decodeStrict decodes YAML documents as the API server does with
// fieldValidation=Strict: YAML to JSON with duplicate keys rejected, then
// sigs.k8s.io/json's strict mode (apimachinery's), which rejects unknown
// and duplicate fields and matches names case-sensitively. Values are
// checked by their types (quantities, ports, durations).
func decodeStrict(where string, data []byte) ([]typedObject, error) {
	var out []typedObject
	for i, doc := range splitYAML(data) {
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", where, i, err)
		}
		if string(j) == "null" {
			continue
		}
		var tm metav1.TypeMeta
		if err := kjson.UnmarshalCaseSensitivePreserveInts(j, &tm); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", where, i, err)
		}
		obj, ok := newTyped(tm.APIVersion, tm.Kind)
		if !ok {
			return nil, fmt.Errorf("%s: document %d: no Go type known for apiVersion %q kind %q", where, i, tm.APIVersion, tm.Kind)
		}
		strict, err := kjson.UnmarshalStrict(j, obj)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", where, tm.Kind, err)
		}
		if len(strict) > 0 {
			return nil, fmt.Errorf("%s: %s: %v", where, tm.Kind, strict)
		}
		out = append(out, typedObject{where: where, meta: tm, obj: obj})
	}
	return out, nil
}

// splitYAML splits a multi-document YAML file at its "---" lines.
func splitYAML(data []byte) [][]byte {
	var out [][]byte
	var cur bytes.Buffer
	for _, l := range strings.SplitAfter(string(data), "\n") {
		if strings.TrimRight(l, "\r\n") == "---" {
			out = append(out, bytes.Clone(cur.Bytes()))
			cur.Reset()
			continue
		}
		cur.WriteString(l)
	}
	return append(out, cur.Bytes())
}

// kustomize builds a kustomization directory with kustomize's own library
// (what kubectl apply -k runs) and returns the YAML it renders.
func kustomize(t *testing.T, dir string) []byte {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	require.NoError(t, err, "kustomize build %s", dir)
	out, err := m.AsYaml()
	require.NoError(t, err)
	return out
}

// typedManifests decodes every manifest of deploy/kubernetes strictly,
// and the output of each kustomization under it.
func typedManifests(t *testing.T) map[string][]typedObject {
	t.Helper()
	out := map[string][]typedObject{}
	files, err := filepath.Glob(filepath.Join(kubeDir, "*.yaml"))
	require.NoError(t, err)
	more, err := filepath.Glob(filepath.Join(kubeDir, "*", "*.yaml"))
	require.NoError(t, err)
	for _, f := range append(files, more...) {
		if filepath.Base(f) == "kustomization.yaml" {
			dir := filepath.Dir(f)
			objs, err := decodeStrict("kustomize build "+dir, kustomize(t, dir))
			require.NoError(t, err)
			out["kustomize build "+dir] = objs
			continue
		}
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		objs, err := decodeStrict(f, data)
		require.NoError(t, err)
		out[f] = objs
	}
	return out
}

func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	all := typedManifests(t)
	for _, want := range []string{"kustomize build kubernetes/sidecar", "kustomize build kubernetes/stolon", "kubernetes/rbac.yaml", "kubernetes/servicemonitor.yaml"} {
		assert.NotEmpty(t, all[want], want)
	}
	var kinds []string
	for _, objs := range all {
		for _, o := range objs {
			kinds = append(kinds, o.meta.Kind)
		}
	}
	for _, k := range []string{"StatefulSet", "DaemonSet", "ConfigMap", "Secret", "Service", "ServiceAccount", "Role", "RoleBinding", "ServiceMonitor"} {
		assert.Contains(t, kinds, k)
	}
}

// TestStrictDecodingCatchesMistakes shows that decodeStrict fails where the
// API server would: a misspelt field, a field in the wrong case, a
// duplicate key, a bad quantity, and a ServiceMonitor field the CRD lacks.
func TestStrictDecodingCatchesMistakes(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":   "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndatas: {}\n",
		"wrong case":      "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ClusterIP: None\n",
		"duplicate key":   "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  name: y\n",
		"bad quantity":    "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      containers:\n        - name: c\n          resources:\n            limits:\n              memory: 512MiB\n",
		"unknown kind":    "apiVersion: v1\nkind: Pods\nmetadata:\n  name: x\n",
		"monitor field":   "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: x\nspec:\n  endpoints:\n    - port: metrics\n      scrapeInterval: 30s\n",
		"nested in a pod": "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      containers:\n        - name: c\n          readinessProbe:\n            httpGet:\n              paths: /readyz\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := decodeStrict(name, []byte(doc))
			assert.Error(t, err)
		})
	}
}

func typedOf[T any](t *testing.T, objs []typedObject, name string) *T {
	t.Helper()
	for _, o := range objs {
		if v, ok := o.obj.(*T); ok && objectName(o.obj) == name {
			return v
		}
	}
	t.Fatalf("no %T named %s", *new(T), name)
	return nil
}

func objectName(o any) string {
	if m, ok := o.(interface{ GetName() string }); ok {
		return m.GetName()
	}
	return ""
}

// TestKubernetesSidecarOverlay: the kustomize overlay on Stolon's keeper
// StatefulSet renders exactly the sidecar manifest that the other tests
// check, and leaves Stolon's Service as it is.
func TestKubernetesSidecarOverlay(t *testing.T) {
	all := typedManifests(t)
	built := all["kustomize build kubernetes/sidecar"]
	plain := all["kubernetes/stolon-keeper.yaml"]
	want, got := typedOf[appsv1.StatefulSet](t, plain, "stolon-keeper"), typedOf[appsv1.StatefulSet](t, built, "stolon-keeper")
	sortPod(&want.Spec.Template.Spec)
	sortPod(&got.Spec.Template.Spec)
	require.Equal(t, want, got, "kustomize build kubernetes/sidecar differs from kubernetes/stolon-keeper.yaml")
	require.Equal(t, typedOf[corev1.Service](t, plain, "stolon-keeper"), typedOf[corev1.Service](t, built, "stolon-keeper"))
	// Stolon's own StatefulSet has no barnacle in it.
	base := typedOf[appsv1.StatefulSet](t, all["kubernetes/stolon/stolon-keeper.yaml"], "stolon-keeper")
	for _, c := range append(base.Spec.Template.Spec.Containers, base.Spec.Template.Spec.InitContainers...) {
		assert.NotContains(t, c.Image, "barnacle", "Stolon's StatefulSet is Stolon's")
	}
}

// sortPod orders the lists a strategic merge patch merges by key, whose
// order kustomize chooses (patch items first) and Kubernetes ignores (no
// env value here refers to another with $(VAR)).
func sortPod(p *corev1.PodSpec) {
	byName := func(a, b corev1.Container) int { return strings.Compare(a.Name, b.Name) }
	for _, cs := range [][]corev1.Container{p.Containers, p.InitContainers} {
		slices.SortFunc(cs, byName)
		for i := range cs {
			slices.SortFunc(cs[i].Env, func(a, b corev1.EnvVar) int { return strings.Compare(a.Name, b.Name) })
			slices.SortFunc(cs[i].VolumeMounts, func(a, b corev1.VolumeMount) int { return strings.Compare(a.MountPath, b.MountPath) })
		}
	}
	slices.SortFunc(p.Volumes, func(a, b corev1.Volume) int { return strings.Compare(a.Name, b.Name) })
}

// TestKubernetesKeeperAuto: the DaemonSet's agents find their keeper
// (keeper-uid auto) among the pods of Stolon's unchanged StatefulSet, with
// the node name from the downward API and a ServiceAccount whose Role
// grants list and watch on pods, and nothing more.
func TestKubernetesKeeperAuto(t *testing.T) {
	all := typedManifests(t)
	ds := typedOf[appsv1.DaemonSet](t, all["kubernetes/barnacle-daemonset.yaml"], "barnacle")
	keeper := typedOf[appsv1.StatefulSet](t, all["kubernetes/stolon/stolon-keeper.yaml"], "stolon-keeper")
	rbac := all["kubernetes/rbac.yaml"]

	pod := ds.Spec.Template.Spec
	require.Len(t, pod.Containers, 1)
	env := map[string]corev1.EnvVar{}
	for _, e := range pod.Containers[0].Env {
		env[e.Name] = e
	}
	require.Equal(t, config.KeeperUIDAuto, env[config.EnvName("keeper-uid")].Value, "the DaemonSet runs keeper-uid auto")
	node := env[config.EnvName("node-name")]
	require.NotNil(t, node.ValueFrom, "node-name comes from the downward API")
	require.NotNil(t, node.ValueFrom.FieldRef)
	assert.Equal(t, "spec.nodeName", node.ValueFrom.FieldRef.FieldPath)
	selector := config.Default().KeeperPodSelector
	if e, ok := env[config.EnvName("keeper-pod-selector")]; ok {
		selector = e.Value
	}
	sel, err := labels.Parse(selector)
	require.NoError(t, err)
	assert.True(t, sel.Matches(labels.Set(keeper.Spec.Template.Labels)),
		"keeper-pod-selector %q does not select the pods of Stolon's keeper StatefulSet (%v)", selector, keeper.Spec.Template.Labels)

	// RBAC: the pod's ServiceAccount may list and watch pods.
	require.NotEmpty(t, pod.ServiceAccountName, "the DaemonSet names no serviceAccountName; the default one may not list pods")
	typedOf[corev1.ServiceAccount](t, rbac, pod.ServiceAccountName)
	var verbs []string
	for _, o := range rbac {
		rb, ok := o.obj.(*rbacv1.RoleBinding)
		if !ok || !slices.ContainsFunc(rb.Subjects, func(s rbacv1.Subject) bool {
			return s.Kind == rbacv1.ServiceAccountKind && s.Name == pod.ServiceAccountName
		}) {
			continue
		}
		require.Equal(t, "Role", rb.RoleRef.Kind, "a namespaced Role, not a ClusterRole")
		role := typedOf[rbacv1.Role](t, rbac, rb.RoleRef.Name)
		for _, r := range role.Rules {
			require.Equal(t, []string{""}, r.APIGroups, "the core group only")
			require.Equal(t, []string{"pods"}, r.Resources, "pods only")
			verbs = append(verbs, r.Verbs...)
		}
	}
	slices.Sort(verbs)
	assert.Equal(t, []string{"list", "watch"}, verbs, "the agent lists and watches pods; it needs no other verb")
}
