package request

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// TestBackupResultPositions reads a backup result written before positions
// were wal.LSN and writes it again byte for byte; a bad position names its
// field.
func TestBackupResultPositions(t *testing.T) {
	old, err := os.ReadFile("testdata/backup-result-old.json")
	require.NoError(t, err)
	var r BackupResult
	require.NoError(t, json.Unmarshal(old, &r))
	assert.Equal(t, wal.LSN(0x3000028), r.StartLSN)
	assert.Equal(t, wal.LSN(0x3000138), r.StopLSN)
	again, err := json.Marshal(r)
	require.NoError(t, err)
	assert.Equal(t, string(old), string(again))

	err = json.Unmarshal([]byte(`{"id":"x","startLSN":"0/3000028","stopLSN":"G/0"}`), &r)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "BackupResult.stopLSN")
}
