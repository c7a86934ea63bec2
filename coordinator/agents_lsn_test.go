package coordinator

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// TestAgentRecordPositions reads agent records written before positions
// were wal.LSN (a leader's, with positions, and a follower's, without) and
// writes them again byte for byte; a bad position names its field.
func TestAgentRecordPositions(t *testing.T) {
	for _, f := range []string{"testdata/agent-leader.json", "testdata/agent-follower.json"} {
		old, err := os.ReadFile(f)
		require.NoError(t, err)
		var a AgentStatus
		require.NoError(t, json.Unmarshal(old, &a), f)
		again, err := json.Marshal(a)
		require.NoError(t, err)
		assert.Equal(t, string(old), string(again), f)
		if a.Role == RoleLeader {
			assert.Equal(t, wal.LSN(0x3000060), a.ArchivedLSN)
		} else {
			assert.Equal(t, wal.InvalidLSN, a.ArchivedLSN)
		}
	}

	var a AgentStatus
	err := json.Unmarshal([]byte(`{"name":"a1","role":"leader","receivedLSN":"0/3000060","archivedLSN":"0x3000060"}`), &a)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "AgentStatus.archivedLSN")
}
