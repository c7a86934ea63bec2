package deploy_test

import (
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/config"
)

// imagePGMajor is the PostgreSQL major version whose server binaries the Dockerfile's
// final stage installs (postgresql-<major>, or postgresql-$PG_MAJOR with ARG PG_MAJOR);
// "" when it installs none.
func imagePGMajor(t *testing.T) string {
	t.Helper()
	text := finalStage(t, parseDockerfile(t)).text()
	if m := regexp.MustCompile(`apt-get install[^\n]*\spostgresql-(\d+)(\s|$)`).FindStringSubmatch(text); m != nil {
		return m[1]
	}
	if regexp.MustCompile(`apt-get install[^\n]*\spostgresql-\$\{?PG_MAJOR\}?(\s|$)`).MatchString(text) {
		if m := regexp.MustCompile(`(?m)^ARG PG_MAJOR=(\d+)\s*$`).FindStringSubmatch(text); m != nil {
			return m[1]
		}
	}
	return ""
}

// stolonPGMajor is the PostgreSQL major version of a Stolon image tag such as
// sorintlab/stolon:master-pg15.
func stolonPGMajor(t *testing.T, image string) string {
	t.Helper()
	m := regexp.MustCompile(`-pg(\d+)$`).FindStringSubmatch(image)
	require.NotNil(t, m, "Stolon image %q: its tag does not name the PostgreSQL version (-pgNN)", image)
	return m[1]
}

// checkDrillConfig checks what every agent that may run restore drills needs: the
// server binaries of the keepers' major version where pg-bin-dir says (the image's),
// the keepers' superuser name, a max age that a working schedule keeps, and the
// default rule (only agents beside standbys), so that drills run somewhere.
func checkDrillConfig(t *testing.T, where string, cfg config.Config, keeperMajor string, keeperSU []string) {
	t.Helper()
	if cfg.RestoreRoot == "" {
		if !cfg.RestoreDrillSchedule.IsZero() {
			t.Errorf("%s sets restore-drill-schedule but no restore-root, so it never runs a drill itself", where)
		}
		return
	}
	major := imagePGMajor(t)
	switch {
	case major == "":
		t.Errorf("%s may run restore drills (restore-root), but the Dockerfile's final stage installs no PostgreSQL server binaries (postgresql-<major>)", where)
	case major != keeperMajor:
		t.Errorf("%s: the image has PostgreSQL %s, the keepers run %s; a drill needs the archive's major version", where, major, keeperMajor)
	case cfg.PGBinDir != "/usr/lib/postgresql/"+major+"/bin":
		t.Errorf("%s: pg-bin-dir is %q; the image's server binaries are in /usr/lib/postgresql/%s/bin", where, cfg.PGBinDir, major)
	}
	for _, su := range keeperSU {
		if cfg.RestoreDrillSuperuser != su {
			t.Errorf("%s: restore-drill-superuser is %q; set it to the keepers' superuser (--pg-su-username) %q, which the restored cluster has", where, cfg.RestoreDrillSuperuser, su)
		}
	}
	if cfg.RestoreDrillOnMaster {
		t.Errorf("%s sets restore-drill-on-master; the examples keep drills off the master's host", where)
	}
	if cfg.RestoreDrillSchedule.IsZero() {
		t.Errorf("%s: no restore-drill-schedule; the examples show one", where)
		return
	}
	// The gap between two scheduled drills must stay below restore-drill-max-age, or
	// check fails between two drills that both succeed.
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	first := cfg.RestoreDrillSchedule.Next(t0)
	period := cfg.RestoreDrillSchedule.Next(first).Sub(first)
	if cfg.RestoreDrillMaxAge <= period {
		t.Errorf("%s: restore-drill-max-age %s is not more than the %s between two scheduled drills (%s)", where, cfg.RestoreDrillMaxAge, period, cfg.RestoreDrillSchedule)
	}
}

// TestComposeDrills: the sidecars can run restore drills as the compose files
// configure them, and beside every keeper but the master's one may.
func TestComposeDrills(t *testing.T) {
	c := loadCompose(t)
	drillers := 0
	for _, s := range c.sidecars() {
		keeper := c.keeperOf(t, s)
		cfg, err := c.sidecarConfig(t, s)
		require.NoError(t, err)
		if cfg.RestoreRoot != "" {
			drillers++
		}
		su, ok := flagValue(argv(c.services[keeper]), "pg-su-username")
		require.True(t, ok, "keeper %s sets no --pg-su-username; the drill must know the superuser's name", keeper)
		image := fmt.Sprint(c.services[keeper]["image"])
		checkDrillConfig(t, "sidecar "+s, cfg, stolonPGMajor(t, image), []string{su})
	}
	// Without restore-drill-on-master the master's agent never drills: two agents with
	// restore-root keep one beside a standby whichever keeper is the master.
	if drillers < 2 {
		t.Errorf("%d sidecars have restore-root; with restore-drill-on-master off, at least two are needed so that one beside a standby runs the drills", drillers)
	}
}

// TestKubernetesDrills: the agent containers can run restore drills: the image's
// binaries, the keepers' superuser, and writable space for the scratch directory and
// its socket with a read-only root filesystem.
func TestKubernetesDrills(t *testing.T) {
	objs := loadKube(t)
	var keeperSU []string
	keeperMajor := ""
	for _, w := range workloads(objs) {
		for _, kc := range w.containers(false) {
			if !isKeeper(kc) {
				continue
			}
			su := kubeEnv(kc)["STKEEPER_PG_SU_USERNAME"]
			require.NotEmpty(t, su, "%s: the keeper sets no STKEEPER_PG_SU_USERNAME; the drill must know the superuser's name", w)
			keeperSU = append(keeperSU, su)
			m := stolonPGMajor(t, fmt.Sprint(kc["image"]))
			require.True(t, keeperMajor == "" || keeperMajor == m, "%s: keepers of PostgreSQL %s and %s", w, keeperMajor, m)
			keeperMajor = m
		}
	}
	require.NotEmpty(t, keeperSU, "no keeper container found")
	checked := 0
	for _, w := range workloads(objs) {
		for _, c := range w.containers(false) {
			if !isBarnacleAgent(c) {
				continue
			}
			checked++
			where := w.String() + "/" + fmt.Sprint(c["name"])
			cfg := agentConfig(t, objs, w, c)
			checkDrillConfig(t, where, cfg, keeperMajor, keeperSU)
			if cfg.RestoreRoot == "" {
				t.Errorf("%s has no restore-root, so it runs no restore drills", where)
				continue
			}
			// The drill's server socket falls back to a directory below /tmp when
			// restore-root is too deep for a socket path; restores stage files there.
			if mapOf(c["securityContext"])["readOnlyRootFilesystem"] == true {
				vol, m, ok := w.volumeOf(c, "/tmp")
				switch {
				case !ok || vol == nil:
					t.Errorf("%s: the root filesystem is read-only and /tmp is no volume; a drill's socket may need it", where)
				case m["readOnly"] == true:
					t.Errorf("%s: /tmp is mounted read-only", where)
				}
			}
		}
	}
	require.Positive(t, checked, "no barnacle agent container found")
}
