package catalog

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func newBackend(t *testing.T) storage.Backend {
	t.Helper()
	b, err := fs.New(t.TempDir(), fs.Options{})
	require.NoError(t, err)
	return b
}

func TestEnsureIdentity(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	want := Identity{Cluster: "c1", SystemID: "7711797878400204491", WALSegmentSize: 16 << 20}

	first, err := EnsureIdentity(ctx, b, want)
	require.NoError(t, err)
	again, err := EnsureIdentity(ctx, b, want)
	require.NoError(t, err, "the same server again is fine")
	assert.Equal(t, first.CreatedAt.UTC(), again.CreatedAt.UTC(), "the stored identity is kept")

	other := want
	other.SystemID = "1234"
	_, err = EnsureIdentity(ctx, b, other)
	var mismatch *IdentityMismatchError
	require.ErrorAs(t, err, &mismatch)
	assert.True(t, errors.Is(err, ErrIdentityMismatch))
	assert.Equal(t, "system identifier", mismatch.Field)
	assert.Contains(t, err.Error(), "has system identifier 7711797878400204491 but the server has 1234")
	assert.Contains(t, err.Error(), "use another archive-url or cluster-name")

	seg := want
	seg.WALSegmentSize = 64 << 20
	_, err = EnsureIdentity(ctx, b, seg)
	require.ErrorAs(t, err, &mismatch)
	assert.Equal(t, "WAL segment size", mismatch.Field)

	// Another cluster name is another identity in the same archive.
	c2 := want
	c2.Cluster, c2.SystemID = "c2", "99"
	_, err = EnsureIdentity(ctx, b, c2)
	require.NoError(t, err)

	_, err = EnsureIdentity(ctx, b, Identity{Cluster: "c3", SystemID: "1", WALSegmentSize: 1000})
	require.Error(t, err, "an invalid segment size is refused")
}

func TestRecordGap(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	gaps, err := ReadGaps(ctx, b, "c")
	require.NoError(t, err)
	assert.Empty(t, gaps)

	g := Gap{Timeline: 2, StartLSN: 0x5000000, EndLSN: 0x7000000, Reason: "requested WAL segment has already been removed"}
	require.NoError(t, RecordGap(ctx, b, "c", g))
	require.NoError(t, RecordGap(ctx, b, "c", g), "recording the same gap twice keeps one")
	require.NoError(t, RecordGap(ctx, b, "c", Gap{Timeline: 2, StartLSN: 0x9000000, EndLSN: 0xA000000}))
	gaps, err = ReadGaps(ctx, b, "c")
	require.NoError(t, err)
	require.Len(t, gaps, 2)
	assert.Equal(t, uint64(0x2000000), gaps[0].Bytes)
	assert.False(t, gaps[0].DetectedAt.IsZero())

	require.Error(t, RecordGap(ctx, b, "c", Gap{StartLSN: 0x2, EndLSN: 0x1}), "an empty range is refused")
	require.Error(t, RecordGap(ctx, b, "c", Gap{EndLSN: 0x1}), "a gap without a start is refused")
}

func TestGapResolvedBy(t *testing.T) {
	gap := Gap{Timeline: 1, StartLSN: 0x3000000, EndLSN: 0x9000000}
	backup := func(id string, status BackupStatus, tli wal.Timeline, start wal.LSN) Backup {
		return Backup{ID: id, Status: status, StartTimeline: tli, StartLSN: start}
	}
	for _, tc := range []struct {
		name    string
		gap     Gap
		backups []Backup
		want    string // the resolving backup's ID; "" for none
	}{
		{"no backup", gap, nil, ""},
		{"only a backup before the gap", gap, []Backup{backup("a", StatusDone, 1, 0x2000028)}, ""},
		{"a backup after the gap still running", gap, []Backup{backup("a", StatusRunning, 1, 0xA000028)}, ""},
		{"a backup after the gap failed", gap, []Backup{backup("a", StatusFailed, 1, 0xA000028)}, ""},
		{"a backup starting inside the gap", gap, []Backup{backup("a", StatusDone, 1, 0x8000028)}, ""},
		{"a done backup starting at the gap's end", gap, []Backup{backup("a", StatusDone, 1, 0x9000000)}, "a"},
		{"a done backup on the next timeline", gap, []Backup{backup("a", StatusDone, 2, 0x9000028)}, "a"},
		{"a done backup on an older timeline", Gap{Timeline: 2, StartLSN: 0x3000000, EndLSN: 0x9000000},
			[]Backup{backup("a", StatusDone, 1, 0xA000028)}, ""},
		{"the oldest of two, newest first", gap, []Backup{backup("b", StatusDone, 1, 0xB000028), backup("a", StatusDone, 1, 0xA000028)}, "a"},
		{"unknown end: never resolved", Gap{Timeline: 1, StartLSN: 0x3000000}, []Backup{backup("a", StatusDone, 1, 0xA000028)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, ok := tc.gap.ResolvedBy(tc.backups)
			assert.Equal(t, tc.want != "", ok)
			assert.Equal(t, tc.want, d.ID)
			assert.Len(t, UnresolvedGaps([]Gap{tc.gap}, tc.backups), map[bool]int{true: 0, false: 1}[ok])
		})
	}
}
