package retention

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

const cluster = "c1"

// archive builds a file:// archive in a temporary directory holding the
// given backups (each with a base.tar.zst and a backup_manifest) and WAL
// files (small stand-ins: only names and sizes matter to retention).
func archive(t *testing.T, backups []catalog.Backup, walFiles []WALFile, histories map[wal.Timeline][]wal.HistoryEntry) storage.Backend {
	t.Helper()
	ctx := t.Context()
	b, err := fs.New(t.TempDir(), fs.Options{})
	require.NoError(t, err)
	_, err = catalog.EnsureIdentity(ctx, b, catalog.Identity{Cluster: cluster, SystemID: "7711797878400204491", WALSegmentSize: segSize})
	require.NoError(t, err)
	for _, d := range backups {
		for _, f := range []string{"base.tar.zst", "backup_manifest"} {
			require.NoError(t, b.Put(ctx, catalog.BackupPrefix(cluster, d.ID)+f, strings.NewReader(d.ID+f), storage.PutOptions{}))
		}
		require.NoError(t, catalog.PutBackup(ctx, b, cluster, d))
	}
	for _, f := range walFiles {
		data := []byte(f.Name)
		if tli, err := wal.ParseHistoryFileName(f.Name); err == nil {
			data = wal.FormatHistory(histories[tli])
		}
		require.NoError(t, b.Put(ctx, catalog.WALPrefix(cluster)+f.Name, bytes.NewReader(data), storage.PutOptions{}))
	}
	return b
}

// objects lists every object name of the cluster.
func objects(t *testing.T, b storage.Backend) []string {
	t.Helper()
	objs, err := b.List(t.Context(), cluster+"/")
	require.NoError(t, err)
	var out []string
	for _, o := range objs {
		out = append(out, o.Name)
	}
	return out
}

func backupObjects(ids ...string) []string {
	var out []string
	for _, id := range ids {
		for _, f := range []string{"backup.json", "base.tar.zst", "backup_manifest"} {
			out = append(out, catalog.BackupPrefix(cluster, id)+f)
		}
	}
	return out
}

func walObjects(ns ...string) []string {
	var out []string
	for _, n := range ns {
		out = append(out, catalog.WALPrefix(cluster)+n)
	}
	return out
}

func TestApply(t *testing.T) {
	ctx := t.Context()
	hist := map[wal.Timeline][]wal.HistoryEntry{2: {{Timeline: 1, SwitchPoint: wal.LSN(6*segSize + 0x100), Reason: "no recovery target specified"}}}
	backups := []catalog.Backup{
		bk("20260101T000000", catalog.StatusFailed, 1),
		done("20260102T000000", 2),
		kept(done("20260103T000000", 3)),
		done("20260104T000000", 4),
		bk("20260105T000000", catalog.StatusFailed, 5),
		onTimeline(done("20260106T000000", 8), 2),
		onTimeline(done("20260107T000000", 9), 2),
		onTimeline(bk("20260108T000000", catalog.StatusRunning, 10), 2),
	}
	walFiles := append(append(segs(1, 1, 7), WALFile{Name: "00000002.history"},
		WALFile{Name: segName(1, 6) + ".partial"},
		WALFile{Name: segName(1, 1) + ".conflict-20260101T000000.000000000Z"}), segs(2, 6, 11)...)
	b := archive(t, backups, walFiles, hist)

	in, err := ReadInput(ctx, b, cluster, redundancy(2, 0))
	require.NoError(t, err)
	assert.Equal(t, uint64(segSize), in.WALSegmentSize)
	assert.Equal(t, hist, in.Histories)
	p := MakePlan(in)
	// REDUNDANCY 2 keeps the TL2 backups; the kept TL1 backup 20260103
	// holds the WAL from segment 3 on TL1; failed 20260101 is older than the
	// oldest backup the policy keeps, failed 20260105 too.
	assert.Equal(t, map[string]Rule{"20260101T000000": RuleFailedOld, "20260102T000000": RuleBeyondRedundancy,
		"20260104T000000": RuleBeyondRedundancy, "20260105T000000": RuleFailedOld}, ruleOf(p.Delete))
	assert.Equal(t, []string{segName(1, 1), segName(1, 2)}, names(p.WAL.Delete))

	before := objects(t, b)
	res, err := Apply(ctx, b, cluster, p)
	require.NoError(t, err)
	var deleted []string
	for _, d := range res.Deleted {
		deleted = append(deleted, d.ID)
	}
	assert.Equal(t, []string{"20260101T000000", "20260102T000000", "20260104T000000", "20260105T000000"}, deleted)
	assert.Equal(t, 2, res.DeletedWAL)
	assert.Equal(t, int64(2*len(segName(1, 1))), res.DeletedWALBytes, "the stand-ins' real sizes")

	gone := append(backupObjects("20260101T000000", "20260102T000000", "20260104T000000", "20260105T000000"),
		walObjects(segName(1, 1), segName(1, 2))...)
	var want []string
	for _, o := range before {
		if !slices.Contains(gone, o) {
			want = append(want, o)
		}
	}
	assert.Equal(t, want, objects(t, b), "exactly the planned objects are gone")

	// Again with the same plan: nothing left to do, nothing else touched.
	res, err = Apply(ctx, b, cluster, p)
	require.NoError(t, err)
	assert.Empty(t, res.Deleted)
	assert.Len(t, res.Gone, 4)
	assert.Equal(t, 2, res.DeletedWAL, "deleting a missing object is success")
	assert.Equal(t, want, objects(t, b))

	// A fresh plan finds nothing more.
	in, err = ReadInput(ctx, b, cluster, redundancy(2, 0))
	require.NoError(t, err)
	p = MakePlan(in)
	assert.Empty(t, p.Delete)
	assert.Empty(t, p.WAL.Delete)
}

func TestApplyRechecksEachBackup(t *testing.T) {
	ctx := t.Context()
	backups := []catalog.Backup{
		bk("20260101T000000", catalog.StatusFailed, 1),
		done("20260102T000000", 2),
		done("20260103T000000", 3),
		done("20260104T000000", 4),
	}
	b := archive(t, backups, segs(1, 1, 5), nil)
	in, err := ReadInput(ctx, b, cluster, redundancy(1, 0))
	require.NoError(t, err)
	p := MakePlan(in)
	require.Len(t, p.Delete, 3)
	require.Len(t, p.WAL.Delete, 3)

	// Between plan and apply, a user keeps one backup the plan deletes.
	require.NoError(t, catalog.SetKeep(ctx, b, cluster, "20260102T000000", true))
	before := objects(t, b)
	res, err := Apply(ctx, b, cluster, p)
	require.NoError(t, err)
	require.Len(t, res.Skipped, 1)
	assert.Equal(t, "20260102T000000", res.Skipped[0].ID)
	assert.Contains(t, res.Skipped[0].Reason, "marked keep")
	assert.Len(t, res.Deleted, 2)
	assert.Zero(t, res.DeletedWAL, "the WAL cut assumed the kept backup gone")
	assert.NotEmpty(t, res.WALSkipped)
	after := objects(t, b)
	for _, o := range walObjects(names(segs(1, 1, 5))...) {
		assert.Contains(t, after, o)
	}
	for _, o := range backupObjects("20260102T000000", "20260104T000000") {
		assert.Contains(t, after, o)
	}
	assert.Len(t, after, len(before)-6)

	// The next plan keeps the WAL the kept backup needs.
	in, err = ReadInput(ctx, b, cluster, redundancy(1, 0))
	require.NoError(t, err)
	p = MakePlan(in)
	assert.Empty(t, p.Delete)
	assert.Equal(t, []string{segName(1, 1)}, names(p.WAL.Delete))
}

func TestApplyStopsWithContext(t *testing.T) {
	b := archive(t, []catalog.Backup{done("20260101T000000", 1), done("20260102T000000", 2)}, segs(1, 1, 3), nil)
	in, err := ReadInput(t.Context(), b, cluster, redundancy(1, 0))
	require.NoError(t, err)
	p := MakePlan(in)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = Apply(ctx, b, cluster, p)
	require.ErrorIs(t, err, context.Canceled)
	assert.Len(t, objects(t, b), len(backupObjects("a", "b"))+3+1, "nothing deleted")
}
