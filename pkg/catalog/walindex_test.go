package catalog

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// index builds an index of names under "c/wals/"; a name "X=n" has size n,
// others the segment size.
func index(names ...string) *WALIndex {
	var objs []storage.ObjectInfo
	for _, n := range names {
		size := int64(segSize)
		if name, v, ok := strings.Cut(n, "="); ok {
			n = name
			size, _ = strconv.ParseInt(v, 10, 64)
		}
		objs = append(objs, storage.ObjectInfo{Name: "c/wals/" + n, Size: size})
	}
	return IndexWAL(objs, "c/wals/", segSize)
}

func TestWALIndexServe(t *testing.T) {
	for _, tc := range []struct {
		name   string
		files  []string
		tli    wal.Timeline
		seg    wal.SegmentNo
		served string // object name served; "" for none
		why    string // substring of the reason when none
	}{
		{"plain segment", []string{seg(1, 3)}, 1, 3, seg(1, 3), ""},
		{"zst segment", []string{seg(1, 3) + ".zst"}, 1, 3, seg(1, 3) + ".zst", ""},
		{"lz4 segment", []string{seg(1, 3) + ".lz4"}, 1, 3, seg(1, 3) + ".lz4", ""},
		{"plain wins over compressed", []string{seg(1, 3) + ".lz4", seg(1, 3) + ".zst", seg(1, 3)}, 1, 3, seg(1, 3), ""},
		{"zst wins over lz4", []string{seg(1, 3) + ".lz4", seg(1, 3) + ".zst"}, 1, 3, seg(1, 3) + ".zst", ""},
		{"missing", []string{seg(1, 2), seg(1, 4)}, 1, 3, "", "not in the archive"},
		{"the newest timeline's final partial is served",
			[]string{seg(1, 2), seg(1, 3) + ".partial=4096"}, 1, 3, seg(1, 3) + ".partial", ""},
		{"a complete copy supersedes the partial",
			[]string{seg(1, 3) + ".partial=4096", seg(1, 3) + ".zst"}, 1, 3, seg(1, 3) + ".zst", ""},
		{"an old timeline's partial is never served (later history file)",
			[]string{seg(1, 3) + ".partial=4096", "00000002.history"}, 1, 3, "", "timeline 1 is not the newest (the archive has 00000002.history)"},
		{"an old timeline's partial is never served (later segment)",
			[]string{seg(1, 3) + ".partial=4096", "00000002.history", seg(2, 3)}, 1, 3, "", "timeline 1 is not the newest (the archive has " + seg(2, 3) + ")"},
		{"an old timeline's partial is never served (a later timeline's partial only)",
			[]string{seg(1, 3) + ".partial=4096", seg(2, 3) + ".partial=10"}, 1, 3, "", "timeline 1 is not the newest"},
		{"a partial in the middle of its timeline is not served",
			[]string{seg(1, 3) + ".partial=4096", seg(1, 4)}, 1, 3, "", "not the end of timeline 1 (the archive has " + seg(1, 4) + ")"},
		{"a partial before a later partial is not served",
			[]string{seg(1, 3) + ".partial=4096", seg(1, 5) + ".partial=1"}, 1, 3, "", "not the end of timeline 1"},
		{"a compressed partial is not served",
			[]string{seg(1, 3) + ".partial.zst=100"}, 1, 3, "", "compressed"},
		{"conflict copies and foreign names do not count as later",
			[]string{seg(1, 3) + ".partial=4096", seg(1, 4) + ".conflict-20260101T000000Z", "README", "00000002.history.conflict-20260101T000000Z"},
			1, 3, seg(1, 3) + ".partial", ""},
		{"an older timeline's WAL does not stop the newest one's partial",
			[]string{seg(1, 3), seg(1, 9), "00000002.history", seg(2, 3) + ".partial=100"}, 2, 3, seg(2, 3) + ".partial", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix := index(tc.files...)
			o, ok, why := ix.Serve(tc.tli, tc.seg)
			if tc.served == "" {
				assert.False(t, ok, "served %s", o.Name)
				assert.Contains(t, why, tc.why)
				return
			}
			require.True(t, ok, why)
			assert.Equal(t, tc.served, o.Name)
			assert.Equal(t, "c/wals/"+tc.served, o.Key)
			assert.Empty(t, why)
		})
	}
}

func TestWALIndexStored(t *testing.T) {
	ix := index(seg(1, 3), seg(1, 4)+".partial=5", seg(1, 5), seg(1, 6)+".partial=7",
		"00000002.history", seg(2, 6), seg(2, 7)+".partial=9")
	for _, tc := range []struct {
		tli  wal.Timeline
		seg  wal.SegmentNo
		want bool
	}{
		{1, 3, true},
		{1, 4, false}, // a partial in the middle is a hole
		{1, 5, true},
		{1, 6, true}, // the final partial of an old timeline ends it: no hole, though never served
		{1, 7, false},
		{2, 6, true},
		{2, 7, true},
		{2, 8, false},
	} {
		assert.Equal(t, tc.want, ix.Stored(tc.tli, tc.seg), "timeline %d segment %d", tc.tli, tc.seg)
	}
}

func TestWALIndexReach(t *testing.T) {
	const s = wal.LSN(segSize)
	for _, tc := range []struct {
		name  string
		files []string
		tli   wal.Timeline
		from  wal.LSN
		to    wal.LSN
		hole  string
	}{
		{"to the end of complete segments", []string{seg(1, 3), seg(1, 4) + ".zst"}, 1, 3*s + 0x100, 5 * s, ""},
		{"into the served partial", []string{seg(1, 3), seg(1, 4) + ".partial=4096"}, 1, 3*s + 0x100, 4*s + 4096, ""},
		{"a hole before later WAL", []string{seg(1, 3), seg(1, 5)}, 1, 3*s + 0x100, 4 * s, seg(1, 4)},
		{"a partial in the middle is a hole", []string{seg(1, 3), seg(1, 4) + ".partial=10", seg(1, 5)}, 1, 3*s + 0x100, 4 * s, seg(1, 4)},
		{"an old timeline stops before its unserved partial, without a hole",
			[]string{seg(1, 3), seg(1, 4) + ".partial=4096", "00000002.history", seg(2, 4)}, 1, 3*s + 0x100, 4 * s, ""},
		{"nothing stored at the start", []string{seg(1, 5)}, 1, 3*s + 0x100, 3*s + 0x100, seg(1, 3)},
		{"nothing stored at all", nil, 1, 3*s + 0x100, 3*s + 0x100, ""},
		{"a partial shorter than from", []string{seg(1, 3) + ".partial=16"}, 1, 3*s + 0x100, 3*s + 0x100, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix := index(tc.files...)
			to, hole := ix.Reach(tc.tli, tc.from)
			assert.Equal(t, tc.to.String(), to.String())
			assert.Equal(t, tc.hole, hole)
		})
	}
}

func TestWALIndexListing(t *testing.T) {
	ix := IndexWAL([]storage.ObjectInfo{
		{Name: "c/wals/" + seg(1, 3)},
		{Name: "c/wals/" + seg(1, 3) + ".partial", Size: 10},
		{Name: "c/wals/" + seg(1, 9) + ".zst"},
		{Name: "c/wals/00000003.history"},
		{Name: "c/wals/" + seg(2, 7) + ".partial", Size: 20},
		{Name: "c/wals/" + seg(2, 7) + ".conflict-20260101T000000Z"},
		{Name: "c/wals/00000000.history"},
		{Name: "c/wals/000000010000000000000100"}, // segment number beyond 16 MiB segments
		{Name: "c/wals/notes.txt"},
		{Name: "c/wals/sub/" + seg(5, 1)},
		{Name: "other/wals/" + seg(6, 1)},
	}, "c/wals/", segSize)
	assert.Equal(t, []wal.Timeline{1, 2, 3}, ix.Timelines())
	assert.Equal(t, wal.Timeline(3), ix.newest())
	lo, hi, ok := ix.Bounds(1)
	assert.True(t, ok)
	assert.Equal(t, [2]wal.SegmentNo{3, 9}, [2]wal.SegmentNo{lo, hi})
	_, _, ok = ix.Bounds(3)
	assert.False(t, ok)
	h, ok := ix.History(3)
	assert.True(t, ok)
	assert.Equal(t, "00000003.history", h.Name)
	assert.Len(t, ix.Histories(), 1)
	top, ok := ix.Top()
	require.True(t, ok)
	assert.Equal(t, seg(2, 7)+".partial", top.Name)
	assert.Equal(t, []string{seg(1, 3) + ".partial"}, names(ix.Superseded()))
	assert.Equal(t, []string{seg(2, 7) + ".conflict-20260101T000000Z"}, names(ix.Conflicts()))
	assert.Equal(t, []string{"00000000.history", "000000010000000000000100", "notes.txt"}, names(ix.Unknown()))
	assert.Len(t, ix.Invalid(), 2)
	assert.Equal(t, uint64(segSize), ix.SegmentSize())

	empty := IndexWAL(nil, "c/wals/", segSize)
	_, ok = empty.Top()
	assert.False(t, ok)
	assert.Equal(t, wal.Timeline(0), empty.newest())
}

func TestWALIndexTopPrefersComplete(t *testing.T) {
	ix := index(seg(1, 4)+".partial=10", seg(1, 4)+".lz4", seg(1, 2))
	top, ok := ix.Top()
	require.True(t, ok)
	assert.Equal(t, seg(1, 4)+".lz4", top.Name)
}

func names(objs []WALObject) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.Name)
	}
	return out
}

func TestPositionReached(t *testing.T) {
	target := Position{Timeline: 2, LSN: 0x5000100}
	for _, tc := range []struct {
		p    Position
		want bool
	}{
		{Position{}, false}, // nothing archived yet
		{Position{2, 0x5000100}, true},
		{Position{2, 0x5000200}, true},
		{Position{2, 0x50000FF}, false},
		{Position{1, 0x9000000}, false}, // an earlier timeline never reaches, however far
		{Position{3, 0x1000000}, true},  // a later one has archived target's timeline to its end
	} {
		assert.Equal(t, tc.want, tc.p.Reached(target), "%+v", tc.p)
	}
}

// FuzzIndexWAL: any listing indexes without panicking, and what Serve hands
// out obeys the .partial rule.
func FuzzIndexWAL(f *testing.F) {
	f.Add(seg(1, 3), seg(1, 4)+".partial", "00000002.history", int64(100))
	f.Add(seg(2, 3)+".zst", seg(1, 3)+".partial.lz4", seg(1, 3)+".conflict-x", int64(-1))
	f.Fuzz(func(t *testing.T, a, b, c string, size int64) {
		ix := IndexWAL([]storage.ObjectInfo{{Name: "c/wals/" + a, Size: size}, {Name: "c/wals/" + b, Size: size}, {Name: "c/wals/" + c, Size: size}}, "c/wals/", segSize)
		for _, o := range ix.Segments() {
			got, ok, why := ix.Serve(o.Timeline, o.Segment)
			if ok && got.Partial && (ix.partialServed(o.Timeline, o.Segment) != "" || o.Timeline != ix.newest()) {
				t.Fatalf("served %s though %s", got.Name, why)
			}
			if !ok && why == "" {
				t.Fatalf("%s: not served and no reason", o.Name)
			}
			_, _ = ix.Reach(o.Timeline, wal.SegmentStart(o.Segment, segSize))
		}
	})
}

// TestServeSegmentAgreesWithWholeIndex: ServeSegment, which reads the
// segment's names and a page of what follows, answers what Serve answers
// on the index of the whole WAL prefix, on random archives (complete
// segments in every compression, .partial files, superseded ones, history
// files, conflict copies and foreign names over three timelines), with
// pages of two names so that paging is exercised.
func TestServeSegmentAgreesWithWholeIndex(t *testing.T) {
	old := servePage
	servePage = 2
	t.Cleanup(func() { servePage = old })
	const prefix = "c/wals/"
	rng := rand.New(rand.NewPCG(1, 2))
	var servedPartials, refusedPartials int
	for round := range 40 {
		b := newBackend(t)
		put := func(name string) {
			t.Helper()
			require.NoError(t, b.Put(t.Context(), prefix+name, strings.NewReader(name), storage.PutOptions{}))
		}
		for tli := wal.Timeline(1); tli <= 3; tli++ {
			if tli > 1 && rng.IntN(3) > 0 {
				put(wal.HistoryFileName(tli))
			}
			for s := wal.SegmentNo(1); s <= 6; s++ {
				switch rng.IntN(8) {
				case 1, 2:
					put(seg(tli, s))
				case 3:
					put(seg(tli, s) + ".zst")
				case 4:
					put(seg(tli, s) + ".partial")
				case 5:
					put(seg(tli, s) + ".partial")
					put(seg(tli, s) + ".lz4")
				case 6:
					put(seg(tli, s) + ".conflict-20261206T160000Z")
				}
			}
		}
		put("notes.txt")
		put("ZZZZ")
		all, err := b.List(t.Context(), prefix)
		require.NoError(t, err)
		whole := IndexWAL(all, prefix, segSize)
		for tli := wal.Timeline(1); tli <= 3; tli++ {
			for s := wal.SegmentNo(1); s <= 7; s++ {
				file := seg(tli, s)
				named, err := b.List(t.Context(), prefix+file)
				require.NoError(t, err)
				got, ok, why, err := ServeSegment(t.Context(), b, prefix, named, file, segSize)
				require.NoError(t, err)
				want, wantOK, wantWhy := whole.Serve(tli, s)
				require.Equal(t, wantOK, ok, "round %d, %s: whole index says %q, ServeSegment %q", round, file, wantWhy, why)
				require.Equal(t, want.Key, got.Key, "round %d, %s", round, file)
				if _, complete := whole.Complete(tli, s); !complete {
					if _, partial := whole.Partial(tli, s); partial && ok {
						servedPartials++
					} else if partial {
						refusedPartials++
					}
				}
			}
		}
	}
	t.Logf("%d .partial files served, %d refused", servedPartials, refusedPartials)
	require.Positive(t, servedPartials)
	require.Positive(t, refusedPartials)
}
