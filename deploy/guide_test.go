package deploy_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

const guide = "../docs/integration.md"

// fence is one fenced block of the guide.
type fence struct {
	lang string
	text string
}

func guideFences(t *testing.T) []fence {
	t.Helper()
	data, err := os.ReadFile(guide)
	require.NoError(t, err)
	var out []fence
	var cur *fence
	for _, l := range strings.Split(string(data), "\n") {
		if lang, ok := strings.CutPrefix(l, "```"); ok {
			if cur == nil {
				cur = &fence{lang: strings.TrimSpace(lang)}
			} else {
				out = append(out, *cur)
				cur = nil
			}
			continue
		}
		if cur != nil {
			cur.text += l + "\n"
		}
	}
	require.Nil(t, cur, "%s: an unclosed code fence", guide)
	return out
}

// shellCommands splits sh blocks into commands, joining continuation lines and
// dropping comments.
func shellCommands(fences []fence) []string {
	var out []string
	for _, f := range fences {
		if f.lang != "sh" {
			continue
		}
		cur := ""
		for _, l := range strings.Split(f.text, "\n") {
			if i := strings.Index(l, "  #"); i >= 0 {
				l = l[:i]
			}
			if strings.HasPrefix(strings.TrimSpace(l), "#") {
				continue
			}
			if c, ok := strings.CutSuffix(l, "\\"); ok {
				cur += c + " "
				continue
			}
			cur += l
			if strings.TrimSpace(cur) != "" {
				out = append(out, strings.TrimSpace(cur))
			}
			cur = ""
		}
	}
	return out
}

// shellWords splits a command line, honouring single and double quotes.
func shellWords(s string) []string {
	var out []string
	var cur strings.Builder
	in := rune(0)
	has := false
	for _, r := range s {
		switch {
		case in != 0 && r == in:
			in = 0
		case in != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			in, has = r, true
		case r == ' ' || r == '\t':
			if has || cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
				has = false
			}
		default:
			cur.WriteRune(r)
		}
	}
	if has || cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

func buildBarnacle(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "barnacle")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/barnacle")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "build barnacle: %s", out)
	return bin
}

// TestIntegrationGuide checks the commands and documents of docs/integration.md: every
// barnacle command names a real subcommand and only flags it has, the YAML
// configuration loads, the stolonctl init JSON is the one test/e2e/restore_test.go runs,
// the etcd restore request decodes as the agent decodes it, the etcd role commands name
// barnacle's key prefixes, and every metric named exists.
func TestIntegrationGuide(t *testing.T) {
	fences := guideFences(t)
	cmds := shellCommands(fences)
	require.NotEmpty(t, cmds)
	bin := buildBarnacle(t)

	helpFlags := map[string]map[string]bool{}
	flagsOf := func(sub string) map[string]bool {
		if f, ok := helpFlags[sub]; ok {
			return f
		}
		f := map[string]bool{}
		// A subcommand's help lists its own flags; the global ones
		// (--config and the configuration keys) are listed once, by
		// barnacle --help.
		for _, args := range [][]string{{sub, "--help"}, {"--help"}} {
			var stdout bytes.Buffer
			cmd := exec.Command(bin, args...)
			cmd.Stdout = &stdout
			require.NoError(t, cmd.Run(), "barnacle %s --help: is %s a barnacle command?", sub, sub)
			for _, m := range regexp.MustCompile(`--([a-z][a-z0-9-]*)`).FindAllStringSubmatch(stdout.String(), -1) {
				f[m[1]] = true
			}
		}
		helpFlags[sub] = f
		return f
	}

	var barnacleCmds, stolonInits, etcdPuts, roleCmds, kubectlCmds int
	restoreRoot := kubeRestoreRoot(t)
	for _, line := range cmds {
		w := shellWords(line)
		// kubectl: the files it applies exist; what it runs in a pod
		// (after --) is checked as if run here.
		inPod := false
		if w[0] == "kubectl" {
			kubectlCmds++
			checkKubectl(t, line, w)
			i := slicesIndex(w, "--")
			if i < 0 {
				continue
			}
			w, inPod = w[i+1:], true
			require.NotEmpty(t, w, "%q runs nothing", line)
			if filepath.Base(w[0]) == "barnacle" {
				w[0] = "barnacle"
			}
		}
		switch {
		case w[0] == "barnacle" && inPod && len(w) > 1 && w[1] == "restore" && slicesIndex(w, "--via-etcd") > 0:
			// The agent in the pod writes below its restore-root.
			dir, _ := flagValue(w, "target-dir")
			if !strings.HasPrefix(dir, restoreRoot+"/") {
				t.Errorf("%q: --target-dir %s is not below the Kubernetes agents' restore-root %s", line, dir, restoreRoot)
			}
			fallthrough
		case w[0] == "barnacle":
			barnacleCmds++
			require.GreaterOrEqual(t, len(w), 2, "%q names no subcommand", line)
			sub := w[1]
			known := flagsOf(sub)
			flags, _ := parseFlags(w[2:])
			for _, f := range flags {
				if !known[f.name] {
					t.Errorf("%q: barnacle %s has no flag --%s", line, sub, f.name)
				}
			}
		case w[0] == "stolonctl":
			for i, a := range w {
				if a == "init" {
					stolonInits++
					require.Greater(t, len(w), i+1, "%q: init without a spec", line)
					checkStolonInit(t, w[i+1])
				}
				if a == "--patch" {
					require.True(t, json.Valid([]byte(w[i+1])), "%q: the patch is not valid JSON", line)
				}
			}
			for _, f := range []string{"cluster-name", "store-backend", "store-endpoints"} {
				if _, ok := flagValue(w, f); !ok {
					t.Errorf("%q has no --%s", line, f)
				}
			}
		case w[0] == "etcdctl" && slicesIndex(w, "put") > 0:
			etcdPuts++
			i := slicesIndex(w, "put")
			key, value := w[i+1], w[i+2]
			require.True(t, strings.HasPrefix(key, "barnacle/stolon-cluster/requests/restore/"), "%q: not a restore request key", line)
			var req request.Restore
			dec := json.NewDecoder(strings.NewReader(value))
			dec.DisallowUnknownFields()
			require.NoError(t, dec.Decode(&req), "%q: the request does not decode as the agent decodes it", line)
			require.NotEmpty(t, req.Keeper)
			require.NotEmpty(t, req.TargetDir)
		case w[0] == "etcdctl" && len(w) > 1 && w[1] == "role" && slicesIndex(w, "grant-permission") > 0:
			roleCmds++
			prefix := w[len(w)-1]
			if !strings.HasPrefix(prefix, "barnacle/stolon-cluster/") && prefix != "stolon/cluster/stolon-cluster/" {
				t.Errorf("%q: grants on %s, which is neither barnacle's nor Stolon's prefix", line, prefix)
			}
		}
	}
	require.GreaterOrEqual(t, barnacleCmds, 8, "barnacle commands found")
	require.Equal(t, 3, stolonInits, "stolonctl init commands (PITR by hand, PITR in a Kubernetes pod, standby cluster)")
	require.GreaterOrEqual(t, kubectlCmds, 6, "kubectl commands found")
	require.Equal(t, 1, etcdPuts, "etcdctl put commands")
	require.GreaterOrEqual(t, roleCmds, 4, "etcdctl role grant-permission commands")

	t.Run("configuration file", func(t *testing.T) {
		var found bool
		for _, f := range fences {
			if f.lang != "yaml" || !strings.Contains(f.text, "cluster-name:") {
				continue
			}
			found = true
			var raw map[string]any
			require.NoError(t, yaml.Unmarshal([]byte(f.text), &raw))
			file := filepath.Join(t.TempDir(), "barnacle.yaml")
			require.NoError(t, os.WriteFile(file, []byte(f.text), 0o600))
			pw := filepath.Join(t.TempDir(), "pw")
			require.NoError(t, os.WriteFile(pw, []byte("x"), 0o600))
			env := map[string]string{config.EnvName("pg-password-file"): pw, config.EnvName("keeper-uid"): "keeper0"}
			_, err := config.Load(config.Sources{File: file, Env: func(k string) (string, bool) { v, ok := env[k]; return v, ok }},
				config.Needs{Keys: agentRequired, Agent: true})
			require.NoError(t, err, "the guide's configuration file")
		}
		require.True(t, found, "no barnacle configuration file in the guide")
	})

	t.Run("prometheus rules", func(t *testing.T) {
		for _, f := range fences {
			if f.lang == "yaml" && strings.Contains(f.text, "groups:") {
				var rules struct {
					Groups []struct {
						Rules []struct{ Alert, Expr string }
					}
				}
				require.NoError(t, yaml.Unmarshal([]byte(f.text), &rules))
				require.NotEmpty(t, rules.Groups)
				for _, r := range rules.Groups[0].Rules {
					require.NotEmpty(t, r.Alert)
					require.Contains(t, r.Expr, "barnacle_", r.Alert)
				}
			}
		}
	})

	t.Run("metrics exist", func(t *testing.T) {
		data, err := os.ReadFile(guide)
		require.NoError(t, err)
		var src strings.Builder
		for _, dir := range []string{"../agent", "../coordinator", "../pkg/storage/instrument", "../pkg/request"} {
			files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
			for _, f := range files {
				b, err := os.ReadFile(f)
				require.NoError(t, err)
				src.Write(b)
			}
		}
		for _, m := range regexp.MustCompile(`barnacle_[a-z_]+[a-z]`).FindAllString(string(data), -1) {
			if strings.Contains(src.String(), `"`+m+`"`) {
				continue
			}
			rest := strings.TrimPrefix(m, "barnacle_")
			sub, name, _ := strings.Cut(rest, "_")
			defined := regexp.MustCompile(`Subsystem: *"` + sub + `", *Name: *"` + name + `"`).MatchString(src.String())
			// The agent's wal gauges go through a helper that adds the subsystem.
			if !defined && sub == "wal" {
				defined = regexp.MustCompile(`gauge\("` + name + `"`).MatchString(src.String())
			}
			if !defined {
				t.Errorf("the guide names metric %s, which barnacle does not define", m)
			}
		}
	})
}

// checkKubectl checks that kubectl apply names manifests (-f) and
// kustomizations (-k) of the repository.
func checkKubectl(t *testing.T, line string, w []string) {
	t.Helper()
	if len(w) < 2 || w[1] != "apply" {
		return
	}
	for i := 2; i+1 < len(w); i++ {
		switch w[i] {
		case "-f":
			assert.FileExists(t, filepath.Join("..", w[i+1]), "%q applies a file the repository lacks", line)
		case "-k":
			assert.FileExists(t, filepath.Join("..", w[i+1], "kustomization.yaml"), "%q applies a kustomization the repository lacks", line)
		}
	}
}

// kubeRestoreRoot is the restore-root of the Kubernetes agents' ConfigMap.
func kubeRestoreRoot(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(kubeDir, "configmap.yaml"))
	require.NoError(t, err)
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	require.NoError(t, yaml.Unmarshal(data, &cm))
	var cfg struct {
		RestoreRoot string `yaml:"restore-root"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(cm.Data["barnacle.yaml"]), &cfg))
	require.NotEmpty(t, cfg.RestoreRoot)
	return cfg.RestoreRoot
}

func slicesIndex(w []string, s string) int {
	for i, x := range w {
		if x == s {
			return i
		}
	}
	return -1
}

// checkStolonInit checks the guide's stolonctl init spec: it decodes as Stolon's
// ClusterSpec fields the harness knows, and with the binary, the config path and the
// target time taken out it is the format test/e2e/restore_test.go runs.
func checkStolonInit(t *testing.T, spec string) {
	t.Helper()
	if strings.Contains(spec, `"role":"standby"`) {
		checkStolonStandbyInit(t, spec)
		return
	}
	var init testenv.StolonInit
	dec := json.NewDecoder(strings.NewReader(spec))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&init), "the guide's stolonctl init spec")
	require.Equal(t, "pitr", init.InitMode)
	require.NotNil(t, init.PITRConfig)
	re := regexp.MustCompile(`^(\S+) restore --config (\S+) --target-dir %d --data-only --target-time (\S+)$`)
	m := re.FindStringSubmatch(init.PITRConfig.DataRestoreCommand)
	require.NotNil(t, m, "dataRestoreCommand %q", init.PITRConfig.DataRestoreCommand)
	bin, cfg := m[1], m[2]
	require.NotNil(t, init.PITRConfig.RecoveryTargetSettings)
	when := init.PITRConfig.RecoveryTargetSettings.RecoveryTargetTime
	require.NotEmpty(t, when)
	// barnacle picks the backup for the same target PostgreSQL stops at.
	require.Equal(t, when, m[3], "dataRestoreCommand's --target-time and recoveryTargetTime")

	format := spec
	for _, r := range []struct{ from, to string }{
		{"%d", "%%d"}, {"%f", "%%f"}, {"%p", "%%p"},
		{bin + " ", "%s "}, {cfg, "%s"}, {when, "%s"},
	} {
		format = strings.ReplaceAll(format, r.from, r.to)
	}
	e2e, err := os.ReadFile("../test/e2e/restore_test.go")
	require.NoError(t, err)
	require.Contains(t, string(e2e), "`"+format+"`", "the guide's stolonctl init JSON differs from the one test/e2e/restore_test.go runs")
}

// checkStolonStandbyInit checks the guide's standby cluster init: Stolon's
// ClusterSpec fields for a standby cluster initialised by PITR, and its
// barnacle commands in the form test/e2e/standby_test.go runs them.
func checkStolonStandbyInit(t *testing.T, spec string) {
	t.Helper()
	type recovery struct {
		RestoreCommand string `json:"restoreCommand"`
	}
	var init struct {
		Role       string `json:"role"`
		InitMode   string `json:"initMode"`
		PITRConfig struct {
			DataRestoreCommand      string    `json:"dataRestoreCommand"`
			ArchiveRecoverySettings *recovery `json:"archiveRecoverySettings"`
		} `json:"pitrConfig"`
		StandbyConfig struct {
			ArchiveRecoverySettings *recovery `json:"archiveRecoverySettings"`
		} `json:"standbyConfig"`
		PGParameters map[string]string `json:"pgParameters"`
	}
	dec := json.NewDecoder(strings.NewReader(spec))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&init), "the guide's standby cluster spec")
	require.Equal(t, "standby", init.Role)
	require.Equal(t, "pitr", init.InitMode)
	m := regexp.MustCompile(`^(\S+) restore --config (\S+) --target-dir %d --data-only$`).FindStringSubmatch(init.PITRConfig.DataRestoreCommand)
	require.NotNil(t, m, "dataRestoreCommand %q", init.PITRConfig.DataRestoreCommand)
	bin, cfg := m[1], m[2]
	fetch := bin + " wal-fetch --config " + cfg + " %f %p"
	require.NotNil(t, init.PITRConfig.ArchiveRecoverySettings)
	require.Equal(t, fetch, init.PITRConfig.ArchiveRecoverySettings.RestoreCommand)
	require.NotNil(t, init.StandbyConfig.ArchiveRecoverySettings, "standbyConfig.archiveRecoverySettings: how the standby cluster follows")
	require.Equal(t, fetch, init.StandbyConfig.ArchiveRecoverySettings.RestoreCommand)
	require.Equal(t, "1s", init.PGParameters["wal_retrieve_retry_interval"])
	e2e, err := os.ReadFile("../test/e2e/standby_test.go")
	require.NoError(t, err)
	for _, format := range []string{`"%s restore --config %s --target-dir %s --data-only"`, `"%s wal-fetch --config %s %%f %%p"`, `wal_retrieve_retry_interval = '1s'`} {
		require.Contains(t, string(e2e), format, "the guide's standby cluster commands differ from those test/e2e/standby_test.go runs")
	}
}
