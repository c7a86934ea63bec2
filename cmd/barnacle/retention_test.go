package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
)

// TestRetentionCommand runs barnacle retention on a file:// archive with
// two done backups and the WAL between them: the plan names the older
// backup and the WAL before the newer one's start, --apply deletes exactly
// those, and a missing policy is a configuration error.
func TestRetentionCommand(t *testing.T) {
	ctx := t.Context()
	root, b := newTestArchive(t)
	putTestBackup(t, b, "20261101T000000", 2)
	putTestBackup(t, b, "20261102T000000", 5)
	putTestWAL(t, b, 2, 7)
	args := func(extra ...string) []string {
		return append([]string{"retention", "--cluster-name", "c1", "--archive-url", "file://" + root}, extra...)
	}

	var out, errOut bytes.Buffer
	require.Equal(t, exitUsage, run(ctx, args(), &out, &errOut))
	assert.Contains(t, errOut.String(), "retention-policy")

	out.Reset()
	errOut.Reset()
	require.Equal(t, exitOK, run(ctx, args("--retention-policy", "REDUNDANCY 1"), &out, &errOut), errOut.String())
	assert.Contains(t, out.String(), "20261101T000000")
	list, err := catalog.ListBackups(ctx, b, "c1")
	require.NoError(t, err)
	require.Len(t, list, 2, "without --apply nothing is deleted")

	out.Reset()
	require.Equal(t, exitOK, run(ctx, args("--retention-policy", "redundancy 1", "--apply"), &out, &errOut), errOut.String())
	list, err = catalog.ListBackups(ctx, b, "c1")
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, "20261102T000000", list[0].ID)
	objs, err := b.List(ctx, catalog.WALPrefix("c1"))
	require.NoError(t, err)
	var names []string
	for _, o := range objs {
		names = append(names, strings.TrimPrefix(o.Name, catalog.WALPrefix("c1")))
	}
	assert.Equal(t, []string{"000000010000000000000005", "000000010000000000000006", "000000010000000000000007"}, names,
		"WAL before the kept backup's start segment is gone, the rest stays")
}
