package catalog

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// TestOldDocumentsRoundTrip reads backup.json and gaps.json files written
// by barnacle before positions were wal.LSN (testdata/olddocs: a done, a
// running and a failed backup, and a gap) and writes them again the way
// PutBackup and RecordGap do: the bytes are the same, "" included.
func TestOldDocumentsRoundTrip(t *testing.T) {
	files, err := filepath.Glob("testdata/olddocs/*.json")
	require.NoError(t, err)
	require.Len(t, files, 4)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			old, err := os.ReadFile(f)
			require.NoError(t, err)
			var v any = &Backup{}
			if filepath.Base(f) == "gaps.json" {
				v = &gapsDoc{}
			}
			require.NoError(t, json.Unmarshal(old, v))
			again, err := json.MarshalIndent(v, "", "  ")
			require.NoError(t, err)
			assert.Equal(t, string(old), string(again)+"\n")
		})
	}

	var running Backup
	require.NoError(t, json.Unmarshal(readFile(t, "testdata/olddocs/backup-running.json"), &running))
	assert.Equal(t, wal.InvalidLSN, running.StartLSN, `"" reads as no position`)
	assert.Equal(t, wal.InvalidLSN, running.StopLSN)
	var done Backup
	require.NoError(t, json.Unmarshal(readFile(t, "testdata/olddocs/backup-done.json"), &done))
	assert.Equal(t, wal.LSN(0x3000028), done.StartLSN)
	assert.Equal(t, wal.LSN(0x3000138), done.StopLSN)
}

// TestBadLSNInDocument: a position that is not an LSN makes the document
// unreadable, and the error names the field.
func TestBadLSNInDocument(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	const id = "20261124T170005"
	doc := strings.Replace(string(readFile(t, "testdata/olddocs/backup-done.json")), `"20261206T100000Z"`, `"`+id+`"`, 1)
	putObject(t, b, BackupObject("c", id), []byte(strings.Replace(doc, `"stopLSN": "0/3000138"`, `"stopLSN": "3000138"`, 1)))
	_, err := ReadBackup(ctx, b, "c", id)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Backup.stopLSN")
	assert.Contains(t, err.Error(), `"3000138"`)

	gaps := strings.Replace(string(readFile(t, "testdata/olddocs/gaps.json")), `"endLSN": "0/8000000"`, `"endLSN": "0/8000000x"`, 1)
	putObject(t, b, GapsObject("c"), []byte(gaps))
	_, err = ReadGaps(ctx, b, "c")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "endLSN")
	assert.Contains(t, err.Error(), `"0/8000000x"`)
	t.Log(err)
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	require.NoError(t, err)
	return data
}
