package agent

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestParseRequestsTrailingData: one request is one JSON object; anything
// after it is refused, whitespace aside.
func TestParseRequestsTrailingData(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		ok          bool
	}{
		{"one object", `{"from":"master"}`, true},
		{"trailing newline", "{\"from\":\"master\"}\n  ", true},
		{"second object", `{"from":"master"} {"x":1}`, false},
		{"trailing garbage", `{"from":"master"}x`, false},
		{"second value", `{"from":"master"} 1`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseBackupRequest([]byte(tc.value))
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
				assert.Contains(t, err.Error(), "malformed request: trailing data after the JSON object")
			}
			restoreValue := `{"keeper":"k"}` + tc.value[len(`{"from":"master"}`):]
			_, err = parseRestoreRequest([]byte(restoreValue))
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
				assert.Contains(t, err.Error(), "malformed request: trailing data after the JSON object")
			}
		})
	}
}
