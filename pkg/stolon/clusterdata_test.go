package stolon

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// clusterDataGolden is what each recorded clusterdata must decode to.
type clusterDataGolden struct {
	master        Master
	followers     []string // master DB's spec.followers
	masterSlots   []string // cluster.spec.additionalMasterReplicationSlots
	dbSlots       []string // master DB's spec.additionalReplicationSlots
	history       []TimelineHistory
	proxyMaster   string
	keeperDBs     map[string]string // keeper UID -> DB UID; "" = no DB
	keeperHealthy map[string]bool
}

// goldens lists every *.raw.json in testdata; TestGoldenFiles fails when a
// fixture is added without an entry here.
var goldens = map[string]any{
	"clusterdata-initial.raw.json": clusterDataGolden{
		master: Master{
			DBUID: "a0fbb9cc", KeeperUID: "keeper1", Host: "127.0.0.1", Port: 5442,
			Timeline: 1, XLogPos: 84120616, Healthy: true, Converged: true,
			SystemID: "7711797878400204491",
		},
		followers:     []string{"662fe529", "b715ba79"},
		proxyMaster:   "a0fbb9cc",
		keeperDBs:     map[string]string{"keeper0": "662fe529", "keeper1": "a0fbb9cc", "keeper2": "b715ba79"},
		keeperHealthy: map[string]bool{"keeper0": true, "keeper1": true, "keeper2": true},
	},
	"clusterdata-after-failover.raw.json": clusterDataGolden{
		master: Master{
			DBUID: "b715ba79", KeeperUID: "keeper2", Host: "127.0.0.1", Port: 5443,
			Timeline: 2, XLogPos: 84121008, Healthy: true, Converged: true,
			SystemID: "7711797878400204491",
		},
		followers:     []string{"662fe529"},
		history:       []TimelineHistory{{TimelineID: 1, SwitchPoint: 84120672, Reason: "no recovery target specified"}},
		proxyMaster:   "b715ba79",
		keeperDBs:     map[string]string{"keeper0": "662fe529", "keeper1": "", "keeper2": "b715ba79"},
		keeperHealthy: map[string]bool{"keeper0": true, "keeper1": false, "keeper2": true},
	},
	// Recorded while the master had not yet applied its latest generation
	// (8 written, 7 reported): healthy but not converged.
	"clusterdata-with-barman-slot.raw.json": clusterDataGolden{
		master: Master{
			DBUID: "1bbdec88", KeeperUID: "keeper1", Host: "127.0.0.1", Port: 5442,
			Timeline: 3, XLogPos: 184549472, Healthy: true, Converged: false,
			SystemID: "7711797878400204491",
		},
		followers:   []string{"662fe529", "e0ef7496"},
		masterSlots: []string{"barman_slot"},
		dbSlots:     []string{"barman_slot"},
		history: []TimelineHistory{
			{TimelineID: 1, SwitchPoint: 84120672, Reason: "no recovery target specified"},
			{TimelineID: 2, SwitchPoint: 134217824, Reason: "no recovery target specified"},
		},
		proxyMaster:   "1bbdec88",
		keeperDBs:     map[string]string{"keeper0": "662fe529", "keeper1": "1bbdec88", "keeper2": "e0ef7496"},
		keeperHealthy: map[string]bool{"keeper0": true, "keeper1": true, "keeper2": true},
	},
	"keeperinfo-master-initial.raw.json": KeeperInfo{
		InfoUID: "0451b480", UID: "keeper1", ClusterUID: "6c05f158",
		BootUUID:              "a1db70a5-ff59-4d9a-a73a-53bc010b150c",
		PostgresBinaryVersion: PostgresBinaryVersion{Maj: 15, Min: 18},
		PostgresState: &PostgresState{
			UID: "a0fbb9cc", Generation: 3, ListenAddress: "127.0.0.1", Port: "5442",
			Healthy: true, SystemID: "7711797878400204491", TimelineID: 1, XLogPos: 84120672,
			OlderWalFile: "000000010000000000000001",
		},
		CanBeMaster:             ptr(true),
		CanBeSynchronousReplica: ptr(true),
	},
	// Values of other keys: not clusterdata, so Decode must refuse them.
	"proxyinfo.raw.json":    notClusterData{},
	"sentinelinfo.raw.json": notClusterData{},
}

type notClusterData struct{}

func ptr[T any](v T) *T { return &v }

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return data
}

func TestGoldenFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/*.raw.json")
	require.NoError(t, err)
	require.Len(t, files, len(goldens), "every *.raw.json fixture needs an entry in goldens and vice versa")
	for _, file := range files {
		name := filepath.Base(file)
		t.Run(name, func(t *testing.T) {
			want, ok := goldens[name]
			require.True(t, ok, "no golden entry for %s", name)
			data := readFixture(t, name)
			switch want := want.(type) {
			case clusterDataGolden:
				checkClusterData(t, data, want)
			case KeeperInfo:
				got, err := DecodeKeeperInfo(data)
				require.NoError(t, err)
				assert.Equal(t, want, *got)
			case notClusterData:
				_, err := Decode(data)
				var uf *UnsupportedFormatError
				require.ErrorAs(t, err, &uf)
				assert.Equal(t, uint64(0), uf.Version)
			default:
				t.Fatalf("unknown golden type %T", want)
			}
		})
	}
}

func checkClusterData(t *testing.T, data []byte, want clusterDataGolden) {
	t.Helper()
	cd, err := Decode(data)
	require.NoError(t, err)
	assert.Equal(t, uint64(CurrentFormatVersion), cd.FormatVersion)
	assert.Equal(t, "6c05f158", cd.Cluster.UID)
	assert.Equal(t, "normal", cd.Cluster.Status.Phase)
	assert.False(t, cd.ChangeTime.IsZero())

	m, err := cd.Master()
	require.NoError(t, err)
	assert.Equal(t, want.master, m)

	db, err := cd.MasterDB()
	require.NoError(t, err)
	assert.Equal(t, want.master.DBUID, db.UID)
	assert.Equal(t, RoleMaster, db.Spec.Role)
	assert.Nil(t, db.Spec.FollowConfig)
	assert.Equal(t, want.followers, db.Spec.Followers)
	assert.Equal(t, want.dbSlots, db.Spec.AdditionalReplicationSlots)
	assert.Equal(t, want.history, db.Status.TimelinesHistory)
	assert.Equal(t, want.masterSlots, cd.Cluster.Spec.AdditionalMasterReplicationSlots)
	for _, s := range want.masterSlots {
		assert.True(t, cd.Cluster.Spec.HasMasterReplicationSlot(s))
	}
	assert.False(t, cd.Cluster.Spec.HasMasterReplicationSlot("manual_slot"))
	assert.Equal(t, want.proxyMaster, cd.Proxy.Spec.MasterDBUID)
	assert.Equal(t, []string{"0dc19c7d"}, cd.Proxy.Spec.EnabledProxies)
	require.NotNil(t, cd.Cluster.Spec.InitMode)
	assert.Equal(t, "new", *cd.Cluster.Spec.InitMode)
	assert.Equal(t, "replica", cd.Cluster.Spec.PGParameters["wal_level"])

	assert.Equal(t, []string{"keeper0", "keeper1", "keeper2"}, cd.KeeperUIDs())
	for keeper, dbUID := range want.keeperDBs {
		got, ok := cd.DBForKeeper(keeper)
		if dbUID == "" {
			assert.False(t, ok, "keeper %s should have no db", keeper)
			continue
		}
		require.True(t, ok, "keeper %s", keeper)
		assert.Equal(t, dbUID, got.UID)
		assert.Equal(t, keeper, got.Spec.KeeperUID)
		if dbUID != want.master.DBUID {
			assert.Equal(t, RoleStandby, got.Spec.Role)
			require.NotNil(t, got.Spec.FollowConfig)
			assert.Equal(t, FollowConfig{Type: "internal", DBUID: want.master.DBUID}, *got.Spec.FollowConfig)
			assert.Nil(t, got.Spec.AdditionalReplicationSlots, "the sentinel gives standbys no additional slots")
		}
	}
	for uid, healthy := range want.keeperHealthy {
		k := cd.Keepers[uid]
		require.NotNil(t, k, uid)
		assert.Equal(t, healthy, k.Status.Healthy, uid)
		assert.Equal(t, PostgresBinaryVersion{Maj: 15, Min: 18}, k.Status.PostgresBinaryVersion)
		require.NotNil(t, k.Status.CanBeMaster)
		assert.True(t, *k.Status.CanBeMaster)
		assert.False(t, k.Status.LastHealthyTime.IsZero())
	}
}

// The pretty-printed fixtures hold the same values as the exact bytes.
func TestPrettyEqualsRaw(t *testing.T) {
	files, err := filepath.Glob("testdata/*.raw.json")
	require.NoError(t, err)
	compared := 0
	for _, raw := range files {
		pretty := strings.TrimSuffix(raw, ".raw.json") + ".json"
		if _, err := os.Stat(pretty); errors.Is(err, os.ErrNotExist) {
			continue
		}
		compared++
		t.Run(filepath.Base(pretty), func(t *testing.T) {
			rawData := readFixture(t, filepath.Base(raw))
			prettyData := readFixture(t, filepath.Base(pretty))

			var rawAny, prettyAny any
			require.NoError(t, json.Unmarshal(rawData, &rawAny))
			require.NoError(t, json.Unmarshal(prettyData, &prettyAny))
			assert.Equal(t, rawAny, prettyAny)

			rawCD, err := Decode(rawData)
			require.NoError(t, err)
			prettyCD, err := Decode(prettyData)
			require.NoError(t, err)
			assert.Equal(t, rawCD, prettyCD)
		})
	}
	assert.Equal(t, 3, compared)
}

// mutate decodes the initial fixture generically, applies change and
// re-encodes it, so bad inputs differ from real Stolon output in one place.
func mutate(t *testing.T, change func(cd map[string]any)) []byte {
	t.Helper()
	var cd map[string]any
	require.NoError(t, json.Unmarshal(readFixture(t, "clusterdata-initial.raw.json"), &cd))
	change(cd)
	data, err := json.Marshal(cd)
	require.NoError(t, err)
	return data
}

func sub(m map[string]any, keys ...string) map[string]any {
	for _, k := range keys {
		m = m[k].(map[string]any)
	}
	return m
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name        string
		data        func(t *testing.T) []byte
		wantErr     string
		unsupported bool
		jsonErr     bool
	}{
		{
			name:        "formatVersion 2",
			data:        func(t *testing.T) []byte { return mutate(t, func(cd map[string]any) { cd["formatVersion"] = 2 }) },
			wantErr:     "clusterdata: formatVersion 2 is not supported (barnacle understands 1); upgrade barnacle",
			unsupported: true,
		},
		{
			name:        "formatVersion 0",
			data:        func(t *testing.T) []byte { return mutate(t, func(cd map[string]any) { cd["formatVersion"] = 0 }) },
			wantErr:     "clusterdata: formatVersion 0 is not supported (barnacle understands 1)",
			unsupported: true,
		},
		{
			name:        "formatVersion missing",
			data:        func(t *testing.T) []byte { return mutate(t, func(cd map[string]any) { delete(cd, "formatVersion") }) },
			wantErr:     "formatVersion 0 is not supported",
			unsupported: true,
		},
		{
			name: "formatVersion 2 with an incompatible schema",
			data: func(t *testing.T) []byte {
				return []byte(`{"formatVersion":2,"cluster":"now a string","dbs":[1,2]}`)
			},
			wantErr:     "formatVersion 2 is not supported",
			unsupported: true,
		},
		{
			name:        "json null",
			data:        func(*testing.T) []byte { return []byte("null") },
			wantErr:     "formatVersion 0",
			unsupported: true,
		},
		{
			name:    "truncated",
			data:    func(t *testing.T) []byte { d := readFixture(t, "clusterdata-initial.raw.json"); return d[:len(d)/2] },
			wantErr: "decode clusterdata: unexpected end of JSON input",
			jsonErr: true,
		},
		{
			name:    "not an object",
			data:    func(*testing.T) []byte { return []byte(`[1]`) },
			wantErr: "decode clusterdata: json: cannot unmarshal array",
			jsonErr: true,
		},
		{
			name:    "formatVersion a string",
			data:    func(*testing.T) []byte { return []byte(`{"formatVersion":"1"}`) },
			wantErr: "decode clusterdata: json: cannot unmarshal string",
			jsonErr: true,
		},
		{
			name: "port a number",
			data: func(t *testing.T) []byte {
				return mutate(t, func(cd map[string]any) { sub(cd, "dbs", "a0fbb9cc", "status")["port"] = 5442 })
			},
			wantErr: "decode clusterdata: json: cannot unmarshal number",
			jsonErr: true,
		},
		{
			name: "null db",
			data: func(t *testing.T) []byte {
				return mutate(t, func(cd map[string]any) { sub(cd, "dbs")["a0fbb9cc"] = nil })
			},
			wantErr: `decode clusterdata: dbs["a0fbb9cc"] is null`,
		},
		{
			name: "null keeper",
			data: func(t *testing.T) []byte {
				return mutate(t, func(cd map[string]any) { sub(cd, "keepers")["keeper1"] = nil })
			},
			wantErr: `decode clusterdata: keepers["keeper1"] is null`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cd, err := Decode(tt.data(t))
			require.Error(t, err)
			assert.Nil(t, cd)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Equal(t, tt.unsupported, errors.Is(err, ErrUnsupportedFormat), "errors.Is(err, ErrUnsupportedFormat)")
			var syntaxErr *json.SyntaxError
			var typeErr *json.UnmarshalTypeError
			assert.Equal(t, tt.jsonErr, errors.As(err, &syntaxErr) || errors.As(err, &typeErr), "wraps the json error")
		})
	}
}

func TestMasterErrors(t *testing.T) {
	tests := []struct {
		name     string
		change   func(cd map[string]any)
		wantErr  string
		noMaster bool
	}{
		{
			name:     "no master yet",
			change:   func(cd map[string]any) { sub(cd, "cluster", "status")["master"] = "" },
			wantErr:  "stolon: no master: cluster.status.master is empty",
			noMaster: true,
		},
		{
			name:     "master field absent",
			change:   func(cd map[string]any) { delete(sub(cd, "cluster", "status"), "master") },
			wantErr:  "cluster.status.master is empty",
			noMaster: true,
		},
		{
			name:     "master names unknown db",
			change:   func(cd map[string]any) { sub(cd, "cluster", "status")["master"] = "deadbeef" },
			wantErr:  `stolon: no master: cluster.status.master names db "deadbeef", which is not in dbs`,
			noMaster: true,
		},
		{
			name:     "master db deleted",
			change:   func(cd map[string]any) { delete(sub(cd, "dbs"), "a0fbb9cc") },
			wantErr:  `names db "a0fbb9cc", which is not in dbs`,
			noMaster: true,
		},
		{
			name:    "bad port",
			change:  func(cd map[string]any) { sub(cd, "dbs", "a0fbb9cc", "status")["port"] = "54x2" },
			wantErr: `master: db "a0fbb9cc" has invalid status.port "54x2": want 1 to 65535`,
		},
		{
			name:    "port out of range",
			change:  func(cd map[string]any) { sub(cd, "dbs", "a0fbb9cc", "status")["port"] = "65536" },
			wantErr: `db "a0fbb9cc" has invalid status.port "65536"`,
		},
		{
			name:    "port zero",
			change:  func(cd map[string]any) { sub(cd, "dbs", "a0fbb9cc", "status")["port"] = "0" },
			wantErr: `db "a0fbb9cc" has invalid status.port "0"`,
		},
		{
			name:    "empty port",
			change:  func(cd map[string]any) { sub(cd, "dbs", "a0fbb9cc", "status")["port"] = "" },
			wantErr: `db "a0fbb9cc" has no status.port`,
		},
		{
			name:    "no listen address",
			change:  func(cd map[string]any) { delete(sub(cd, "dbs", "a0fbb9cc", "status"), "listenAddress") },
			wantErr: `db "a0fbb9cc" has no status.listenAddress`,
		},
		{
			name:    "no keeper",
			change:  func(cd map[string]any) { delete(sub(cd, "dbs", "a0fbb9cc", "spec"), "keeperUID") },
			wantErr: `master db "a0fbb9cc" has no spec.keeperUID`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cd, err := Decode(mutate(t, tt.change))
			require.NoError(t, err, "Decode accepts clusterdata without a usable master")
			m, err := cd.Master()
			require.Error(t, err)
			assert.Equal(t, Master{}, m)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Equal(t, tt.noMaster, errors.Is(err, ErrNoMaster), "errors.Is(err, ErrNoMaster)")
			if tt.noMaster {
				_, err := cd.MasterDB()
				assert.ErrorIs(t, err, ErrNoMaster)
			}
		})
	}
}

// Between election and promotion the sentinel has switched
// cluster.status.master and the role, but the keeper has not caught up.
func TestMasterElectedNotPromoted(t *testing.T) {
	data := mutate(t, func(cd map[string]any) {
		sub(cd, "cluster", "status")["master"] = "b715ba79"
		spec := sub(cd, "dbs", "b715ba79", "spec")
		spec["role"] = RoleMaster
		delete(spec, "followConfig")
		db := sub(cd, "dbs", "b715ba79")
		db["generation"] = 3 // status.currentGeneration stays 2
		sub(cd, "proxy", "spec")["masterDbUid"] = ""
	})
	cd, err := Decode(data)
	require.NoError(t, err)
	m, err := cd.Master()
	require.NoError(t, err)
	assert.Equal(t, "b715ba79", m.DBUID)
	assert.Equal(t, "keeper2", m.KeeperUID)
	assert.Equal(t, 5443, m.Port)
	assert.True(t, m.Healthy)
	assert.False(t, m.Converged)
	assert.Empty(t, cd.Proxy.Spec.MasterDBUID)
}

func TestDBForKeeperDeterministic(t *testing.T) {
	cd := &ClusterData{
		Cluster: Cluster{Status: ClusterStatus{Master: "m"}},
		DBs: map[string]*DB{
			"b":   {UID: "b", Spec: DBSpec{KeeperUID: "k1"}},
			"a":   {UID: "a", Spec: DBSpec{KeeperUID: "k1"}},
			"m":   {UID: "m", Spec: DBSpec{KeeperUID: "k2"}},
			"z":   {UID: "z", Spec: DBSpec{KeeperUID: "k2"}},
			"nil": nil,
		},
	}
	for range 20 {
		db, ok := cd.DBForKeeper("k1")
		require.True(t, ok)
		assert.Equal(t, "a", db.UID)
		db, ok = cd.DBForKeeper("k2")
		require.True(t, ok)
		assert.Equal(t, "m", db.UID, "the master wins")
	}
	_, ok := cd.DBForKeeper("k3")
	assert.False(t, ok)
	assert.Empty(t, (&ClusterData{}).KeeperUIDs())
}

func TestConverged(t *testing.T) {
	tests := []struct {
		name string
		db   DB
		want bool
	}{
		{"healthy and current", DB{Generation: 3, Status: DBStatus{Healthy: true, CurrentGeneration: 3}}, true},
		{"healthy, behind", DB{Generation: 4, Status: DBStatus{Healthy: true, CurrentGeneration: 3}}, false},
		{"unhealthy", DB{Generation: 3, Status: DBStatus{CurrentGeneration: 3}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, tt.db.Converged())
		})
	}
}

func TestDecodeKeeperInfoErrors(t *testing.T) {
	_, err := DecodeKeeperInfo([]byte(`{"uid":`))
	var syntaxErr *json.SyntaxError
	require.ErrorAs(t, err, &syntaxErr)
	assert.Contains(t, err.Error(), "decode keeper info: ")

	_, err = DecodeKeeperInfo([]byte(`{"infoUID":"x"}`))
	assert.EqualError(t, err, "decode keeper info: uid is empty")

	ki, err := DecodeKeeperInfo([]byte(`{"uid":"keeper9","postgresState":null}`))
	require.NoError(t, err)
	assert.Nil(t, ki.PostgresState)
}

func FuzzDecode(f *testing.F) {
	entries, err := os.ReadDir("testdata")
	require.NoError(f, err)
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		f.Add(readFixture(f, e.Name()))
	}
	f.Add([]byte(`{"formatVersion":1,"cluster":{"status":{"master":"x"}},"dbs":{"x":{"spec":{"keeperUID":"k"},"status":{"listenAddress":"h","port":"-1"}}}}`))
	f.Add([]byte(`{"formatVersion":1,"dbs":{"x":null}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if ki, err := DecodeKeeperInfo(data); err == nil && ki.UID == "" {
			t.Fatal("DecodeKeeperInfo accepted an empty uid")
		}
		cd, err := Decode(data)
		if err != nil {
			return
		}
		if cd.FormatVersion != CurrentFormatVersion {
			t.Fatalf("accepted formatVersion %d", cd.FormatVersion)
		}
		m, err := cd.Master()
		if err == nil && (m.Port < 1 || m.Port > 65535 || m.Host == "" || m.KeeperUID == "") {
			t.Fatalf("Master() = %+v without error", m)
		}
		_, _ = cd.MasterDB()
		uids := cd.KeeperUIDs()
		if !slices.IsSorted(uids) {
			t.Fatalf("KeeperUIDs not sorted: %v", uids)
		}
		for _, db := range cd.DBs {
			_, _, _ = db.Addr()
			_ = db.Converged()
			if got, ok := cd.DBForKeeper(db.Spec.KeeperUID); !ok || got.Spec.KeeperUID != db.Spec.KeeperUID {
				t.Fatalf("DBForKeeper(%q) = %v, %v", db.Spec.KeeperUID, got, ok)
			}
		}
	})
}
