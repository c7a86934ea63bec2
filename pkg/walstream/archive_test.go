package walstream

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

const (
	testPrefix  = "c/wals/"
	testSegSize = 16 << 20
)

func objects(sizes map[string]int64) []storage.ObjectInfo {
	var out []storage.ObjectInfo
	for name, size := range sizes {
		out = append(out, storage.ObjectInfo{Name: testPrefix + name, Size: size})
	}
	return out
}

// switches is a switchFinder over a fixed table: timeline -> (next, switch point).
func switches(m map[wal.Timeline][2]uint64) switchFinder {
	return func(_ context.Context, tli wal.Timeline) (wal.Timeline, wal.LSN, bool, error) {
		if v, ok := m[tli]; ok {
			return wal.Timeline(v[0]), wal.LSN(v[1]), true, nil
		}
		return 0, 0, false, nil
	}
}

func TestResumeFromScan(t *testing.T) {
	const seg = testSegSize
	for _, tc := range []struct {
		name      string
		objs      map[string]int64
		switches  map[wal.Timeline][2]uint64
		want      resumePoint
		wantFound bool
		wantErr   bool
		// superseded are the .partial names (without prefix) to delete.
		superseded []string
	}{
		{name: "empty", objs: nil},
		{name: "only unrelated objects", objs: map[string]int64{
			"archive.json": 10, "sub/000000010000000000000001": seg, "000000010000000000000001.conflict-20260101T000000.000000000Z": seg,
		}},
		{name: "complete segments", objs: map[string]int64{
			"000000010000000000000001": seg, "000000010000000000000002": seg,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 3 * seg}},
		{name: "partial after complete", objs: map[string]int64{
			"000000010000000000000002": seg, "000000010000000000000003.partial": 0x1234,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 3*seg + 0x1234, Partial: testPrefix + "000000010000000000000003.partial"}},
		{name: "empty partial", objs: map[string]int64{
			"000000010000000000000003.partial": 0,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 3 * seg, Partial: testPrefix + "000000010000000000000003.partial"}},
		{name: "superseded partial", objs: map[string]int64{
			"000000010000000000000002": seg, "000000010000000000000002.partial": 100,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 3 * seg}, superseded: []string{"000000010000000000000002.partial"}},
		{name: "segment number crosses the xlog id", objs: map[string]int64{
			"0000000100000001000000FF": seg,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 0x2_00000000}},
		{name: "higher timeline wins over higher segment", objs: map[string]int64{
			"000000010000000000000009": seg, "000000020000000000000005": seg, "00000002.history": 40,
		}, switches: map[wal.Timeline][2]uint64{1: {2, 5*seg + 100}}, wantFound: true, want: resumePoint{Timeline: 2, Start: 6 * seg}},
		{name: "finished partial of an old timeline", objs: map[string]int64{
			"000000010000000000000004": seg, "000000010000000000000005.partial": 100, "00000002.history": 40,
		}, switches: map[wal.Timeline][2]uint64{1: {2, 5*seg + 100}}, wantFound: true, want: resumePoint{Timeline: 2, Start: 5 * seg}},
		{name: "finished partial shorter than the switch point", objs: map[string]int64{
			"000000010000000000000005.partial": 50, "00000002.history": 40,
		}, switches: map[wal.Timeline][2]uint64{1: {2, 5*seg + 100}}, wantFound: true, want: resumePoint{Timeline: 2, Start: 5 * seg}},
		{name: "complete segment ending at the switch point", objs: map[string]int64{
			"000000010000000000000004": seg, "00000002.history": 40,
		}, switches: map[wal.Timeline][2]uint64{1: {2, 5 * seg}}, wantFound: true, want: resumePoint{Timeline: 2, Start: 5 * seg}},
		{name: "complete segments short of the switch point", objs: map[string]int64{
			"000000010000000000000003": seg, "00000002.history": 40,
		}, switches: map[wal.Timeline][2]uint64{1: {2, 5*seg + 100}}, wantFound: true, want: resumePoint{Timeline: 1, Start: 4 * seg}},
		{name: "history of an unrelated timeline", objs: map[string]int64{
			"000000010000000000000005.partial": 100, "00000003.history": 40,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 5*seg + 100, Partial: testPrefix + "000000010000000000000005.partial"}},
		{name: "compressed segment counts as complete", objs: map[string]int64{
			"000000010000000000000005.zst": 1000,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 6 * seg}},
		{name: "mixed compression names form one sequence", objs: map[string]int64{
			"000000010000000000000001": seg, "000000010000000000000002.zst": 900, "000000010000000000000003.lz4": 1200, "000000010000000000000004.partial": 0x100,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 4*seg + 0x100, Partial: testPrefix + "000000010000000000000004.partial"}},
		{name: "lz4 segment is the top", objs: map[string]int64{
			"000000010000000000000002.zst": 900, "000000010000000000000003.lz4": 1200,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 4 * seg}},
		{name: "partial superseded by a zst segment", objs: map[string]int64{
			"000000010000000000000004": seg, "000000010000000000000005.zst": 1000, "000000010000000000000005.partial": 100,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 6 * seg}, superseded: []string{"000000010000000000000005.partial"}},
		{name: "partial superseded by an lz4 segment", objs: map[string]int64{
			"000000010000000000000005.lz4": 1000, "000000010000000000000005.partial": seg,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 6 * seg}, superseded: []string{"000000010000000000000005.partial"}},
		{name: "full partial after compressed segments", objs: map[string]int64{
			"000000010000000000000004.zst": 1000, "000000010000000000000005.partial": seg,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 6 * seg, Partial: testPrefix + "000000010000000000000005.partial"}},
		{name: "segment under two names", objs: map[string]int64{
			"000000010000000000000005": seg, "000000010000000000000005.lz4": 1000, "000000010000000000000005.zst": 900,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 6 * seg}},
		{name: "compressed partial superseded", objs: map[string]int64{
			"000000010000000000000005.lz4": 1000, "000000010000000000000005.partial.zst": 100,
		}, wantFound: true, want: resumePoint{Timeline: 1, Start: 6 * seg}, superseded: []string{"000000010000000000000005.partial.zst"}},
		{name: "compressed segment reaching the switch point", objs: map[string]int64{
			"000000010000000000000004.lz4": 1000, "00000002.history": 40,
		}, switches: map[wal.Timeline][2]uint64{1: {2, 5 * seg}}, wantFound: true, want: resumePoint{Timeline: 2, Start: 5 * seg}},
		{name: "compressed partial", objs: map[string]int64{
			"000000010000000000000005.partial.zst": 1000,
		}, wantErr: true},
		{name: "partial larger than a segment", objs: map[string]int64{
			"000000010000000000000005.partial": seg + 1,
		}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scan, err := scanArchive(objects(tc.objs), testPrefix, testSegSize)
			require.NoError(t, err)
			var superseded []string
			for _, s := range tc.superseded {
				superseded = append(superseded, testPrefix+s)
			}
			assert.Equal(t, superseded, scan.Superseded)
			got, found, err := resumeFromScan(t.Context(), scan, testSegSize, switches(tc.switches))
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantFound, found)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestScanArchiveWrongSegmentSize(t *testing.T) {
	// 0000000100000000000000FF exists with 16 MiB segments, not with 1 GiB ones.
	_, err := scanArchive(objects(map[string]int64{"0000000100000000000000FF": 1}), testPrefix, 1<<30)
	assert.Error(t, err)
}

func TestArchivedSwitchFinder(t *testing.T) {
	b, err := fs.New(filepath.Join(t.TempDir(), "a"), fs.Options{CreateRoot: true})
	require.NoError(t, err)
	ctx := t.Context()
	put := func(tli wal.Timeline, entries ...wal.HistoryEntry) {
		_, err := storage.PutOnce(ctx, b, testPrefix+wal.HistoryFileName(tli), wal.FormatHistory(entries))
		require.NoError(t, err)
	}
	// Timeline 2 forked from 1; 3 forked from 1 too (another branch); 4 from 2.
	put(2, wal.HistoryEntry{Timeline: 1, SwitchPoint: 0x5000100, Reason: "no recovery target specified"})
	put(3, wal.HistoryEntry{Timeline: 1, SwitchPoint: 0x4000000})
	put(4, wal.HistoryEntry{Timeline: 1, SwitchPoint: 0x5000100}, wal.HistoryEntry{Timeline: 2, SwitchPoint: 0x7000000})
	r := &Receiver{opts: Options{Backend: b, Prefix: testPrefix}}
	find := r.archivedSwitchFinder([]wal.Timeline{2, 3, 4})

	next, sp, ok, err := find(ctx, 1)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, wal.Timeline(2), next, "the lowest later timeline naming 1")
	assert.Equal(t, wal.LSN(0x5000100), sp)

	next, sp, ok, err = find(ctx, 2)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, wal.Timeline(4), next)
	assert.Equal(t, wal.LSN(0x7000000), sp)

	_, _, ok, err = find(ctx, 4)
	require.NoError(t, err)
	assert.False(t, ok)

	missing := r.archivedSwitchFinder([]wal.Timeline{9})
	_, _, _, err = missing(ctx, 1)
	assert.True(t, errors.Is(err, storage.ErrNotExist), "%v", err)
}

func TestNextTimelineAfter(t *testing.T) {
	hist := []wal.HistoryEntry{{Timeline: 1, SwitchPoint: 10}, {Timeline: 3, SwitchPoint: 20}}
	assert.Equal(t, wal.Timeline(3), nextTimelineAfter(hist, 5, 1))
	assert.Equal(t, wal.Timeline(5), nextTimelineAfter(hist, 5, 3))
	assert.Equal(t, wal.Timeline(5), nextTimelineAfter(nil, 5, 4))
}

func TestNewValidates(t *testing.T) {
	b, err := fs.New(filepath.Join(t.TempDir(), "a"), fs.Options{CreateRoot: true})
	require.NoError(t, err)
	ok := Options{ConnString: "host=127.0.0.1 user=r", Backend: b, Prefix: "c/wals/", Slot: "barnacle_1", CreateSlot: true}
	for _, tc := range []struct {
		name    string
		mod     func(*Options)
		wantErr bool
	}{
		{name: "valid", mod: func(*Options) {}},
		{name: "no prefix, no slot", mod: func(o *Options) { o.Prefix, o.Slot, o.CreateSlot = "", "", false }},
		{name: "compression none", mod: func(o *Options) { o.Compression = CompressionNone }},
		{name: "no backend", mod: func(o *Options) { o.Backend = nil }, wantErr: true},
		{name: "prefix without slash", mod: func(o *Options) { o.Prefix = "c/wals" }, wantErr: true},
		{name: "prefix with a hidden component", mod: func(o *Options) { o.Prefix = "c/.wals/" }, wantErr: true},
		{name: "upper-case slot", mod: func(o *Options) { o.Slot = "Barnacle" }, wantErr: true},
		{name: "slot with a quote", mod: func(o *Options) { o.Slot = `a"b` }, wantErr: true},
		{name: "create without a slot", mod: func(o *Options) { o.Slot = "" }, wantErr: true},
		{name: "zstd", mod: func(o *Options) { o.Compression = CompressionZstd }},
		{name: "lz4", mod: func(o *Options) { o.Compression = CompressionLZ4 }},
		{name: "zst is a suffix, not a setting", mod: func(o *Options) { o.Compression = "zst" }, wantErr: true},
		{name: "gzip", mod: func(o *Options) { o.Compression = "gzip" }, wantErr: true},
		{name: "negative interval", mod: func(o *Options) { o.FlushInterval = -1 }, wantErr: true},
		{name: "logical connection", mod: func(o *Options) { o.ConnString += " replication=database" }, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := ok
			tc.mod(&o)
			r, err := New(o)
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, DefaultStatusInterval, r.opts.StatusInterval)
			assert.Equal(t, DefaultFlushInterval, r.opts.FlushInterval)
		})
	}
}

func FuzzScanArchive(f *testing.F) {
	f.Add("000000010000000000000001", "000000010000000000000002.partial", "00000002.history", int64(100))
	f.Add("000000010000000000000001.zst", "0000000100000000000000FF.partial.lz4", "x", int64(-1))
	f.Fuzz(func(t *testing.T, a, b, c string, size int64) {
		objs := []storage.ObjectInfo{{Name: testPrefix + a, Size: size}, {Name: testPrefix + b, Size: size}, {Name: testPrefix + c, Size: size}}
		scan, err := scanArchive(objs, testPrefix, testSegSize)
		if err != nil {
			return
		}
		if scan.Found {
			base, _, _ := wal.SplitFileName(scan.Top.Key[len(testPrefix):])
			if !wal.IsSegmentFileName(base) {
				t.Fatalf("top %q is not a segment", scan.Top.Key)
			}
		}
		_, _, _ = resumeFromScan(t.Context(), scan, testSegSize, switches(nil))
	})
}
