package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/internal/testenv"
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

// TestStatusBounded: a request just under etcd's size limit still gets a
// status (no full echo, a bounded error), and a status write that fails is
// logged and counted.
func TestStatusBounded(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client(t)
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	w := newStatusStore(cli, hclog.New(&hclog.LoggerOptions{Output: &logs}), reg)

	small := []byte(`{"from":"master"}`)
	echo, size := echoRequest(small)
	assert.Equal(t, json.RawMessage(small), echo)
	assert.Zero(t, size)
	huge := []byte(`{"keeper":"` + strings.Repeat("k", 1400<<10) + `","targetDir":"/restore/x"}`)
	echo, size = echoRequest(huge)
	assert.Nil(t, echo)
	assert.Equal(t, len(huge), size)
	echo, size = echoRequest([]byte(`{"from":`))
	assert.Nil(t, echo)
	assert.Equal(t, 8, size)

	// The rejection of the huge request quotes it; the status still fits.
	st := RestoreStatus{State: StateRejected, Agent: "a", StartedAt: time.Now().UTC(), RequestBytes: size,
		Error: fmt.Sprintf("unknown keeper %q: use a keeper UID from barnacle status", strings.Repeat("k", 1400<<10))}
	ok, err := putStatus(t.Context(), w, "status/restore/huge", st, true)
	require.NoError(t, err)
	require.True(t, ok)
	resp, err := cli.Get(t.Context(), "status/restore/huge")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	assert.Less(t, len(resp.Kvs[0].Value), 4<<10)
	var got RestoreStatus
	require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &got))
	assert.True(t, strings.HasPrefix(got.Error, `unknown keeper "kkk`), got.Error)
	assert.Contains(t, got.Error, "more bytes)")
	assert.Zero(t, testutil.ToFloat64(w.errors))

	// A write that fails: logged and counted.
	dead, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: time.Second})
	require.NoError(t, err)
	require.NoError(t, dead.Close())
	w.etcd = dead
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	_, err = putStatus(ctx, w, "status/backup/x", RequestStatus{State: StateRunning}, false)
	require.Error(t, err)
	assert.Equal(t, 1.0, testutil.ToFloat64(w.errors))
	assert.Contains(t, logs.String(), "writing a request status failed")
	assert.Contains(t, logs.String(), "key=status/backup/x")
}
