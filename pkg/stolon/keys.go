package stolon

import "path"

// DefaultStorePrefix is Stolon's default --store-prefix. It has no leading
// slash, so Stolon's keys are "stolon/cluster/<name>/...", not "/stolon/...".
const DefaultStorePrefix = "stolon/cluster"

// ClusterDataKey returns the etcd key of the clusterdata of cluster under
// prefix, joined as Stolon joins it (path.Join: no slash is added or
// required at the front).
func ClusterDataKey(prefix, cluster string) string {
	return path.Join(prefix, cluster, "clusterdata")
}

// KeepersInfoPrefix returns the etcd key prefix, with its trailing slash,
// under which each live keeper publishes its KeeperInfo on a lease.
func KeepersInfoPrefix(prefix, cluster string) string {
	return path.Join(prefix, cluster, "keepers", "info") + "/"
}

// KeeperInfoKey returns the etcd key of keeperUID's KeeperInfo. The key
// disappears when the keeper's lease expires.
func KeeperInfoKey(prefix, cluster, keeperUID string) string {
	return path.Join(prefix, cluster, "keepers", "info", keeperUID)
}

// SlotPrefix is the prefix Stolon's keeper gives to every replication slot
// it manages (common.StolonName). The keeper drops any slot with this prefix
// that it does not want, so barnacle never creates one by hand.
const SlotPrefix = "stolon_"

// SlotName returns the physical replication slot the keeper creates on the
// master for an entry of additionalMasterReplicationSlots: "barman_slot"
// becomes "stolon_barman_slot".
func SlotName(additionalSlot string) string {
	return SlotPrefix + additionalSlot
}
