package deploy_test

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/barnacle-pg/barnacle/pkg/config"
)

// TestSidecarVolumes: each sidecar mounts its keeper's data read-only and restore-root
// on a writable volume of its own.
func TestSidecarVolumes(t *testing.T) {
	c := loadCompose(t)
	roots := map[string]string{}
	for _, s := range c.sidecars() {
		keeper := c.keeperOf(t, s)
		cfg, err := c.sidecarConfig(t, s)
		require.NoError(t, err)
		for _, km := range c.mounts(keeper) {
			for _, m := range c.mounts(s) {
				if m.source == km.source && !m.readOnly {
					t.Errorf("sidecar %s mounts its keeper's volume %s writable; the agent never writes a live keeper's data (:ro)", s, m.source)
				}
			}
		}
		if cfg.RestoreRoot == "" {
			continue
		}
		found := false
		for _, m := range c.mounts(s) {
			if m.target == cfg.RestoreRoot {
				found = true
				if m.readOnly {
					t.Errorf("sidecar %s: restore-root %s is mounted read-only", s, cfg.RestoreRoot)
				}
				if other, ok := roots[m.source]; ok {
					t.Errorf("sidecars %s and %s share the restore volume %s", other, s, m.source)
				}
				roots[m.source] = s
			}
		}
		if !found {
			t.Errorf("sidecar %s: restore-root %s is not a mounted volume", s, cfg.RestoreRoot)
		}
	}
}

// TestS3Override checks docker-compose.s3.yml as Compose merges it over the main file.
func TestS3Override(t *testing.T) {
	c := loadCompose(t)
	data, err := os.ReadFile(filepath.Join(composeDir, "docker-compose.s3.yml"))
	require.NoError(t, err)
	var over struct {
		Services map[string]map[string]any `yaml:"services"`
		Secrets  map[string]map[string]any `yaml:"secrets"`
	}
	require.NoError(t, yaml.Unmarshal(data, &over), "docker-compose.s3.yml is not valid YAML")
	s3 := over.Services["s3"]
	require.NotNil(t, s3, "no s3 service")
	port, ok := flagValue(words(s3["command"]), "port")
	require.True(t, ok, "the s3 service has no --port")
	port = strings.TrimPrefix(port, ":")

	// The example keys the server starts with are the ones the sidecars read.
	envFile, err := os.ReadFile(filepath.Join(composeDir, s3["env_file"].(string)))
	require.NoError(t, err)
	creds, err := os.ReadFile(filepath.Join(composeDir, over.Secrets["s3_credentials"]["file"].(string)))
	require.NoError(t, err)
	for _, pair := range [][2]string{{"ROOT_ACCESS_KEY_ID=", "aws_access_key_id = "}, {"ROOT_SECRET_ACCESS_KEY=", "aws_secret_access_key = "}} {
		var a, b string
		for _, l := range strings.Split(string(envFile), "\n") {
			if v, ok := strings.CutPrefix(l, pair[0]); ok {
				a = v
			}
		}
		for _, l := range strings.Split(string(creds), "\n") {
			if v, ok := strings.CutPrefix(l, pair[1]); ok {
				b = v
			}
		}
		require.NotEmpty(t, a, "s3 env_file lacks %s", pair[0])
		if a != b {
			t.Errorf("the S3 server's %s%q differs from the sidecars' credentials file %s%q", pair[0], a, pair[1], b)
		}
	}

	for _, s := range c.sidecars() {
		o := over.Services[s]
		if o == nil {
			t.Errorf("docker-compose.s3.yml does not switch sidecar %s to S3", s)
			continue
		}
		e := env(c.services[s])
		for k, v := range env(o) {
			if strings.HasPrefix(k, "BARNACLE_") {
				if !slicesContainsKey(k) {
					t.Errorf("sidecar %s: %s is no configuration key", s, k)
				}
			}
			e[k] = v
		}
		e[config.EnvName("pg-password-file")] = c.hostPath(t, s, e[config.EnvName("pg-password-file")])
		cfg, err := config.Load(config.Sources{Env: func(k string) (string, bool) { v, ok := e[k]; return v, ok }}, config.Needs{Keys: agentRequired, Agent: true})
		require.NoError(t, err, "sidecar %s with the S3 override", s)
		// Drills still run: the override keeps the drill settings, and the restored
		// server's wal-fetch reads the same credentials file as the agent (it runs
		// as the same user, from the agent's environment).
		keeper := c.keeperOf(t, s)
		su, _ := flagValue(argv(c.services[keeper]), "pg-su-username")
		checkDrillConfig(t, "sidecar "+s+" with the S3 override", cfg, stolonPGMajor(t, fmt.Sprint(c.services[keeper]["image"])), []string{su})
		u, err := url.Parse(cfg.ArchiveURL)
		require.NoError(t, err)
		require.Equal(t, "s3", u.Scheme)
		ep, err := url.Parse(u.Query().Get("endpoint"))
		require.NoError(t, err)
		if ep.Hostname() != "s3" || ep.Port() != port {
			t.Errorf("sidecar %s: S3 endpoint %s; the s3 service listens on s3:%s", s, ep, port)
		}
		secrets := listOf(o["secrets"])
		have := map[string]bool{}
		for _, x := range secrets {
			have[x.(string)] = true
		}
		if !have["s3_credentials"] || !have["pg_repl_password"] {
			t.Errorf("sidecar %s: the override's secrets %v must keep pg_repl_password and add s3_credentials (a list replaces the base's)", s, secrets)
		}
		if e["AWS_SHARED_CREDENTIALS_FILE"] != "/run/secrets/s3_credentials" {
			t.Errorf("sidecar %s: AWS_SHARED_CREDENTIALS_FILE is %q", s, e["AWS_SHARED_CREDENTIALS_FILE"])
		}
	}
}

func slicesContainsKey(env string) bool {
	for _, k := range config.Keys() {
		if config.EnvName(k.Name) == env {
			return true
		}
	}
	return false
}
