package testenv

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// The mirror types must reproduce what Stolon wrote byte for byte, so the
// simulator's values have Stolon's exact shape and field order.
func TestClusterdataRoundTripIsByteExact(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../../pkg/stolon/testdata/clusterdata-*.raw.json")
	require.NoError(t, err)
	files = append(files, "testdata/stolon-clusterdata-initial.raw.json")
	require.GreaterOrEqual(t, len(files), 2)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			require.NoError(t, err)
			cd, err := decodeClusterdata(raw)
			require.NoError(t, err)
			out, err := json.Marshal(cd)
			require.NoError(t, err)
			require.Equal(t, string(raw), string(out))
		})
	}
}

// The embedded template is the recorded file, unchanged.
func TestClusterdataTemplateMatchesRecording(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../pkg/stolon/testdata/clusterdata-initial.raw.json")
	if os.IsNotExist(err) {
		t.Log("pkg/stolon/testdata/clusterdata-initial.raw.json moved; only the embedded copy is checked")
		return
	}
	require.NoError(t, err)
	require.True(t, bytes.Equal(raw, stolonClusterdataTemplate))
}
