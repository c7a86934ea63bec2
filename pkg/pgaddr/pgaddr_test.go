package pgaddr

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
)

func cfgWith(keeper, host string, port int) config.Config {
	return config.Config{KeeperUID: keeper, PGHost: host, PGPort: port}
}

// checkAddress asserts a resolver's answer: the address want, or an error
// containing wantErr when that is set.
func checkAddress(t *testing.T, a Address, err error, want, wantErr string) {
	t.Helper()
	if wantErr != "" {
		require.ErrorContains(t, err, wantErr)
		return
	}
	require.NoError(t, err)
	assert.Equal(t, want, a.String())
}

func TestMaster(t *testing.T) {
	m := &stolon.Master{KeeperUID: "keeper0", Host: "10.0.0.1", Port: 5433}
	tests := []struct {
		name    string
		cfg     config.Config
		master  *stolon.Master
		want    string
		wantErr string
	}{
		{"clusterdata address", cfgWith("", "", 0), m, "10.0.0.1:5433", ""},
		{"no keeper: pg-host and pg-port name the master", cfgWith("", "db", 6000), m, "db:6000", ""},
		{"no keeper: pg-port alone overrides the port", cfgWith("", "", 6000), m, "10.0.0.1:6000", ""},
		{"no keeper: pg-host alone keeps clusterdata's port", cfgWith("", "db", 0), m, "db:5433", ""},
		{"my keeper is master: pg-host and pg-port", cfgWith("keeper0", "127.0.0.1", 7000), m, "127.0.0.1:7000", ""},
		{"my keeper is master: pg-host alone", cfgWith("keeper0", "127.0.0.1", 0), m, "127.0.0.1:5433", ""},
		{"another keeper is master: pg-host is mine, not the master's", cfgWith("keeper1", "127.0.0.1", 7000), m, "10.0.0.1:5433", ""},
		{"no clusterdata, no keeper: pg-host with pg-port", cfgWith("", "db", 6000), nil, "db:6000", ""},
		{"no clusterdata, no keeper: pg-host with the default port", cfgWith("", "db", 0), nil, "db:5432", ""},
		{"no clusterdata, no pg-host", cfgWith("", "", 6000), nil, "", "master's address is unknown"},
		{"no clusterdata, a keeper: pg-host is not the master", cfgWith("keeper0", "db", 6000), nil, "", "master's address is unknown"},
		{"IPv6", cfgWith("", "::1", 0), m, "[::1]:5433", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Master(tt.cfg, tt.master)
			checkAddress(t, a, err, tt.want, tt.wantErr)
		})
	}
}

func TestLocal(t *testing.T) {
	db := func(uid, keeper, host, port string) *stolon.DB {
		return &stolon.DB{UID: uid, Spec: stolon.DBSpec{KeeperUID: keeper}, Status: stolon.DBStatus{ListenAddress: host, Port: port}}
	}
	cd := &stolon.ClusterData{DBs: map[string]*stolon.DB{
		"db0": db("db0", "keeper0", "10.0.0.1", "5433"),
		"db1": db("db1", "keeper1", "", "5433"),
	}}
	cd.Cluster.Status.Master = "db0"
	tests := []struct {
		name    string
		cfg     config.Config
		cd      *stolon.ClusterData
		want    string
		wantErr string
	}{
		{"pg-host and pg-port need no clusterdata", cfgWith("keeper0", "h", 1), nil, "h:1", ""},
		{"pg-host and pg-port win over clusterdata", cfgWith("keeper0", "h", 1), cd, "h:1", ""},
		{"keeper's address", cfgWith("keeper0", "", 0), cd, "10.0.0.1:5433", ""},
		{"pg-host with the keeper's port", cfgWith("keeper0", "h", 0), cd, "h:5433", ""},
		{"pg-port with the keeper's host", cfgWith("keeper0", "", 1), cd, "10.0.0.1:1", ""},
		{"keeper without a DB", cfgWith("keeper9", "", 0), cd, "", "no DB for keeper keeper9"},
		{"keeper's DB without an address", cfgWith("keeper1", "", 0), cd, "", "no status.listenAddress"},
		{"clusterdata not read yet", cfgWith("keeper0", "", 0), nil, "", "clusterdata not read yet"},
		{"no clusterdata: pg-host with the default port (backup --local)", cfgWith("", "h", 0), nil, "h:5432", ""},
		{"no clusterdata, a keeper: pg-host with the default port", cfgWith("keeper0", "h", 0), nil, "h:5432", ""},
		{"no keeper: clusterdata is not consulted", cfgWith("", "h", 0), cd, "h:5432", ""},
		{"nothing known", cfgWith("", "", 0), cd, "", "set pg-host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Local(tt.cfg, tt.cd)
			checkAddress(t, a, err, tt.want, tt.wantErr)
		})
	}
}

// TestForKeeper: an agent with keeper-uid auto that found no keeper runs
// with an empty keeper-uid, which alone would make its pg-host the
// master's address (the rule for an operator's shell): a takeover leader
// would then stream from, and back up, whatever pg-host names on its own
// node. ForKeeper clears pg-host and pg-port for it, so the master comes
// from clusterdata and no local PostgreSQL is claimed; an agent that
// found its keeper keeps them for that keeper's PostgreSQL.
func TestForKeeper(t *testing.T) {
	m := &stolon.Master{KeeperUID: "keeper0", Host: "10.0.0.1", Port: 5433}
	auto := cfgWith(config.KeeperUIDAuto, "127.0.0.1", 7000)
	tests := []struct {
		name            string
		uid             string
		master          *stolon.Master
		want, wantErr   string
		local, localErr string
	}{
		{"none found: the master from clusterdata, never pg-host", "", m, "10.0.0.1:5433", "", "", "address of the local PostgreSQL is unknown"},
		{"none found, no master: unknown, never pg-host", "", nil, "", "master's address is unknown", "", "address of the local PostgreSQL is unknown"},
		{"found the master's keeper: pg-host and pg-port", "keeper0", m, "127.0.0.1:7000", "", "127.0.0.1:7000", ""},
		{"found another keeper: pg-host is its own", "keeper1", m, "10.0.0.1:5433", "", "127.0.0.1:7000", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ForKeeper(auto, tt.uid)
			assert.Equal(t, tt.uid, cfg.KeeperUID)
			a, err := Master(cfg, tt.master)
			checkAddress(t, a, err, tt.want, tt.wantErr)
			a, err = Local(cfg, nil)
			checkAddress(t, a, err, tt.local, tt.localErr)
		})
	}
	// What the agent ran with before: keeper-uid emptied, pg-host kept.
	before := auto
	before.KeeperUID = ""
	a, err := Master(before, m)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:7000", a.String(), "without a keeper-uid, Master reads pg-host as the master's address: why the agent serving none goes through ForKeeper")
}
