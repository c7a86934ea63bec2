package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/backup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// TestTablespaceBackup: a backup through the agents of a database with a
// user tablespace, taken while rows are inserted into it, verifies clean;
// backup.json lists the tablespace's archive with its OID and location; the
// manifest's WAL range is backup.json's start and stop LSN; and the stop
// LSN is not past the server's position afterwards.
func TestTablespaceBackup(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env := newArchiveEnv(t, testenv.ClusterOptions{})
	primary := env.pg.Primary()

	tsDir, oid := createTablespace(t, primary, "ts1")
	// The load's table, in the tablespace (StartLoad keeps an existing one).
	require.NoError(t, primary.Exec(ctx, `CREATE TABLE ts_load (id bigserial PRIMARY KEY, v int NOT NULL,
		at timestamptz NOT NULL DEFAULT clock_timestamp()) TABLESPACE ts1`))
	require.NoError(t, primary.Exec(ctx, "CREATE TABLE ts_data TABLESPACE ts1 AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g"))

	env.startAgents()
	leader := env.leaderFor(primary)
	load := testenv.StartLoad(t, primary, testenv.LoadOptions{Table: "ts_load", Interval: -1})

	out, stderr, code := barnacle(t, "backup", "--wait", "--json", "--label", "tablespace",
		"--cluster-name", cluster, "--store-endpoints", strings.Join(env.etcd.Endpoints(), ","))
	require.Equal(t, 0, code, "backup --wait: %s %s", out, stderr)
	rows, _, err := load.Stop()
	require.NoError(t, err, "the load")
	require.Positive(t, rows, "rows were inserted while the backup ran")
	var st request.BackupStatus
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.Equal(t, request.StateDone, st.State, st.Error)
	assert.Equal(t, leader.name, st.Agent)
	require.NotNil(t, st.Result)

	// verify-backup checks every file against the manifest and the
	// stored checksums.
	vout, vstderr, code := barnacle(t, "verify-backup", "latest", "--cluster-name", cluster, "--archive-url", "file://"+env.dir)
	require.Equal(t, 0, code, "verify-backup: %s%s", vout, vstderr)

	doc, err := catalog.ReadBackup(ctx, env.backend, cluster, st.Result.ID)
	require.NoError(t, err)
	assert.Equal(t, catalog.StatusDone, doc.Status)
	assert.Equal(t, "tablespace", doc.Label)
	require.NotNil(t, st.Progress, "the status key carries the progress")
	assert.Equal(t, request.Progress{Done: doc.Bytes, Total: doc.Bytes}, *st.Progress, "the last progress is the total")
	t.Logf("backup %s: %d bytes, %s..%s, %d rows inserted meanwhile", doc.ID, doc.Bytes, doc.StartLSN, doc.StopLSN, rows)

	// The tablespace's archive, with its OID and location.
	var ts *catalog.BackupFile
	for i, f := range doc.Files {
		if strings.HasPrefix(f.Name, strconv.FormatInt(oid, 10)+".tar") {
			ts = &doc.Files[i]
		}
	}
	require.NotNil(t, ts, "no archive of tablespace %d in %+v", oid, doc.Files)
	assert.Equal(t, uint32(oid), ts.TablespaceOID)
	assert.Equal(t, tsDir, ts.TablespaceLocation)
	assert.Positive(t, ts.Bytes)

	// The manifest's WAL range is the recorded one.
	manifest, err := storage.ReadAll(ctx, env.backend, catalog.BackupPrefix(cluster, doc.ID)+backup.ManifestName)
	require.NoError(t, err)
	var m struct {
		WALRanges []struct {
			Timeline int    `json:"Timeline"`
			StartLSN string `json:"Start-LSN"`
			EndLSN   string `json:"End-LSN"`
		} `json:"WAL-Ranges"`
	}
	require.NoError(t, json.Unmarshal(manifest, &m))
	require.Len(t, m.WALRanges, 1)
	assert.Equal(t, int(doc.StartTimeline), m.WALRanges[0].Timeline)
	assert.Equal(t, doc.StartLSN.String(), m.WALRanges[0].StartLSN)
	assert.Equal(t, doc.StopLSN.String(), m.WALRanges[0].EndLSN)

	// PostgreSQL's position afterwards is at or past the stop position.
	stop, start := doc.StopLSN, doc.StartLSN
	assert.LessOrEqual(t, start, stop)
	cur, err := primary.CurrentLSN(ctx)
	require.NoError(t, err)
	assert.LessOrEqual(t, uint64(stop), cur)
}

// createTablespace creates tablespace name on n in a directory of its own
// outside the data directory, owned by the server's OS user, and returns
// the directory and the tablespace's OID.
func createTablespace(t *testing.T, n *testenv.Node, name string) (string, int64) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.Mkdir(dir, 0o700))
	testenv.PGOwn(t, dir)
	require.NoError(t, n.Exec(t.Context(), fmt.Sprintf("CREATE TABLESPACE %s LOCATION '%s'", name, dir)))
	oid, err := n.QueryInt64(t.Context(), "SELECT oid::bigint FROM pg_tablespace WHERE spcname = $1", name)
	require.NoError(t, err)
	return dir, oid
}
