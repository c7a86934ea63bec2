package testenv

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"time"
)

// stolonClusterdataTemplate is the exact value a real Stolon cluster
// (v0.17, PostgreSQL 15.18, 3 keepers) wrote to its clusterdata key, copied
// byte for byte from pkg/stolon/testdata/clusterdata-initial.raw.json. The
// simulator clones its entries so every recorded field is kept.
//
//go:embed testdata/stolon-clusterdata-initial.raw.json
var stolonClusterdataTemplate []byte

// The types below mirror Stolon's internal/cluster types field by field, in
// declaration order and with the same JSON tags (omitempty included), so
// that json.Marshal produces the bytes Stolon would. A round-trip test
// checks them against every recorded clusterdata. Parts the simulator never
// changes are kept as raw JSON.

type cdData struct {
	FormatVersion uint64               `json:"formatVersion"`
	ChangeTime    time.Time            `json:"changeTime"`
	Cluster       *cdCluster           `json:"cluster"`
	Keepers       map[string]*cdKeeper `json:"keepers"`
	DBs           map[string]*cdDB     `json:"dbs"`
	Proxy         *cdProxy             `json:"proxy"`
}

type cdCluster struct {
	UID        string          `json:"uid,omitempty"`
	Generation int64           `json:"generation,omitempty"`
	ChangeTime time.Time       `json:"changeTime,omitempty"`
	Spec       *jsonObject     `json:"spec,omitempty"`
	Status     cdClusterStatus `json:"status,omitempty"`
}

type cdClusterStatus struct {
	CurrentGeneration int64  `json:"currentGeneration,omitempty"`
	Phase             string `json:"phase,omitempty"`
	Master            string `json:"master,omitempty"`
}

type cdKeeper struct {
	UID        string          `json:"uid,omitempty"`
	Generation int64           `json:"generation,omitempty"`
	ChangeTime time.Time       `json:"changeTime,omitempty"`
	Spec       json.RawMessage `json:"spec,omitempty"`
	Status     cdKeeperStatus  `json:"status,omitempty"`
}

type cdKeeperStatus struct {
	Healthy                 bool        `json:"healthy,omitempty"`
	LastHealthyTime         time.Time   `json:"lastHealthyTime,omitempty"`
	BootUUID                string      `json:"bootUUID,omitempty"`
	PostgresBinaryVersion   cdPGVersion `json:"postgresBinaryVersion,omitempty"`
	ForceFail               bool        `json:"forceFail,omitempty"`
	CanBeMaster             *bool       `json:"canBeMaster,omitempty"`
	CanBeSynchronousReplica *bool       `json:"canBeSynchronousReplica,omitempty"`
}

type cdPGVersion struct {
	Maj int
	Min int
}

type cdDB struct {
	UID        string     `json:"uid,omitempty"`
	Generation int64      `json:"generation,omitempty"`
	ChangeTime time.Time  `json:"changeTime,omitempty"`
	Spec       *cdDBSpec  `json:"spec,omitempty"`
	Status     cdDBStatus `json:"status,omitempty"`
}

type cdDBSpec struct {
	KeeperUID string `json:"keeperUID,omitempty"`
	// Stolon's Duration is a struct, so omitempty never drops it.
	RequestTimeout              string            `json:"requestTimeout"`
	MaxStandbys                 uint16            `json:"maxStandbys,omitempty"`
	SynchronousReplication      bool              `json:"synchronousReplication,omitempty"`
	UsePgrewind                 bool              `json:"usePgrewind,omitempty"`
	AdditionalWalSenders        uint16            `json:"additionalWalSenders"`
	AdditionalReplicationSlots  []string          `json:"additionalReplicationSlots"`
	InitMode                    string            `json:"initMode,omitempty"`
	NewConfig                   json.RawMessage   `json:"newConfig,omitempty"`
	PITRConfig                  json.RawMessage   `json:"pitrConfig,omitempty"`
	PGParameters                map[string]string `json:"pgParameters,omitempty"`
	PGHBA                       []string          `json:"pgHBA"`
	Role                        string            `json:"role,omitempty"`
	FollowConfig                *cdFollowConfig   `json:"followConfig,omitempty"`
	Followers                   []string          `json:"followers"`
	IncludeConfig               bool              `json:"includePreviousConfig,omitempty"`
	SynchronousStandbys         []string          `json:"synchronousStandbys"`
	ExternalSynchronousStandbys []string          `json:"externalSynchronousStandbys"`
}

type cdFollowConfig struct {
	Type                    string          `json:"type,omitempty"`
	DBUID                   string          `json:"dbuid,omitempty"`
	StandbySettings         json.RawMessage `json:"standbySettings,omitempty"`
	ArchiveRecoverySettings json.RawMessage `json:"archiveRecoverySettings,omitempty"`
}

type cdDBStatus struct {
	Healthy           bool                 `json:"healthy,omitempty"`
	CurrentGeneration int64                `json:"currentGeneration,omitempty"`
	ListenAddress     string               `json:"listenAddress,omitempty"`
	Port              string               `json:"port,omitempty"`
	SystemID          string               `json:"systemdID,omitempty"` // sic, Stolon's tag
	TimelineID        uint64               `json:"timelineID,omitempty"`
	XLogPos           uint64               `json:"xLogPos,omitempty"`
	TimelinesHistory  []*cdTimelineHistory `json:"timelinesHistory,omitempty"`
	PGParameters      map[string]string    `json:"pgParameters,omitempty"`
	// No omitempty: a nil slice is written as null.
	SynchronousStandbys []string `json:"synchronousStandbys"`
	OlderWalFile        string   `json:"olderWalFile,omitempty"`
}

type cdTimelineHistory struct {
	TimelineID  uint64 `json:"timelineID,omitempty"`
	SwitchPoint uint64 `json:"switchPoint,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

type cdProxy struct {
	UID        string        `json:"uid,omitempty"`
	Generation int64         `json:"generation,omitempty"`
	ChangeTime time.Time     `json:"changeTime,omitempty"`
	Spec       cdProxySpec   `json:"spec,omitempty"`
	Status     cdProxyStatus `json:"status,omitempty"`
}

type cdProxySpec struct {
	MasterDBUID    string   `json:"masterDbUid,omitempty"`
	EnabledProxies []string `json:"enabledProxies,omitempty"`
}

type cdProxyStatus struct{}

// jsonObject is a JSON object that keeps its keys in order. Stolon's
// ClusterSpec has dozens of optional fields; keeping it as recorded (plus
// targeted edits) is safer than mirroring it.
type jsonObject struct {
	keys []string
	vals map[string]json.RawMessage
}

func (o *jsonObject) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("clusterdata: expected a JSON object, got %v", tok)
	}
	o.keys, o.vals = nil, map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		k, ok := tok.(string)
		if !ok {
			return fmt.Errorf("clusterdata: expected an object key, got %v", tok)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
		if _, dup := o.vals[k]; !dup {
			o.keys = append(o.keys, k)
		}
		o.vals[k] = v
	}
	_, err = dec.Token()
	return err
}

func (o jsonObject) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		b.Write(kb)
		b.WriteByte(':')
		b.Write(o.vals[k])
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// set replaces key's value in place, or appends key.
func (o *jsonObject) set(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if o.vals == nil {
		o.vals = map[string]json.RawMessage{}
	}
	if _, ok := o.vals[key]; !ok {
		o.keys = append(o.keys, key)
	}
	o.vals[key] = b
	return nil
}

func decodeClusterdata(b []byte) (*cdData, error) {
	var cd cdData
	if err := json.Unmarshal(b, &cd); err != nil {
		return nil, fmt.Errorf("decode clusterdata: %w", err)
	}
	if cd.Cluster == nil || cd.Proxy == nil {
		return nil, fmt.Errorf("decode clusterdata: cluster or proxy missing")
	}
	if cd.Keepers == nil {
		cd.Keepers = map[string]*cdKeeper{}
	}
	if cd.DBs == nil {
		cd.DBs = map[string]*cdDB{}
	}
	return &cd, nil
}

// cloneJSON deep-copies v through its JSON form.
func cloneJSON[T any](v *T) *T {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("clone clusterdata entry: %v", err))
	}
	var out T
	if err := json.Unmarshal(b, &out); err != nil {
		panic(fmt.Sprintf("clone clusterdata entry: %v", err))
	}
	return &out
}

// proxyTo points the proxies at the master DB uid, or closes them with ""
// (as the sentinel does while a new master converges), in a new proxy
// generation.
func (cd *cdData) proxyTo(uid string, now time.Time) {
	cd.Proxy.Spec.MasterDBUID = uid
	cd.Proxy.Generation++
	cd.Proxy.ChangeTime = now
}

// findDB returns the DB assigned to keeperUID, like Stolon's FindDB.
func (cd *cdData) findDB(keeperUID string) *cdDB {
	for _, db := range cd.DBs {
		if db.Spec != nil && db.Spec.KeeperUID == keeperUID {
			return db
		}
	}
	return nil
}
