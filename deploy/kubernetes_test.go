package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/barnacle-pg/barnacle/pkg/config"
)

const kubeDir = "kubernetes"

// kubeObject is one document of a Kubernetes manifest.
type kubeObject struct {
	file string
	doc  map[string]any
}

func (o kubeObject) kind() string { s, _ := o.doc["kind"].(string); return s }
func (o kubeObject) name() string { s, _ := mapOf(o.doc["metadata"])["name"].(string); return s }
func (o kubeObject) String() string {
	return fmt.Sprintf("%s %s (%s)", o.kind(), o.name(), o.file)
}

// loadKube parses every document of every manifest in deploy/kubernetes.
func loadKube(t *testing.T) []kubeObject {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(kubeDir, "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no manifests in %s", kubeDir)
	var out []kubeObject
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for i := 0; ; i++ {
			var doc map[string]any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, "%s: document %d is not valid YAML", f, i)
			if doc == nil {
				continue
			}
			o := kubeObject{file: f, doc: doc}
			require.NotEmpty(t, doc["apiVersion"], "%s: document %d has no apiVersion", f, i)
			require.NotEmpty(t, o.kind(), "%s: document %d has no kind", f, i)
			require.NotEmpty(t, o.name(), "%s: document %d has no metadata.name", f, i)
			out = append(out, o)
		}
	}
	return out
}

func find(objs []kubeObject, kind, name string) (kubeObject, bool) {
	for _, o := range objs {
		if o.kind() == kind && o.name() == name {
			return o, true
		}
	}
	return kubeObject{}, false
}

// workload is a Deployment, StatefulSet or DaemonSet: its pod template.
type workload struct {
	kubeObject
	pod    map[string]any // template.spec
	labels map[string]any // template.metadata.labels
}

func workloads(objs []kubeObject) []workload {
	var out []workload
	for _, o := range objs {
		switch o.kind() {
		case "StatefulSet", "DaemonSet", "Deployment":
			tmpl := mapOf(mapOf(o.doc["spec"])["template"])
			out = append(out, workload{kubeObject: o, pod: mapOf(tmpl["spec"]), labels: mapOf(mapOf(tmpl["metadata"])["labels"])})
		}
	}
	return out
}

func (w workload) containers(init bool) []map[string]any {
	field := "containers"
	if init {
		field = "initContainers"
	}
	var out []map[string]any
	for _, c := range listOf(w.pod[field]) {
		out = append(out, mapOf(c))
	}
	return out
}

// script is a container's command and args as one string.
func script(c map[string]any) string {
	return strings.Join(append(words(c["command"]), words(c["args"])...), " ")
}

func isBarnacleAgent(c map[string]any) bool {
	return regexp.MustCompile(`(^|[\s/])barnacle agent(\s|$)`).MatchString(script(c))
}

func isKeeper(c map[string]any) bool { return strings.Contains(script(c), "stolon-keeper") }

// kubeEnv returns a container's environment: literal values as they are, values from
// the downward API or a Secret as "<from>".
func kubeEnv(c map[string]any) map[string]string {
	out := map[string]string{}
	for _, e := range listOf(c["env"]) {
		m := mapOf(e)
		name, _ := m["name"].(string)
		if v, ok := m["value"]; ok {
			out[name] = fmt.Sprint(v)
		} else {
			out[name] = "<from>"
		}
	}
	return out
}

// volumeOf returns the pod volume (or volumeClaimTemplate) a container mounts at path,
// the mount, and whether there is one.
func (w workload) volumeOf(c map[string]any, mountPath string) (vol, mount map[string]any, ok bool) {
	for _, m := range listOf(c["volumeMounts"]) {
		mm := mapOf(m)
		if mm["mountPath"] != mountPath {
			continue
		}
		for _, v := range listOf(w.pod["volumes"]) {
			if mapOf(v)["name"] == mm["name"] {
				return mapOf(v), mm, true
			}
		}
		for _, v := range listOf(mapOf(w.doc["spec"])["volumeClaimTemplates"]) {
			if mapOf(mapOf(v)["metadata"])["name"] == mm["name"] {
				return map[string]any{"name": mm["name"], "persistentVolumeClaim": true}, mm, true
			}
		}
		return nil, mm, false
	}
	return nil, nil, false
}

// mountedFile resolves a file path inside a container to the ConfigMap or Secret key
// that a volume puts there: kind (ConfigMap or Secret), object name and key.
func (w workload) mountedFile(t *testing.T, c map[string]any, file string) (kind, name, key string) {
	t.Helper()
	for _, m := range listOf(c["volumeMounts"]) {
		mm := mapOf(m)
		mp, _ := mm["mountPath"].(string)
		sub, _ := mm["subPath"].(string)
		var rel string
		switch {
		case sub != "" && file == mp:
			rel = sub
		case sub == "" && strings.HasPrefix(file, mp+"/"):
			rel = strings.TrimPrefix(file, mp+"/")
		default:
			continue
		}
		vol, _, ok := w.volumeOf(c, mp)
		require.True(t, ok, "%s: %s mounts volume %v, which the pod does not declare", w, mp, mm["name"])
		src := mapOf(vol["configMap"])
		kind, name = "ConfigMap", fmt.Sprint(src["name"])
		if src == nil {
			src = mapOf(vol["secret"])
			kind, name = "Secret", fmt.Sprint(src["secretName"])
		}
		require.NotNil(t, src, "%s: %s is on volume %v, neither a ConfigMap nor a Secret", w, file, vol["name"])
		key = rel
		for _, it := range listOf(src["items"]) {
			if mapOf(it)["path"] == rel {
				key = fmt.Sprint(mapOf(it)["key"])
			}
		}
		return kind, name, key
	}
	t.Fatalf("%s: no volume puts a file at %s", w, file)
	return "", "", ""
}

// dataKeys returns the keys of a ConfigMap's data or a Secret's data and stringData.
func dataKeys(o kubeObject) map[string]string {
	out := map[string]string{}
	for _, f := range []string{"data", "stringData"} {
		for k, v := range mapOf(o.doc[f]) {
			out[k] = fmt.Sprint(v)
		}
	}
	return out
}

// requireKey fails unless the objects define kind/name with key.
func requireKey(t *testing.T, objs []kubeObject, where, kind, name, key string) string {
	t.Helper()
	o, ok := find(objs, kind, name)
	require.True(t, ok, "%s uses %s %q, which no manifest defines", where, kind, name)
	v, ok := dataKeys(o)[key]
	require.True(t, ok, "%s uses key %q of %s %s, which it does not have (%v)", where, key, kind, name, keysOf(dataKeys(o)))
	return v
}

// agentConfig loads a barnacle container's configuration as `barnacle agent` would: the
// ConfigMap file named by BARNACLE_CONFIG, then its literal BARNACLE_* environment, with
// keeper-uid as the shell sets it and file paths mapped to files of this test.
func agentConfig(t *testing.T, objs []kubeObject, w workload, c map[string]any) config.Config {
	t.Helper()
	e := kubeEnv(c)
	cfgPath := e["BARNACLE_CONFIG"]
	require.NotEmpty(t, cfgPath, "%s: the barnacle container sets no BARNACLE_CONFIG", w)
	kind, name, key := w.mountedFile(t, c, cfgPath)
	require.Equal(t, "ConfigMap", kind, "%s: %s should come from a ConfigMap", w, cfgPath)
	text := requireKey(t, objs, w.String(), kind, name, key)
	file := filepath.Join(t.TempDir(), "barnacle.yaml")
	require.NoError(t, os.WriteFile(file, []byte(text), 0o600))

	var raw map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(text), &raw), "ConfigMap %s key %s is not valid YAML", name, key)
	env := map[string]string{}
	for k, v := range e {
		if strings.HasPrefix(k, "BARNACLE_") && k != "BARNACLE_CONFIG" && v != "<from>" {
			env[k] = v
		}
	}
	// The downward API's values, as Kubernetes would fill them in.
	for _, ev := range listOf(c["env"]) {
		m := mapOf(ev)
		switch mapOf(mapOf(m["valueFrom"])["fieldRef"])["fieldPath"] {
		case "spec.nodeName":
			env[fmt.Sprint(m["name"])] = "node-1"
		case "metadata.name":
			env[fmt.Sprint(m["name"])] = "barnacle-x2x4z"
		}
	}
	// The shell derives keeper-uid from the hostname or node name.
	if m := regexp.MustCompile(`BARNACLE_KEEPER_UID=`).FindString(script(c)); m != "" {
		env["BARNACLE_KEEPER_UID"] = "keeper0"
	}
	// Secret files: each must be mounted from a Secret key; the test gives Load a real file.
	for _, k := range []string{"pg-password-file", "store-password-file", "store-cert-file", "store-key", "store-ca-file"} {
		p, _ := raw[k].(string)
		if p == "" {
			continue
		}
		kind, name, key := w.mountedFile(t, c, p)
		require.Equal(t, "Secret", kind, "%s: %s (%s) should come from a Secret", w, k, p)
		v := requireKey(t, objs, w.String(), kind, name, key)
		f := filepath.Join(t.TempDir(), key)
		require.NoError(t, os.WriteFile(f, []byte(v), 0o600))
		env[config.EnvName(k)] = f
	}
	cfg, err := config.Load(config.Sources{
		File:  file,
		Env:   func(k string) (string, bool) { v, ok := env[k]; return v, ok },
		Flags: map[string]string{},
	}, config.Needs{Keys: agentRequired, Agent: true})
	require.NoError(t, err, "%s: `barnacle agent` would refuse this configuration", w)
	return cfg
}

// namedPort resolves a probe or Service port (a number or a container port name).
func namedPort(t *testing.T, c map[string]any, port any) string {
	t.Helper()
	if s, ok := port.(string); ok {
		for _, p := range listOf(c["ports"]) {
			if mapOf(p)["name"] == s {
				return fmt.Sprint(mapOf(p)["containerPort"])
			}
		}
		t.Fatalf("container %v has no port named %q", c["name"], s)
	}
	return fmt.Sprint(port)
}

func TestKubernetesManifestsParse(t *testing.T) {
	objs := loadKube(t)
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[o.kind()] = true
	}
	for _, k := range []string{"StatefulSet", "DaemonSet", "ConfigMap", "Secret", "Service", "ServiceMonitor"} {
		require.True(t, kinds[k], "no %s in %s", k, kubeDir)
	}
}

func TestKubernetesEveryKeeperHasSidecar(t *testing.T) {
	for _, w := range workloads(loadKube(t)) {
		var keepers, agents int
		for _, c := range w.containers(false) {
			if isKeeper(c) {
				keepers++
			}
			if isBarnacleAgent(c) {
				agents++
			}
		}
		if keepers > 0 && agents != keepers {
			t.Errorf("%s: %d keeper containers but %d barnacle agent containers; want one sidecar per keeper", w, keepers, agents)
		}
		if keepers == 0 && agents == 0 {
			t.Errorf("%s runs neither a keeper nor a barnacle agent", w)
		}
	}
}

func TestKubernetesBarnacleContainers(t *testing.T) {
	objs := loadKube(t)
	keys := map[string]bool{"config": true}
	known := map[string]bool{"BARNACLE_CONFIG": true}
	for _, k := range config.Keys() {
		keys[k.Name] = true
		known[config.EnvName(k.Name)] = true
	}
	for _, w := range workloads(objs) {
		for _, c := range append(w.containers(false), w.containers(true)...) {
			if !isBarnacleAgent(c) && !strings.HasPrefix(fmt.Sprint(c["image"]), "barnacle") {
				continue
			}
			t.Run(w.name()+"/"+fmt.Sprint(c["name"]), func(t *testing.T) {
				for k := range kubeEnv(c) {
					if strings.HasPrefix(k, "BARNACLE_") && !known[k] {
						t.Errorf("%s sets %s, which is no configuration key (config.Keys)", w, k)
					}
				}
				for _, m := range regexp.MustCompile(`BARNACLE_[A-Z_]+`).FindAllString(script(c), -1) {
					if !known[m] {
						t.Errorf("%s: the command sets %s, which is no configuration key", w, m)
					}
				}
				flags, _ := parseFlags(strings.Fields(script(c)))
				for _, f := range flags {
					if !keys[f.name] {
						t.Errorf("%s: the command passes --%s, which is no barnacle configuration key", w, f.name)
					}
				}
				for _, e := range listOf(c["env"]) {
					ref := mapOf(mapOf(mapOf(e)["valueFrom"])["secretKeyRef"])
					if ref != nil {
						requireKey(t, objs, w.String(), "Secret", fmt.Sprint(ref["name"]), fmt.Sprint(ref["key"]))
					}
				}
				if !isBarnacleAgent(c) {
					return
				}
				cfg := agentConfig(t, objs, w, c)
				_, port, err := net.SplitHostPort(cfg.MetricsListenAddress)
				require.NoError(t, err)
				for probe, want := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
					get := mapOf(mapOf(c[probe])["httpGet"])
					require.NotNil(t, get, "%s: the barnacle container has no %s.httpGet", w, probe)
					if get["path"] != want {
						t.Errorf("%s: %s asks for %v; want %s", w, probe, get["path"], want)
					}
					if p := namedPort(t, c, get["port"]); p != port {
						t.Errorf("%s: %s asks port %s; the agent listens on %s (metrics-listen-address)", w, probe, p, port)
					}
				}
				if cfg.RestoreRoot != "" {
					vol, m, ok := w.volumeOf(c, cfg.RestoreRoot)
					switch {
					case !ok:
						t.Errorf("%s: restore-root %s is not a mounted volume (%v)", w, cfg.RestoreRoot, m)
					case m["readOnly"] == true:
						t.Errorf("%s: restore-root %s is mounted read-only; restores write there", w, cfg.RestoreRoot)
					case vol["emptyDir"] != nil:
						t.Errorf("%s: restore-root %s is an emptyDir, which a pod restart empties", w, cfg.RestoreRoot)
					}
				}
				sc := mapOf(c["securityContext"])
				if sc["runAsNonRoot"] != true {
					t.Errorf("%s: the barnacle container does not set runAsNonRoot", w)
				}
				// The keeper's data: never mounted writable in the agent.
				for _, kc := range w.containers(false) {
					if !isKeeper(kc) {
						continue
					}
					for _, km := range listOf(kc["volumeMounts"]) {
						for _, m := range listOf(c["volumeMounts"]) {
							if mapOf(m)["name"] == mapOf(km)["name"] && mapOf(km)["readOnly"] != true && mapOf(m)["readOnly"] != true {
								t.Errorf("%s: the agent mounts the keeper's writable volume %v writable too", w, mapOf(m)["name"])
							}
						}
					}
					// Sidecar and keeper agree on Stolon's store, cluster and replication role.
					ke := kubeEnv(kc)
					if ep := ke["STKEEPER_STORE_ENDPOINTS"]; ep != strings.Join(cfg.StoreEndpoints, ",") {
						t.Errorf("%s: the keeper uses store endpoints %q, barnacle %v", w, ep, cfg.StoreEndpoints)
					}
					if b := ke["STKEEPER_STORE_BACKEND"]; b != "etcdv3" {
						t.Errorf("%s: the keeper's store backend is %q; barnacle needs etcdv3", w, b)
					}
					if u := ke["STKEEPER_PG_REPL_USERNAME"]; u != cfg.PGUser {
						t.Errorf("%s: the keeper's replication user is %q, barnacle's pg-user %q", w, u, cfg.PGUser)
					}
					if cn := fmt.Sprint(w.labels["stolon-cluster"]); cn != cfg.ClusterName {
						t.Errorf("%s: the pods' stolon-cluster label (the keeper's cluster name) is %q, barnacle's cluster-name %q", w, cn, cfg.ClusterName)
					}
					_, _, kkey := w.mountedFile(t, kc, ke["STKEEPER_PG_REPL_PASSWORDFILE"])
					var raw map[string]any
					_, cmName, cmKey := w.mountedFile(t, c, kubeEnv(c)["BARNACLE_CONFIG"])
					require.NoError(t, yaml.Unmarshal([]byte(requireKey(t, objs, "", "ConfigMap", cmName, cmKey)), &raw))
					_, _, bkey := w.mountedFile(t, c, fmt.Sprint(raw["pg-password-file"]))
					if kkey != bkey {
						t.Errorf("%s: the keeper's replication password is Secret key %q, barnacle's %q", w, kkey, bkey)
					}
				}
			})
		}
	}
}

// matches reports whether every selector label is among labels.
func matches(selector, labels map[string]any) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if fmt.Sprint(labels[k]) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

func TestKubernetesServicesAndMonitor(t *testing.T) {
	objs := loadKube(t)
	ws := workloads(objs)
	for _, o := range objs {
		switch o.kind() {
		case "Service":
			spec := mapOf(o.doc["spec"])
			var pods []workload
			for _, w := range ws {
				if matches(mapOf(spec["selector"]), w.labels) {
					pods = append(pods, w)
				}
			}
			require.NotEmpty(t, pods, "%s selects no pod template", o)
			for _, p := range listOf(spec["ports"]) {
				target := mapOf(p)["targetPort"]
				for _, w := range pods {
					found := false
					for _, c := range w.containers(false) {
						for _, cp := range listOf(c["ports"]) {
							if mapOf(cp)["name"] == target || fmt.Sprint(mapOf(cp)["containerPort"]) == fmt.Sprint(target) {
								found = true
							}
						}
					}
					if !found {
						t.Errorf("%s: targetPort %v is no container port of %s", o, target, w)
					}
				}
			}
		case "ServiceMonitor":
			spec := mapOf(o.doc["spec"])
			sel := mapOf(mapOf(spec["selector"])["matchLabels"])
			var svcs []kubeObject
			for _, s := range objs {
				if s.kind() == "Service" && matches(sel, mapOf(mapOf(s.doc["metadata"])["labels"])) {
					svcs = append(svcs, s)
				}
			}
			require.Len(t, svcs, 1, "%s should select exactly one Service", o)
			svcSpec := mapOf(svcs[0].doc["spec"])
			for _, ep := range listOf(spec["endpoints"]) {
				e := mapOf(ep)
				if e["path"] != "/metrics" {
					t.Errorf("%s scrapes %v; the agent serves /metrics", o, e["path"])
				}
				ok := false
				for _, p := range listOf(svcSpec["ports"]) {
					if mapOf(p)["name"] == e["port"] {
						ok = true
						// The Service must reach the agents' metrics port.
						tp := mapOf(p)["targetPort"]
						for _, w := range ws {
							if !matches(mapOf(svcSpec["selector"]), w.labels) {
								continue
							}
							for _, c := range w.containers(false) {
								if isBarnacleAgent(c) {
									cfg := agentConfig(t, objs, w, c)
									_, port, _ := net.SplitHostPort(cfg.MetricsListenAddress)
									if got := namedPort(t, c, tp); got != port {
										t.Errorf("%s: port %v reaches container port %s; the agent listens on %s", svcs[0], e["port"], got, port)
									}
								}
							}
						}
					}
				}
				if !ok {
					t.Errorf("%s: endpoint port %v is no port name of %s", o, e["port"], svcs[0])
				}
			}
		}
	}
}

func TestKubernetesStolonImageAndProbePaths(t *testing.T) {
	for _, w := range workloads(loadKube(t)) {
		for _, c := range w.containers(false) {
			if isKeeper(c) {
				img := fmt.Sprint(c["image"])
				if !strings.HasPrefix(img, "sorintlab/stolon:") {
					t.Errorf("%s: the keeper runs %s; the example uses Stolon's image", w, img)
				}
				if v := path.Base(img); !strings.Contains(v, "pg") {
					t.Errorf("%s: image %s names no PostgreSQL version", w, img)
				}
			}
			for _, probe := range []string{"livenessProbe", "readinessProbe", "startupProbe"} {
				if p, ok := mapOf(mapOf(c[probe])["httpGet"])["path"].(string); ok && isBarnacleAgent(c) {
					if !slices.Contains([]string{"/healthz", "/readyz", "/metrics"}, p) {
						t.Errorf("%s: %s asks for %s, which the agent does not serve", w, probe, p)
					}
				}
			}
		}
		if g, ok := w.pod["terminationGracePeriodSeconds"].(int); ok && g < 5 {
			t.Errorf("%s: terminationGracePeriodSeconds %s is too short for the agent to resign", w, strconv.Itoa(g))
		}
	}
}
