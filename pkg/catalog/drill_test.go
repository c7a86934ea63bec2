package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func TestWriteDrillIfAbsent(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	t0 := time.Date(2026, 12, 6, 15, 0, 0, 0, time.UTC)
	d := Drill{ID: "20261206T150000-abcdef", Node: "n1", BackupID: "20261206T140000", Status: DrillDone,
		Promised: Position{Timeline: 2, LSN: 0x3000000}, Reached: Position{Timeline: 2, LSN: 0x3000000},
		StartedAt: t0, FinishedAt: t0.Add(time.Minute), Phases: DrillPhases{Restore: time.Second, Replay: 2 * time.Second, Check: 3 * time.Second}}
	require.NoError(t, WriteDrill(ctx, b, "c", d))

	// The JSON shape of docs/design.md §2.
	raw, err := storage.ReadAll(ctx, b, "c/drills/20261206T150000-abcdef.json")
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(raw, &m))
	assert.Equal(t, map[string]any{"timeline": float64(2), "lsn": "0/3000000"}, m["promised"])
	assert.Equal(t, map[string]any{"restoreNs": float64(1e9), "replayNs": float64(2e9), "checkNs": float64(3e9)}, m["phases"])
	assert.NotContains(t, m, "reachedTime", "a zero time is left out")
	assert.Equal(t, 6*time.Second, d.Phases.RTO())

	// Write-if-absent: a second record under the same ID is refused and
	// the first stays.
	other := d
	other.Status, other.Error = DrillFailed, "something"
	err = WriteDrill(ctx, b, "c", other)
	require.ErrorIs(t, err, storage.ErrExist)
	got, err := ListDrills(ctx, b, "c")
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, DrillDone, got[0].Status)
	assert.True(t, got[0].StartedAt.Equal(t0))

	for _, bad := range []string{"", "../x", "a/b", ".hidden", "with space", string(bytes.Repeat([]byte("x"), 101))} {
		err := WriteDrill(ctx, b, "c", Drill{ID: bad, Status: DrillDone})
		assert.ErrorIs(t, err, ErrInvalidDrillID, "%q", bad)
	}
	err = WriteDrill(ctx, b, "c", Drill{ID: "x", Status: "running"})
	assert.ErrorContains(t, err, `invalid status "running"`)
}

func TestListDrills(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	got, err := ListDrills(ctx, b, "c")
	require.NoError(t, err)
	assert.Empty(t, got, "no drills yet")

	t0 := time.Date(2026, 12, 6, 15, 0, 0, 0, time.UTC)
	// Written out of order; IDs that do not sort like the times.
	for _, d := range []Drill{
		{ID: "b", StartedAt: t0.Add(2 * time.Hour), FinishedAt: t0.Add(2*time.Hour + time.Minute), Status: DrillFailed, Error: "no space"},
		{ID: "c", StartedAt: t0, FinishedAt: t0.Add(time.Minute), Status: DrillDone, Reached: Position{Timeline: 1, LSN: wal.LSN(0x100)}},
		{ID: "a", StartedAt: t0.Add(time.Hour), FinishedAt: t0.Add(time.Hour + time.Minute), Status: DrillDone},
		{ID: "d", StartedAt: t0.Add(time.Hour), FinishedAt: t0.Add(time.Hour + 2*time.Minute), Status: DrillFailed},
	} {
		require.NoError(t, WriteDrill(ctx, b, "c", d))
	}
	// Another cluster's drill and a foreign object are not listed.
	require.NoError(t, WriteDrill(ctx, b, "other", Drill{ID: "z", Status: DrillDone}))
	require.NoError(t, b.Put(ctx, "c/drills/notes.txt", bytes.NewReader([]byte("x")), storage.PutOptions{}))

	got, err = ListDrills(ctx, b, "c")
	require.NoError(t, err)
	var ids []string
	for _, d := range got {
		ids = append(ids, d.ID)
	}
	assert.Equal(t, []string{"c", "a", "d", "b"}, ids, "oldest first, ties by ID")
	assert.Equal(t, wal.LSN(0x100), got[0].Reached.LSN)

	last, ok := LastSuccessfulDrill(got)
	require.True(t, ok)
	assert.Equal(t, "a", last.ID, "the failed later drills do not count")
	_, ok = LastSuccessfulDrill(got[3:])
	assert.False(t, ok)
}

func TestListDrillsBadRecord(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	require.NoError(t, WriteDrill(ctx, b, "c", Drill{ID: "good", Status: DrillDone}))
	require.NoError(t, b.Put(ctx, "c/drills/broken.json", bytes.NewReader([]byte("{not json")), storage.PutOptions{}))
	_, err := ListDrills(ctx, b, "c")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "c/drills/broken.json", "the error names the object")

	b = newBackend(t)
	require.NoError(t, b.Put(ctx, "c/drills/x.json", bytes.NewReader([]byte(`{"id":"y","status":"done"}`)), storage.PutOptions{}))
	_, err = ListDrills(ctx, b, "c")
	require.Error(t, err)
	assert.Contains(t, err.Error(), `c/drills/x.json names drill "y"`)
	assert.False(t, errors.Is(err, storage.ErrNotExist))
}
