// Package deploy_test checks the container deployment (the repository's Dockerfile and
// .dockerignore, and deploy/docker-compose) against barnacle's configuration keys and CLI.
// No Docker engine runs here, so the files must be right by construction: these tests
// check everything that can be known without starting a container.
package deploy_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/barnacle-pg/barnacle/pkg/config"
)

const (
	composeDir  = "docker-compose"
	composeFile = composeDir + "/docker-compose.yml"
	dockerfile  = "../Dockerfile"
	dockerignor = "../.dockerignore"
	// The image's entrypoint, which the sidecars inherit.
	barnacleBinary = "/usr/local/bin/barnacle"
)

// agentRequired mirrors what cmd/barnacle's agent command asks config.Load for
// (keeper-uid comes from Needs.Agent with leader-policy follow-master).
var agentRequired = []string{"cluster-name", "store-endpoints", "archive-url"}

// subcommandFlags lists barnacle's subcommands and the flags each has besides the
// configuration keys and --config, which every subcommand accepts.
var subcommandFlags = map[string][]string{
	"agent":   nil,
	"status":  {"json"},
	"version": nil,
}

// notKeyEnv are BARNACLE_* variables the CLI reads that are not configuration keys.
var notKeyEnv = map[string]bool{"BARNACLE_CONFIG": true}

// compose is the parsed compose file, with the services in name order.
type compose struct {
	doc      map[string]any
	names    []string
	services map[string]map[string]any
}

func loadCompose(t *testing.T) compose {
	t.Helper()
	data, err := os.ReadFile(composeFile)
	require.NoError(t, err, "read the compose file")
	var doc map[string]any
	require.NoError(t, yaml.Unmarshal(data, &doc), "%s is not valid YAML", composeFile)
	raw, ok := doc["services"].(map[string]any)
	require.True(t, ok, "%s has no services mapping", composeFile)
	c := compose{doc: doc, services: map[string]map[string]any{}}
	for name, v := range raw {
		svc, ok := v.(map[string]any)
		require.True(t, ok, "service %s is not a mapping", name)
		c.services[name] = svc
		c.names = append(c.names, name)
	}
	sort.Strings(c.names)
	return c
}

// words returns a compose string-or-list field (command, entrypoint) as a list.
func words(v any) []string {
	switch v := v.(type) {
	case string:
		return strings.Fields(v)
	case []any:
		out := make([]string, 0, len(v))
		for _, w := range v {
			out = append(out, fmt.Sprint(w))
		}
		return out
	}
	return nil
}

// argv is what a service runs: its entrypoint followed by its command.
func argv(svc map[string]any) []string {
	return append(words(svc["entrypoint"]), words(svc["command"])...)
}

// scriptWords splits a `sh -c` script into words, dropping the quotes around them;
// good enough to find the flags the script passes.
func scriptWords(args []string) []string {
	var out []string
	for _, w := range strings.Fields(strings.Join(args, " ")) {
		out = append(out, strings.Trim(w, `"'`))
	}
	return out
}

// isStolon reports whether the service runs Stolon's image.
func isStolon(svc map[string]any) bool {
	img, _ := svc["image"].(string)
	return strings.HasPrefix(img, "sorintlab/stolon:")
}

// runs reports whether the service's entrypoint or command starts binary.
func runs(svc map[string]any, binary string) bool {
	a := argv(svc)
	return len(a) > 0 && path.Base(a[0]) == binary
}

type flag struct {
	name, value string
	hasValue    bool
}

// parseFlags reads --name=value, and --name value when the next word is not a flag.
// Words that are not flags are returned as positional arguments.
func parseFlags(args []string) (flags []flag, positional []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			positional = append(positional, a)
			continue
		}
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			value, ok = args[i+1], true
			i++
		}
		flags = append(flags, flag{name: name, value: value, hasValue: ok})
	}
	return flags, positional
}

// flagValue returns the value of --name in args, and whether it is there.
func flagValue(args []string, name string) (string, bool) {
	flags, _ := parseFlags(args)
	for _, f := range flags {
		if f.name == name {
			return f.value, true
		}
	}
	return "", false
}

// env returns a service's environment, from either the mapping or the list form.
func env(svc map[string]any) map[string]string {
	out := map[string]string{}
	switch e := svc["environment"].(type) {
	case map[string]any:
		for k, v := range e {
			out[k] = fmt.Sprint(v)
		}
	case []any:
		for _, kv := range e {
			k, v, _ := strings.Cut(fmt.Sprint(kv), "=")
			out[k] = v
		}
	}
	return out
}

// sidecars returns the services that configure barnacle through its environment.
func (c compose) sidecars() []string {
	var out []string
	for _, name := range c.names {
		for k := range env(c.services[name]) {
			if strings.HasPrefix(k, "BARNACLE_") {
				out = append(out, name)
				break
			}
		}
	}
	return out
}

// keepers returns the services that run stolon-keeper.
func (c compose) keepers() []string {
	var out []string
	for _, name := range c.names {
		if runs(c.services[name], "stolon-keeper") {
			out = append(out, name)
		}
	}
	return out
}

// keeperOf returns the keeper whose network namespace the sidecar shares.
func (c compose) keeperOf(t *testing.T, sidecar string) string {
	t.Helper()
	nm, _ := c.services[sidecar]["network_mode"].(string)
	keeper, ok := strings.CutPrefix(nm, "service:")
	require.True(t, ok, "sidecar %s: network_mode is %q; want service:<keeper> so that it shares its keeper's network namespace", sidecar, nm)
	require.Contains(t, c.keepers(), keeper, "sidecar %s: network_mode names %q, which is not a service running stolon-keeper", sidecar, keeper)
	return keeper
}

// hostPath resolves a file path inside a service's container to the file on the host
// that Compose mounts there: a secret (/run/secrets/<target>) or a bind mount.
func (c compose) hostPath(t *testing.T, service, inContainer string) string {
	t.Helper()
	svc := c.services[service]
	for _, s := range listOf(svc["secrets"]) {
		source, target := "", ""
		switch s := s.(type) {
		case string:
			source, target = s, s
		case map[string]any:
			source, _ = s["source"].(string)
			target, _ = s["target"].(string)
			if target == "" {
				target = source
			}
		}
		if !strings.HasPrefix(target, "/") {
			target = "/run/secrets/" + target
		}
		if target != inContainer {
			continue
		}
		top, _ := c.doc["secrets"].(map[string]any)
		def, ok := top[source].(map[string]any)
		require.True(t, ok, "service %s uses secret %q, which the top-level secrets do not declare", service, source)
		file, ok := def["file"].(string)
		require.True(t, ok, "secret %q has no file:; the example deployment keeps its secrets as files", source)
		return filepath.Join(composeDir, file)
	}
	for _, m := range c.mounts(service) {
		if m.bind && (inContainer == m.target || strings.HasPrefix(inContainer, m.target+"/")) {
			return filepath.Join(composeDir, m.source, strings.TrimPrefix(inContainer, m.target))
		}
	}
	t.Fatalf("service %s: nothing mounts %s (neither a secret nor a bind mount)", service, inContainer)
	return ""
}

func listOf(v any) []any {
	l, _ := v.([]any)
	return l
}

type mount struct {
	source, target string
	bind, readOnly bool
}

// mounts returns a service's volumes, from the short or the long syntax.
func (c compose) mounts(service string) []mount {
	var out []mount
	for _, v := range listOf(c.services[service]["volumes"]) {
		var m mount
		switch v := v.(type) {
		case string:
			parts := strings.Split(v, ":")
			m.source, m.target = parts[0], parts[len(parts)-1]
			if len(parts) >= 2 {
				m.target = parts[1]
			}
			if len(parts) == 3 {
				m.readOnly = slices.Contains(strings.Split(parts[2], ","), "ro")
			}
			m.bind = strings.HasPrefix(m.source, ".") || strings.HasPrefix(m.source, "/")
		case map[string]any:
			m.source, _ = v["source"].(string)
			m.target, _ = v["target"].(string)
			m.bind = v["type"] == "bind"
			m.readOnly, _ = v["read_only"].(bool)
		}
		out = append(out, m)
	}
	return out
}

type portMapping struct{ host, container string }

// ports returns a service's published ports (short syntax, with or without a host IP,
// and the long syntax).
func (c compose) ports(t *testing.T, service string) []portMapping {
	t.Helper()
	var out []portMapping
	for _, p := range listOf(c.services[service]["ports"]) {
		switch p := p.(type) {
		case string:
			parts := strings.Split(strings.TrimSuffix(p, "/tcp"), ":")
			require.GreaterOrEqual(t, len(parts), 2, "service %s: port %q publishes no fixed host port", service, p)
			out = append(out, portMapping{host: parts[len(parts)-2], container: parts[len(parts)-1]})
		case map[string]any:
			out = append(out, portMapping{host: fmt.Sprint(p["published"]), container: fmt.Sprint(p["target"])})
		}
	}
	return out
}

// sidecarConfig loads a sidecar's configuration the way `barnacle agent` does, from
// its environment and command-line flags, with file paths mapped to the files on the
// host that Compose mounts there.
func (c compose) sidecarConfig(t *testing.T, sidecar string) (config.Config, error) {
	t.Helper()
	e := env(c.services[sidecar])
	for _, k := range []string{"pg-password-file", "store-password-file", "store-cert-file", "store-key", "store-ca-file"} {
		if p, ok := e[config.EnvName(k)]; ok && p != "" {
			e[config.EnvName(k)] = c.hostPath(t, sidecar, p)
		}
	}
	flags := map[string]string{}
	parsed, _ := parseFlags(barnacleArgs(t, c.services[sidecar]))
	for _, f := range parsed {
		if f.name != "config" {
			flags[f.name] = f.value
		}
	}
	return config.Load(config.Sources{
		Env:   func(k string) (string, bool) { v, ok := e[k]; return v, ok },
		Flags: flags,
	}, config.Needs{Keys: agentRequired, Agent: true})
}

// barnacleArgs returns the arguments a sidecar passes to barnacle: the Dockerfile's
// CMD unless the service sets a command.
func barnacleArgs(t *testing.T, svc map[string]any) []string {
	t.Helper()
	if ep := words(svc["entrypoint"]); len(ep) > 0 {
		require.Equal(t, barnacleBinary, ep[0], "a sidecar that sets entrypoint must still run %s", barnacleBinary)
		return append(ep[1:], words(svc["command"])...)
	}
	if svc["command"] != nil {
		return words(svc["command"])
	}
	final := finalStage(t, parseDockerfile(t))
	var cmd []string
	require.NoError(t, json.Unmarshal([]byte(final.last("CMD")), &cmd), "the Dockerfile's CMD must be in exec (JSON) form")
	return cmd
}

func TestComposeIsValid(t *testing.T) {
	c := loadCompose(t)
	require.NotEmpty(t, c.keepers(), "no service runs stolon-keeper")
	require.NotEmpty(t, c.sidecars(), "no service sets BARNACLE_* variables")
	for _, name := range c.names {
		svc := c.services[name]
		if svc["image"] == nil && svc["build"] == nil {
			t.Errorf("service %s has neither image nor build", name)
		}
		for dep := range mapOf(svc["depends_on"]) {
			if _, ok := c.services[dep]; !ok {
				t.Errorf("service %s depends on %q, which is not a service", name, dep)
			}
		}
		for _, m := range c.mounts(name) {
			if m.bind {
				if _, err := os.Stat(filepath.Join(composeDir, m.source)); err != nil {
					t.Errorf("service %s bind-mounts %s, which does not exist: %v", name, m.source, err)
				}
				continue
			}
			if _, ok := mapOf(c.doc["volumes"])[m.source]; !ok {
				t.Errorf("service %s mounts volume %q, which the top-level volumes do not declare", name, m.source)
			}
		}
	}

	// Compose interpolates $NAME everywhere, shell scripts included; a literal $ must be
	// written $$. The only interpolation meant is ${NAME:-default}.
	data, err := os.ReadFile(composeFile)
	require.NoError(t, err)
	text := regexp.MustCompile(`\$\$|\$\{[A-Z_][A-Z0-9_]*:-[^}]*\}`).ReplaceAllString(string(data), "")
	for i, line := range strings.Split(text, "\n") {
		if strings.Contains(line, "$") {
			t.Errorf("%s line %d: a $ that Compose would interpolate; write $$ for the shell, or ${NAME:-default}", composeFile, i+1)
		}
	}
}

func mapOf(v any) map[string]any {
	switch v := v.(type) {
	case map[string]any:
		return v
	case []any: // depends_on's list form
		m := map[string]any{}
		for _, s := range v {
			m[fmt.Sprint(s)] = nil
		}
		return m
	}
	return nil
}

func TestEveryKeeperHasOneSidecar(t *testing.T) {
	c := loadCompose(t)
	beside := map[string][]string{}
	for _, s := range c.sidecars() {
		k := c.keeperOf(t, s)
		beside[k] = append(beside[k], s)
		if _, ok := mapOf(c.services[s]["depends_on"])[k]; !ok {
			t.Errorf("sidecar %s shares %s's network namespace but does not depend on it", s, k)
		}
		for _, field := range []string{"ports", "hostname", "networks"} {
			if c.services[s][field] != nil {
				t.Errorf("sidecar %s sets %s, which Compose refuses with network_mode service:%s; set it on %s", s, field, k, k)
			}
		}
	}
	for _, k := range c.keepers() {
		if n := len(beside[k]); n != 1 {
			t.Errorf("keeper %s has %d barnacle sidecars %v; want exactly one (network_mode: \"service:%s\")", k, n, beside[k], k)
		}
	}
}

func TestBarnacleEnvironmentUsesRealKeys(t *testing.T) {
	c := loadCompose(t)
	known := map[string]bool{}
	for _, k := range config.Keys() {
		known[config.EnvName(k.Name)] = true
	}
	for _, name := range c.names {
		for k := range env(c.services[name]) {
			if strings.HasPrefix(k, "BARNACLE_") && !known[k] && !notKeyEnv[k] {
				t.Errorf("service %s sets %s, which is no configuration key (config.Keys); barnacle would ignore it", name, k)
			}
		}
	}
}

func TestBarnacleCommandLine(t *testing.T) {
	c := loadCompose(t)
	keys := map[string]bool{"config": true, "help": true}
	for _, k := range config.Keys() {
		keys[k.Name] = true
	}
	for _, s := range c.sidecars() {
		t.Run(s, func(t *testing.T) {
			args := barnacleArgs(t, c.services[s])
			flags, positional := parseFlags(args)
			require.Equal(t, []string{"agent"}, positional, "sidecar %s runs barnacle %v; want the agent subcommand", s, args)
			for _, f := range flags {
				if !keys[f.name] && !slices.Contains(subcommandFlags[positional[0]], f.name) {
					t.Errorf("sidecar %s passes --%s, which is neither a configuration key nor a flag of barnacle %s", s, f.name, positional[0])
				}
			}
		})
	}
}

func TestSidecarConfiguration(t *testing.T) {
	c := loadCompose(t)
	for _, s := range c.sidecars() {
		t.Run(s, func(t *testing.T) {
			cfg, err := c.sidecarConfig(t, s)
			require.NoError(t, err, "sidecar %s: `barnacle agent` would refuse this configuration", s)
			e := env(c.services[s])
			// Load fills defaults; these must be set explicitly for the agent to work here.
			for _, k := range append(slices.Clone(agentRequired), "keeper-uid", "pg-user") {
				if e[config.EnvName(k)] == "" {
					t.Errorf("sidecar %s does not set %s", s, config.EnvName(k))
				}
			}
			if e[config.EnvName("pg-password-file")] == "" && e["PGPASSWORD"] == "" && e["PGPASSFILE"] == "" {
				t.Errorf("sidecar %s sets no password: set %s (or PGPASSWORD)", s, config.EnvName("pg-password-file"))
			}
			if cfg.LeaderPolicy != config.PolicyFollowMaster {
				t.Errorf("sidecar %s has leader-policy %q; an agent beside a keeper uses %s", s, cfg.LeaderPolicy, config.PolicyFollowMaster)
			}
		})
	}
}

func TestSidecarMatchesStolon(t *testing.T) {
	c := loadCompose(t)
	var stolon []string
	for _, name := range c.names {
		if isStolon(c.services[name]) {
			stolon = append(stolon, name)
		}
	}
	for _, s := range c.sidecars() {
		t.Run(s, func(t *testing.T) {
			cfg, err := c.sidecarConfig(t, s)
			require.NoError(t, err)
			keeper := c.keeperOf(t, s)
			kargs := argv(c.services[keeper])
			uid, _ := flagValue(kargs, "uid")
			if cfg.KeeperUID != uid {
				t.Errorf("sidecar %s has keeper-uid %q but its keeper %s runs with --uid %q", s, cfg.KeeperUID, keeper, uid)
			}
			if addr, _ := flagValue(kargs, "pg-listen-address"); addr != keeper {
				t.Errorf("keeper %s has --pg-listen-address %q; want its service name %q, which clusterdata hands to the sidecar as PostgreSQL's address", keeper, addr, keeper)
			}
			if user, _ := flagValue(kargs, "pg-repl-username"); cfg.PGUser != user {
				t.Errorf("sidecar %s connects as %q but keeper %s's replication user (--pg-repl-username) is %q", s, cfg.PGUser, keeper, user)
			}
			if pw, ok := flagValue(kargs, "pg-repl-passwordfile"); !ok {
				t.Errorf("keeper %s has no --pg-repl-passwordfile", keeper)
			} else if cfg.PGPasswordFile != c.hostPath(t, keeper, pw) {
				t.Errorf("sidecar %s reads its password from %s but keeper %s's replication password is %s", s, cfg.PGPasswordFile, keeper, c.hostPath(t, keeper, pw))
			}

			for _, st := range stolon {
				args := argv(c.services[st])
				if runs(c.services[st], "sh") {
					args = scriptWords(args)
				}
				name, ok := flagValue(args, "cluster-name")
				if !ok {
					t.Errorf("stolon service %s has no --cluster-name", st)
				} else if name != cfg.ClusterName {
					t.Errorf("sidecar %s has cluster-name %q but stolon service %s has --cluster-name %q", s, cfg.ClusterName, st, name)
				}
				if b, _ := flagValue(args, "store-backend"); b != "etcdv3" {
					t.Errorf("stolon service %s has --store-backend %q; barnacle reads Stolon's keys through etcd v3 (etcdv3)", st, b)
				}
				eps, _ := flagValue(args, "store-endpoints")
				if eps != strings.Join(cfg.StoreEndpoints, ",") {
					t.Errorf("sidecar %s has store-endpoints %v but stolon service %s has --store-endpoints %q", s, cfg.StoreEndpoints, st, eps)
				}
				prefix, ok := flagValue(args, "store-prefix")
				if !ok {
					prefix = "stolon/cluster" // Stolon's default
				}
				if prefix != cfg.StorePrefix {
					t.Errorf("sidecar %s has store-prefix %q but stolon service %s uses %q", s, cfg.StorePrefix, st, prefix)
				}
			}
		})
	}
}

func TestStoreEndpointsAreEtcd(t *testing.T) {
	c := loadCompose(t)
	// The etcd services and the client URLs they listen on, by service name.
	clientPorts := map[string][]string{}
	for _, name := range c.names {
		if !runs(c.services[name], "etcd") {
			continue
		}
		listen, ok := flagValue(argv(c.services[name]), "listen-client-urls")
		require.True(t, ok, "etcd service %s has no --listen-client-urls; etcd would listen on localhost only", name)
		for _, u := range strings.Split(listen, ",") {
			pu, err := url.Parse(u)
			require.NoError(t, err, "etcd service %s: --listen-client-urls %q", name, u)
			clientPorts[name] = append(clientPorts[name], pu.Port())
		}
	}
	require.NotEmpty(t, clientPorts, "no service runs etcd")
	for _, s := range c.sidecars() {
		cfg, err := c.sidecarConfig(t, s)
		require.NoError(t, err)
		for _, ep := range cfg.StoreEndpoints {
			u, err := url.Parse(ep)
			require.NoError(t, err)
			ports, ok := clientPorts[u.Hostname()]
			switch {
			case !ok:
				t.Errorf("sidecar %s: store endpoint %s names host %q, which is no etcd service (%v)", s, ep, u.Hostname(), keysOf(clientPorts))
			case !slices.Contains(ports, u.Port()):
				t.Errorf("sidecar %s: store endpoint %s uses port %s but etcd service %s listens for clients on %v", s, ep, u.Port(), u.Hostname(), ports)
			}
		}
		if _, ok := mapOf(c.services[s]["depends_on"])[firstKey(clientPorts)]; !ok {
			t.Errorf("sidecar %s does not depend on etcd", s)
		}
	}
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func firstKey[V any](m map[string]V) string { return keysOf(m)[0] }

func TestArchiveVolumeIsShared(t *testing.T) {
	c := loadCompose(t)
	volumes := map[string]bool{}
	for _, s := range c.sidecars() {
		cfg, err := c.sidecarConfig(t, s)
		require.NoError(t, err)
		u, err := url.Parse(cfg.ArchiveURL)
		require.NoError(t, err)
		var found *mount
		for _, m := range c.mounts(s) {
			if m.target == u.Path {
				found = &m
			}
		}
		switch {
		case found == nil:
			t.Errorf("sidecar %s archives to %s but mounts nothing at %s", s, cfg.ArchiveURL, u.Path)
		case found.bind:
			t.Errorf("sidecar %s mounts the host path %s at %s; use the shared named volume", s, found.source, u.Path)
		case found.readOnly:
			t.Errorf("sidecar %s mounts the archive %s read-only; the leader writes to it", s, found.source)
		default:
			volumes[found.source] = true
		}
	}
	if len(volumes) > 1 {
		t.Errorf("the sidecars archive into %d different volumes %v; every agent must see the one archive (whoever leads writes it)", len(volumes), keysOf(volumes))
	}
}

func TestSecretFiles(t *testing.T) {
	c := loadCompose(t)
	top := mapOf(c.doc["secrets"])
	require.NotEmpty(t, top, "no top-level secrets")
	for name, def := range top {
		t.Run(name, func(t *testing.T) {
			file, _ := mapOf(def)["file"].(string)
			require.NotEmpty(t, file, "secret %s has no file", name)
			p := filepath.Join(composeDir, file)
			fi, err := os.Stat(p)
			require.NoError(t, err, "secret %s: its file is missing", name)
			require.True(t, fi.Mode().IsRegular(), "secret %s: %s is not a regular file", name, p)
			// Compose bind-mounts file secrets with the host file's owner and mode, and the
			// containers run as other users.
			if fi.Mode().Perm()&0o004 == 0 {
				t.Errorf("secret %s: %s is not readable by others (%v); the containers' users could not read it", name, p, fi.Mode().Perm())
			}
			data, err := os.ReadFile(p)
			require.NoError(t, err)
			if strings.TrimSpace(string(data)) == "" {
				t.Errorf("secret %s: %s is empty", name, p)
			}
			if strings.ContainsAny(string(data), "\r\n") {
				t.Errorf("secret %s: %s holds a line break; write it without one, since a reader that does not trim it takes it as part of the password", name, p)
			}
		})
	}
	for _, name := range c.names {
		for _, s := range listOf(c.services[name]["secrets"]) {
			src, ok := s.(string)
			if !ok {
				src, _ = mapOf(s)["source"].(string)
			}
			if _, ok := top[src]; !ok {
				t.Errorf("service %s uses secret %q, which the top-level secrets do not declare", name, src)
			}
		}
	}
	// Every password file a keeper is given is mounted.
	for _, k := range c.keepers() {
		for _, f := range []string{"pg-su-passwordfile", "pg-repl-passwordfile"} {
			if p, ok := flagValue(argv(c.services[k]), f); ok {
				if _, err := os.Stat(c.hostPath(t, k, p)); err != nil {
					t.Errorf("keeper %s: --%s %s: %v", k, f, p, err)
				}
			}
		}
	}
}

// metricsPort returns the port of a sidecar's metrics-listen-address.
func metricsPort(t *testing.T, c compose, sidecar string) string {
	t.Helper()
	cfg, err := c.sidecarConfig(t, sidecar)
	require.NoError(t, err)
	_, port, err := net.SplitHostPort(cfg.MetricsListenAddress)
	require.NoError(t, err)
	return port
}

func TestHealthcheck(t *testing.T) {
	c := loadCompose(t)
	final := finalStage(t, parseDockerfile(t))
	served := []string{"/healthz", "/readyz"}
	for _, s := range c.sidecars() {
		t.Run(s, func(t *testing.T) {
			hc := mapOf(c.services[s]["healthcheck"])
			require.NotNil(t, hc, "sidecar %s has no healthcheck", s)
			test := words(hc["test"])
			require.NotEmpty(t, test, "sidecar %s: empty healthcheck test", s)
			require.Contains(t, []string{"CMD", "CMD-SHELL"}, test[0], "sidecar %s: healthcheck test must start with CMD or CMD-SHELL", s)
			// CMD runs test[1:] as is; CMD-SHELL runs test[1] with sh -c, commands
			// joined by && (the image is Debian slim, so it has sh).
			cmds := [][]string{test[1:]}
			if test[0] == "CMD-SHELL" {
				require.Len(t, test, 2, "sidecar %s: CMD-SHELL takes one shell string", s)
				cmds = nil
				for _, c := range strings.Split(test[1], "&&") {
					cmds = append(cmds, strings.Fields(c))
				}
			}
			var targets []*url.URL
			for _, cmd := range cmds {
				require.NotEmpty(t, cmd, "sidecar %s: empty command in the healthcheck %v", s, test)
				if tool := path.Base(cmd[0]); !strings.Contains(final.text(), tool) {
					t.Errorf("sidecar %s: the healthcheck runs %s, which the Dockerfile's final stage does not install", s, tool)
				}
				for _, w := range cmd[1:] {
					if u, err := url.Parse(w); err == nil && u.Scheme == "http" {
						targets = append(targets, u)
					}
				}
			}
			require.NotEmpty(t, targets, "sidecar %s: the healthcheck %v fetches no http:// URL", s, test)
			var paths []string
			for _, target := range targets {
				paths = append(paths, target.Path)
				if p := metricsPort(t, c, s); target.Port() != p {
					t.Errorf("sidecar %s: the healthcheck asks port %s but the agent listens on port %s (metrics-listen-address)", s, target.Port(), p)
				}
				if h := target.Hostname(); h != "127.0.0.1" && h != "localhost" {
					t.Errorf("sidecar %s: the healthcheck asks host %s; the check runs in the agent's own network namespace, use 127.0.0.1", s, h)
				}
			}
			sort.Strings(paths)
			if !slices.Equal(paths, served) {
				t.Errorf("sidecar %s: the healthcheck asks for %v; want both %v (alive, and ready)", s, paths, served)
			}
		})
	}
}

func TestMetricsPortsArePublished(t *testing.T) {
	c := loadCompose(t)
	hostPorts := map[string]string{} // host port -> service publishing it
	for _, name := range c.names {
		for _, p := range c.ports(t, name) {
			if other, ok := hostPorts[p.host]; ok {
				t.Errorf("host port %s is published by both %s and %s", p.host, other, name)
			}
			hostPorts[p.host] = name
		}
	}
	for _, s := range c.sidecars() {
		keeper := c.keeperOf(t, s)
		port := metricsPort(t, c, s)
		published := false
		for _, p := range c.ports(t, keeper) {
			if p.container == port {
				published = true
				if _, err := strconv.Atoi(p.host); err != nil {
					t.Errorf("keeper %s publishes %s's metrics port on host port %q; want a fixed number", keeper, s, p.host)
				}
			}
		}
		if !published {
			t.Errorf("sidecar %s listens on port %s but its keeper %s (whose network namespace it shares) does not publish container port %s", s, port, keeper, port)
		}
	}
}

func TestStolonInit(t *testing.T) {
	c := loadCompose(t)
	var inits []string
	for _, name := range c.names {
		if isStolon(c.services[name]) && strings.Contains(strings.Join(argv(c.services[name]), " "), " init ") {
			inits = append(inits, name)
		}
	}
	require.Len(t, inits, 1, "want one service that runs `stolonctl init`")
	name := inits[0]
	script := strings.Join(argv(c.services[name]), " ")
	// stolonctl init on a cluster that exists replaces its clusterdata with a new cluster
	// UID and every keeper starts over; a second `compose up` must not do that.
	if !strings.Contains(script, "clusterdata read") {
		t.Errorf("service %s runs stolonctl init without first checking for existing clusterdata", name)
	}
	specPath, ok := flagValue(scriptWords(argv(c.services[name])), "file")
	require.True(t, ok, "service %s: stolonctl init has no --file with the cluster spec", name)
	var spec map[string]any
	data, err := os.ReadFile(c.hostPath(t, name, specPath))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &spec), "the cluster spec is not valid JSON")
	if spec["initMode"] != "new" {
		t.Errorf("cluster spec initMode is %v; want new", spec["initMode"])
	}
	if v, ok := spec["synchronousReplication"]; ok && v != false {
		t.Errorf("cluster spec synchronousReplication is %v; want false (Stolon cannot name barnacle a synchronous standby)", v)
	}
	// pgHBA unset keeps Stolon's default `host all all` lines, which the agent's SQL
	// connections as the replication user need.
	if _, ok := spec["pgHBA"]; ok {
		t.Errorf("cluster spec sets pgHBA; leave it unset so that Stolon's default lines let the replication user in")
	}
	if _, ok := mapOf(c.services[name]["depends_on"])[firstEtcd(c)]; !ok {
		t.Errorf("service %s does not depend on etcd", name)
	}
}

func firstEtcd(c compose) string {
	for _, name := range c.names {
		if runs(c.services[name], "etcd") {
			return name
		}
	}
	return ""
}

// stage is one FROM section of a Dockerfile, its instructions with continuation lines
// joined.
type stage struct {
	from, name string
	lines      []string
}

func (s stage) text() string { return strings.Join(s.lines, "\n") }

// last returns the arguments of the last instruction named instr.
func (s stage) last(instr string) string {
	out := ""
	for _, l := range s.lines {
		if rest, ok := strings.CutPrefix(l, instr+" "); ok {
			out = strings.TrimSpace(rest)
		}
	}
	return out
}

func parseDockerfile(t *testing.T) []stage {
	t.Helper()
	data, err := os.ReadFile(dockerfile)
	require.NoError(t, err, "read the Dockerfile")
	var stages []stage
	var cur strings.Builder
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "#") || (l == "" && cur.Len() == 0) {
			continue
		}
		if c, ok := strings.CutSuffix(l, "\\"); ok {
			cur.WriteString(c + " ")
			continue
		}
		cur.WriteString(l)
		line := strings.Join(strings.Fields(cur.String()), " ")
		cur.Reset()
		if line == "" {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "FROM "); ok {
			f := strings.Fields(rest)
			st := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			stages = append(stages, st)
			continue
		}
		require.NotEmpty(t, stages, "Dockerfile: %q before the first FROM", line)
		stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, line)
	}
	return stages
}

func finalStage(t *testing.T, stages []stage) stage {
	t.Helper()
	require.NotEmpty(t, stages, "the Dockerfile has no FROM")
	return stages[len(stages)-1]
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	require.GreaterOrEqual(t, len(stages), 2, "want a multi-stage Dockerfile (a Go builder, then a small runtime image)")
	final := finalStage(t, stages)

	var builder *stage
	for i := range stages[:len(stages)-1] {
		if strings.Contains(stages[i].text(), "go build") {
			builder = &stages[i]
		}
	}
	require.NotNil(t, builder, "no stage runs go build")
	t.Run("builder", func(t *testing.T) {
		mod, err := os.ReadFile("../go.mod")
		require.NoError(t, err)
		m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
		require.NotNil(t, m, "go.mod has no go directive")
		if want := "golang:" + string(m[1]); !strings.HasPrefix(builder.from, want) {
			t.Errorf("the builder is FROM %s; go.mod asks for Go %s, so use %s", builder.from, m[1], want)
		}
		build := ""
		for _, l := range builder.lines {
			if strings.Contains(l, "go build") {
				build = l
			}
		}
		for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=", "./cmd/barnacle"} {
			if !strings.Contains(build, want) {
				t.Errorf("the go build line %q lacks %s", build, want)
			}
		}
	})
	t.Run("final stage", func(t *testing.T) {
		user := final.last("USER")
		require.NotEmpty(t, user, "the final stage has no USER, so barnacle would run as root")
		name, _, _ := strings.Cut(user, ":")
		if name == "root" || name == "0" {
			t.Errorf("the final stage runs as %s; use a non-root user", user)
		}
		copied := false
		for _, l := range final.lines {
			if strings.HasPrefix(l, "COPY --from="+builder.name+" ") && strings.HasSuffix(l, " "+barnacleBinary) {
				copied = true
			}
		}
		if !copied {
			t.Errorf("the final stage does not COPY --from=%s the binary to %s", builder.name, barnacleBinary)
		}
		var ep, cmd []string
		require.NoError(t, json.Unmarshal([]byte(final.last("ENTRYPOINT")), &ep), "ENTRYPOINT must be in exec (JSON) form, so that barnacle is PID 1 and gets SIGTERM")
		require.NoError(t, json.Unmarshal([]byte(final.last("CMD")), &cmd), "CMD must be in exec (JSON) form")
		require.Equal(t, []string{barnacleBinary}, ep)
		require.Equal(t, []string{"agent"}, cmd)
		var def string
		for _, k := range config.Keys() {
			if k.Name == "metrics-listen-address" {
				def = k.Default
			}
		}
		_, port, err := net.SplitHostPort(def)
		require.NoError(t, err)
		if !slices.Contains(strings.Fields(final.last("EXPOSE")), port) {
			t.Errorf("the final stage does not EXPOSE %s, the default metrics-listen-address port", port)
		}
	})
}

// TestDockerignoreKeepsSources checks that the build context holds every package the
// binary is built from.
func TestDockerignoreKeepsSources(t *testing.T) {
	data, err := os.ReadFile(dockerignor)
	require.NoError(t, err)
	var patterns []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			require.False(t, strings.HasPrefix(l, "!"), ".dockerignore: this test does not understand exceptions (%s)", l)
			patterns = append(patterns, strings.TrimPrefix(l, "/"))
		}
	}
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	out, err := exec.Command("go", "list", "-e", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", "../cmd/barnacle").Output()
	require.NoError(t, err, "go list the packages of ./cmd/barnacle")
	needed := []string{"go.mod", "go.sum"}
	for _, dir := range strings.Fields(string(out)) {
		if rel, err := filepath.Rel(root, dir); err == nil && !strings.HasPrefix(rel, "..") {
			needed = append(needed, filepath.ToSlash(rel))
		}
	}
	require.Contains(t, needed, "cmd/barnacle")
	for _, p := range needed {
		for _, pat := range patterns {
			if ignored(pat, p) {
				t.Errorf(".dockerignore pattern %q leaves %s out of the build context; the binary needs it", pat, p)
			}
		}
	}
}

// ignored reports whether a .dockerignore pattern excludes p: the pattern matches p or
// one of its parent directories; a leading **/ matches at any depth.
func ignored(pattern, p string) bool {
	parts := strings.Split(p, "/")
	for i := 1; i <= len(parts); i++ {
		prefix := strings.Join(parts[:i], "/")
		if ok, _ := path.Match(pattern, prefix); ok {
			return true
		}
		if rest, ok := strings.CutPrefix(pattern, "**/"); ok {
			for j := 0; j < i; j++ {
				if ok, _ := path.Match(rest, strings.Join(parts[j:i], "/")); ok {
					return true
				}
			}
		}
	}
	return false
}
