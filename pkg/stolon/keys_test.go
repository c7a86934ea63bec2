package stolon

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recordedKeys returns the etcd keys listed in a recorded keys file.
func recordedKeys(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	var keys []string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			keys = append(keys, line)
		}
	}
	require.NotEmpty(t, keys)
	return keys
}

func TestKeysMatchRecordedCluster(t *testing.T) {
	keys := recordedKeys(t, "testdata/keys.txt")
	assert.Contains(t, keys, ClusterDataKey(DefaultStorePrefix, "stolon-cluster"))
	for _, uid := range []string{"keeper0", "keeper1", "keeper2"} {
		assert.Contains(t, keys, KeeperInfoKey(DefaultStorePrefix, "stolon-cluster", uid))
	}
	var infos []string
	for _, k := range keys {
		if strings.HasPrefix(k, KeepersInfoPrefix(DefaultStorePrefix, "stolon-cluster")) {
			infos = append(infos, k)
		}
	}
	assert.Len(t, infos, 3)

	after := recordedKeys(t, "testdata/keys-after-failover.txt")
	assert.NotContains(t, after, KeeperInfoKey(DefaultStorePrefix, "stolon-cluster", "keeper1"), "dead keeper's leased info key is gone")
}

func TestClusterDataKey(t *testing.T) {
	tests := []struct {
		prefix, cluster, want string
	}{
		{DefaultStorePrefix, "stolon-cluster", "stolon/cluster/stolon-cluster/clusterdata"},
		{"stolon/cluster/", "c", "stolon/cluster/c/clusterdata"},
		{"/stolon/cluster", "c", "/stolon/cluster/c/clusterdata"},
		{"", "c", "c/clusterdata"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			assert.Equal(t, tt.want, ClusterDataKey(tt.prefix, tt.cluster))
		})
	}
	assert.Equal(t, "stolon/cluster/c/keepers/info/", KeepersInfoPrefix(DefaultStorePrefix, "c"))
	assert.Equal(t, "stolon/cluster/c/keepers/info/k1", KeeperInfoKey(DefaultStorePrefix, "c", "k1"))
}
