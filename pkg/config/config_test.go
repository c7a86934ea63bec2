package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func noEnv(string) (string, bool) { return "", false }

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

var agentNeeds = Needs{Keys: []string{"cluster-name", "store-endpoints"}, Agent: true}

func TestLoadLayers(t *testing.T) {
	c, err := Load(Sources{
		File:  "testdata/good.yaml",
		Env:   envOf(map[string]string{"BARNACLE_LEASE_TTL": "20s", "BARNACLE_LOG_LEVEL": "debug"}),
		Flags: map[string]string{"log-level": "warn"},
	}, agentNeeds)
	require.NoError(t, err)
	assert.Equal(t, "stolon-cluster", c.ClusterName)
	assert.Equal(t, []string{"http://127.0.0.1:2379", "http://127.0.0.2:2379"}, c.StoreEndpoints)
	assert.Equal(t, 20*time.Second, c.LeaseTTL, "env overrides the file")
	assert.Equal(t, "warn", c.LogLevel, "a flag overrides env")
	assert.Equal(t, "json", c.LogFormat)
	assert.Equal(t, 30*time.Second, c.LeaderTakeoverDelay, "default kept")
	assert.Equal(t, "stolon/cluster", c.StorePrefix)
	assert.Equal(t, "env BARNACLE_LEASE_TTL", c.Sources["lease-ttl"])
	assert.Equal(t, "flag --log-level", c.Sources["log-level"])
	assert.Equal(t, "file testdata/good.yaml line 1", c.Sources["cluster-name"])
	assert.Equal(t, "file:///var/lib/barnacle", c.ArchiveURL)
	assert.Equal(t, "stolon_barnacle", c.StreamingSlotName())
	assert.False(t, c.StandbySlots)
	assert.Equal(t, "zstd", c.Compression)
	assert.Equal(t, "crc32c", c.ManifestChecksums, "default kept")
}

func TestManifestChecksumsAnyCase(t *testing.T) {
	c, err := Load(Sources{
		File:  "testdata/good.yaml",
		Flags: map[string]string{"manifest-checksums": "SHA256"},
	}, agentNeeds)
	require.NoError(t, err)
	assert.Equal(t, "sha256", c.ManifestChecksums, "as pg_basebackup takes it")
}

func TestBadConfigFiles(t *testing.T) {
	cases := map[string][]string{
		"unknown-key.bad.yaml":      {`store_endpoints (file testdata/unknown-key.bad.yaml line 2): unknown key; did you mean "store-endpoints"?`},
		"typo-key.bad.yaml":         {`lease-tll (file testdata/typo-key.bad.yaml line 2): unknown key; did you mean "lease-ttl"?`},
		"bad-duration.bad.yaml":     {`lease-ttl (file testdata/bad-duration.bad.yaml line 2): invalid duration "ten seconds"`},
		"bad-endpoint.bad.yaml":     {`store-endpoints (file testdata/bad-endpoint.bad.yaml line 2): invalid endpoint "127.0.0.1:2379": use http://host:port`},
		"missing-cluster.bad.yaml":  {`cluster-name: required; set "cluster-name" in the config file, BARNACLE_CLUSTER_NAME, or --cluster-name`},
		"not-mapping.bad.yaml":      {"the top level must be a mapping"},
		"nested.bad.yaml":           {"cluster-name (file testdata/nested.bad.yaml line 1): must be a value or a list of values, not a mapping"},
		"duplicate.bad.yaml":        {"set twice"},
		"bad-yaml.bad.yaml":         {"not valid YAML"},
		"bad-address.bad.yaml":      {`metrics-listen-address (file testdata/bad-address.bad.yaml line 2): invalid address "9187": use host:port`},
		"bad-keeper.bad.yaml":       {`keeper-uid (file testdata/bad-keeper.bad.yaml line 2): invalid keeper UID "Keeper-1"`},
		"cert-without-key.bad.yaml": {"store-cert-file and store-key go together"},
		"bad-selector.bad.yaml":     {`keeper-pod-selector (file testdata/bad-selector.bad.yaml line 4): invalid label selector term "component in (keeper)": use key=value, key!=value, key or !key`},
		"bad-archive.bad.yaml": {
			`archive-url (file testdata/bad-archive.bad.yaml line 2): unsupported scheme in "ftp://bucket/x": use file:///absolute/path or s3://bucket/prefix`,
			`slot-name (file testdata/bad-archive.bad.yaml line 3): "stolon_x" starts with stolon_`,
			`standby-slots (file testdata/bad-archive.bad.yaml line 4): invalid boolean "maybe"`,
			`compression (file testdata/bad-archive.bad.yaml line 5): invalid value "gzip": use one of none, zstd, lz4`,
		},
		"bad-relative-archive.bad.yaml": {`archive-url (file testdata/bad-relative-archive.bad.yaml line 2): invalid file URL "file://var/lib/barnacle"`},
		"bad-operations.bad.yaml": {
			`backup-schedule (file testdata/bad-operations.bad.yaml line 2): invalid schedule "every night": use an interval such as 24h, or a cron expression`,
			`retention-policy (file testdata/bad-operations.bad.yaml line 3): invalid policy "keep 3": use "REDUNDANCY 3" or "RECOVERY WINDOW OF 7 DAYS"`,
			`minimum-redundancy (file testdata/bad-operations.bad.yaml line 4): invalid number "-1"`,
			`check-max-lag (file testdata/bad-operations.bad.yaml line 5): invalid size "lots": use a number with B, kB, MB, GB or TB`,
			`restore-root (file testdata/bad-operations.bad.yaml line 6): invalid directory "restores": use an absolute path`,
			`backup-from (file testdata/bad-operations.bad.yaml line 7): invalid value "replica": use one of master, standby, any`,
			`archive-url (file testdata/bad-operations.bad.yaml line 8): invalid S3 URL "s3:///prefix": name the bucket`,
			`manifest-checksums (file testdata/bad-operations.bad.yaml line 9): invalid value "md5": use one of crc32c, sha224, sha256, sha384, sha512, none`,
		},
		"bad-drill.bad.yaml": {
			`restore-drill-schedule (file testdata/bad-drill.bad.yaml line 2): invalid schedule "weekly": use an interval such as 24h, or a cron expression`,
			`restore-drill-max-age (file testdata/bad-drill.bad.yaml line 3): invalid duration "8d": use a Go duration`,
			`restore-drill-on-master (file testdata/bad-drill.bad.yaml line 4): invalid boolean "sometimes": use true or false`,
			`pg-bin-dir (file testdata/bad-drill.bad.yaml line 5): invalid directory "bin": use an absolute path`,
			`restore-drill-superuser (file testdata/bad-drill.bad.yaml line 6): invalid role name "su\x00": use the cluster's superuser name`,
		},
		"redundancy-below-minimum.bad.yaml": {`minimum-redundancy (file testdata/redundancy-below-minimum.bad.yaml line 3): 3 is more than the 2 backups retention-policy "REDUNDANCY 2" keeps`},
		"bad-slot.bad.yaml":                 {`slot-name (file testdata/bad-slot.bad.yaml line 2): invalid slot name "Barnacle-Slot"`},
		"many.bad.yaml": {
			`leader-policy (file testdata/many.bad.yaml line 1): invalid value "sometimes": use one of follow-master, any`,
			"lease-ttl (file testdata/many.bad.yaml line 2): 1s is too short",
			`pg-port (file testdata/many.bad.yaml line 3): invalid port "99999"`,
			`log-level (file testdata/many.bad.yaml line 4): invalid value "loud"`,
			"cluster-name: required",
			"store-endpoints: required",
		},
	}
	files, err := filepath.Glob("testdata/*.bad.yaml")
	require.NoError(t, err)
	require.Len(t, files, len(cases), "every testdata/*.bad.yaml needs a case here")
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			want, ok := cases[name]
			require.True(t, ok, "no expected errors for %s", name)
			_, err := Load(Sources{File: f, Env: noEnv}, Needs{Keys: []string{"cluster-name", "store-endpoints"}})
			require.Error(t, err)
			assert.True(t, IsConfigError(err), "every problem is a *config.Error")
			for _, w := range want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestEnvAndFlagErrorsNameTheirSource(t *testing.T) {
	_, err := Load(Sources{
		Env:   envOf(map[string]string{"BARNACLE_LEADER_TAKEOVER_DELAY": "soon"}),
		Flags: map[string]string{"pg-port": "x", "cluster-name": "c", "store-endpoints": "http://e:1"},
	}, Needs{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `leader-takeover-delay (env BARNACLE_LEADER_TAKEOVER_DELAY): invalid duration "soon"`)
	assert.Contains(t, err.Error(), `pg-port (flag --pg-port): invalid port "x"`)
}

func TestFollowMasterNeedsKeeperUID(t *testing.T) {
	flags := map[string]string{"cluster-name": "c", "store-endpoints": "http://127.0.0.1:2379"}
	_, err := Load(Sources{Env: noEnv, Flags: flags}, agentNeeds)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "keeper-uid: required with leader-policy follow-master")

	flags["leader-policy"] = "any"
	_, err = Load(Sources{Env: noEnv, Flags: flags}, agentNeeds)
	require.NoError(t, err)
}

func TestKeeperUIDAutoNeedsNodeName(t *testing.T) {
	flags := map[string]string{"cluster-name": "c", "store-endpoints": "http://127.0.0.1:2379", "keeper-uid": "auto"}
	_, err := Load(Sources{Env: noEnv, Flags: flags}, agentNeeds)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "node-name: required with keeper-uid auto: set BARNACLE_NODE_NAME from the downward API (fieldRef spec.nodeName)")

	env := envOf(map[string]string{"BARNACLE_NODE_NAME": "node-1", "BARNACLE_KEEPER_POD_SELECTOR": "app.kubernetes.io/component=keeper, release!=old,stolon-cluster"})
	cfg, err := Load(Sources{Env: env, Flags: flags}, agentNeeds)
	require.NoError(t, err)
	assert.Equal(t, "node-1", cfg.NodeName)
	assert.Equal(t, "app.kubernetes.io/component=keeper, release!=old,stolon-cluster", cfg.KeeperPodSelector)

	// The default selects Stolon's keeper pods.
	env = envOf(map[string]string{"BARNACLE_NODE_NAME": "node-1"})
	cfg, err = Load(Sources{Env: env, Flags: flags}, agentNeeds)
	require.NoError(t, err)
	assert.Equal(t, "component=stolon-keeper", cfg.KeeperPodSelector)
}

func TestMissingSecretFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := Load(Sources{Env: noEnv, Flags: map[string]string{"pg-password-file": missing}}, Needs{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "pg-password-file (flag --pg-password-file): cannot read "+missing)
}

func TestStringShowsNoSecrets(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	require.NoError(t, os.WriteFile(pw, []byte("s3cret"), 0o600))
	c, err := Load(Sources{Env: noEnv, Flags: map[string]string{"pg-password-file": pw, "cluster-name": "c"}}, Needs{})
	require.NoError(t, err)
	s := c.String()
	assert.NotContains(t, s, "s3cret")
	assert.Contains(t, s, "pg-password-file="+pw)
	assert.True(t, strings.HasPrefix(s, "cluster-name=c"))
}

func TestEveryKeyHasHelpAndEnv(t *testing.T) {
	for _, k := range Keys() {
		assert.NotEmpty(t, k.Help, k.Name)
		assert.Equal(t, k.Name, strings.ToLower(k.Name), "keys are lower-case kebab")
		assert.True(t, strings.HasPrefix(EnvName(k.Name), "BARNACLE_"))
	}
}

func FuzzLoadFile(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(Sources{File: path, Env: noEnv}, Needs{})
		if err != nil && !IsConfigError(err) {
			t.Fatalf("error without a key: %v", err)
		}
		_ = c.String()
	})
}

func TestPGConnString(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	require.NoError(t, os.WriteFile(pw, []byte("it's\\secret\n"), 0o600))
	c := Default()
	c.PGUser, c.PGPasswordFile = `o'brien`, pw
	got, err := c.PGConnString("10.0.0.1", 5433, true)
	require.NoError(t, err)
	assert.Equal(t, `host='10.0.0.1' port=5433 application_name=barnacle connect_timeout=10 replication=true user='o\'brien' password='it\'s\\secret'`, got)
	got, err = c.PGConnString("h", 1, false)
	require.NoError(t, err)
	assert.Contains(t, got, "dbname='postgres'")
	assert.NotContains(t, got, "replication")
}

// TestEnumeratedKeysListTheirValuesInHelp: a key that accepts one of a few
// values names them all in its help (barnacle --help), found from the error
// a bad value gets ("use one of a, b, c").
func TestEnumeratedKeysListTheirValuesInHelp(t *testing.T) {
	enumerated := 0
	for _, k := range Keys() {
		if k.Boolean {
			continue
		}
		_, err := Load(Sources{Env: noEnv, Flags: map[string]string{k.Name: "no-such-value"}}, Needs{})
		if err == nil {
			continue
		}
		_, values, ok := strings.Cut(err.Error(), "use one of ")
		if !ok {
			continue
		}
		enumerated++
		values, _, _ = strings.Cut(values, "\n")
		for _, v := range strings.Split(values, ", ") {
			assert.Contains(t, k.Help, v, "--%s's help should list %q", k.Name, v)
		}
	}
	assert.GreaterOrEqual(t, enumerated, 5, "leader-policy, slot-mode, compression, backup-from, log-level, log-format, ...")
}

// TestRefusedValueIsNotAlsoRequired: a required key whose value is
// refused gets that error only, not a second, false "required"; an S3 URL
// without a bucket is quoted as it was written.
func TestRefusedValueIsNotAlsoRequired(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"ftp://x/y", `unsupported scheme in "ftp://x/y"`},
		{"s3://", `invalid S3 URL "s3://": name the bucket`},
		{"s3:bucket/x", `invalid S3 URL "s3:bucket/x": name the bucket`},
		{"s3://key:secret@/x", `credentials never go in the archive URL`},
	} {
		t.Run(tc.url, func(t *testing.T) {
			_, err := Load(Sources{Env: noEnv, Flags: map[string]string{"archive-url": tc.url, "cluster-name": "c"}},
				Needs{Keys: []string{"cluster-name", "archive-url"}})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "required")
			assert.NotContains(t, err.Error(), "secret")
			assert.Equal(t, 1, strings.Count(err.Error(), "archive-url (flag --archive-url)"), "one error for archive-url: %v", err)
		})
	}
	_, err := Load(Sources{Env: noEnv, Flags: map[string]string{"cluster-name": "c"}}, Needs{Keys: []string{"cluster-name", "archive-url"}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "archive-url: required", "an unset key is still required")
}

// TestURLCredentialsRefused: no URL the configuration accepts holds a
// credential; each refusal says where credentials go and never repeats the
// secret, and the start-up line shows URLs through redact.URL.
func TestURLCredentialsRefused(t *testing.T) {
	const secret = "plantedSECRET"
	cases := []struct {
		key, value, want string
	}{
		{"archive-url", "s3://AKID:" + secret + "@bucket/p", `invalid URL "s3://REDACTED@bucket/p": credentials never go in the archive URL; for s3 use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY`},
		{"archive-url", "s3://bucket/p?endpoint=http://u:" + secret + "@host:9000", "credentials never go in the endpoint parameter; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment, a shared credentials file"},
		{"archive-url", "file://u:" + secret + "@/var/lib/barnacle", "credentials never go in the archive URL"},
		{"archive-url", "file:///var/lib/barnacle?key=" + secret, `invalid file URL "file:///var/lib/barnacle?key=REDACTED": file URLs take no query or fragment`},
		{"archive-url", "ftp://bucket/x?token=" + secret, `unsupported scheme in "ftp://bucket/x?token=REDACTED"`},
		{"store-endpoints", "http://root:" + secret + "@127.0.0.1:2379", `invalid endpoint "http://REDACTED@127.0.0.1:2379": credentials never go in an endpoint; set store-username and store-password-file`},
		{"store-endpoints", "http://127.0.0.1:2379?token=" + secret, `invalid endpoint "http://127.0.0.1:2379?token=REDACTED": use http://host:port`},
	}
	for _, tc := range cases {
		t.Run(tc.key+" "+tc.value, func(t *testing.T) {
			_, err := Load(Sources{Env: noEnv, Flags: map[string]string{tc.key: tc.value}}, Needs{})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), secret)
			assert.True(t, IsConfigError(err))
		})
	}
	c, err := Load(Sources{Env: noEnv, Flags: map[string]string{
		"archive-url": "s3://bucket/p?endpoint=http://127.0.0.1:9000&region=r", "store-endpoints": "http://127.0.0.1:2379",
	}}, Needs{})
	require.NoError(t, err)
	assert.Contains(t, c.String(), "store-endpoints=http://127.0.0.1:2379 ")
	assert.Contains(t, c.String(), "archive-url=s3://bucket/p?endpoint=http://127.0.0.1:9000&region=r ", "a URL with nothing to hide is shown as written")
	// Load refuses credentials; String hides one that got past it anyway.
	c.ArchiveURL = "s3://bucket/p?secret_key=" + secret
	c.StoreEndpoints = []string{"http://u:" + secret + "@127.0.0.1:2379"}
	assert.NotContains(t, c.String(), secret)
}
