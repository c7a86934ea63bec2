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
