package stolon

import (
	"encoding/json"
	"fmt"
)

// KeeperInfo is what a live keeper publishes under
// "<prefix>/<cluster>/keepers/info/<uid>" on a lease. It is fresher than
// clusterdata, but disappears when the keeper dies.
type KeeperInfo struct {
	InfoUID               string                `json:"infoUID"`
	UID                   string                `json:"uid"`
	ClusterUID            string                `json:"clusterUID"`
	BootUUID              string                `json:"bootUUID"`
	PostgresBinaryVersion PostgresBinaryVersion `json:"postgresBinaryVersion"`
	// PostgresState is nil until the keeper has looked at its instance.
	PostgresState           *PostgresState `json:"postgresState"`
	CanBeMaster             *bool          `json:"canBeMaster,omitempty"`
	CanBeSynchronousReplica *bool          `json:"canBeSynchronousReplica,omitempty"`
}

// PostgresState is the keeper's report on its instance.
type PostgresState struct {
	// UID is the DB UID the keeper currently runs.
	UID           string `json:"uid"`
	Generation    int64  `json:"generation"`
	ListenAddress string `json:"listenAddress"`
	Port          string `json:"port"`
	Healthy       bool   `json:"healthy"`
	// SystemID is spelled correctly here, unlike DBStatus's "systemdID".
	SystemID         string            `json:"systemID"`
	TimelineID       uint64            `json:"timelineID"`
	XLogPos          uint64            `json:"xLogPos"`
	TimelinesHistory []TimelineHistory `json:"timelinesHistory,omitempty"`
	OlderWalFile     string            `json:"olderWalFile,omitempty"`
}

// DecodeKeeperInfo parses a keepers/info value. Malformed JSON gives an error
// wrapping the json error; a value without a keeper UID is refused.
func DecodeKeeperInfo(data []byte) (*KeeperInfo, error) {
	var ki KeeperInfo
	if err := json.Unmarshal(data, &ki); err != nil {
		return nil, fmt.Errorf("decode keeper info: %w", err)
	}
	if ki.UID == "" {
		return nil, fmt.Errorf("decode keeper info: uid is empty")
	}
	return &ki, nil
}
