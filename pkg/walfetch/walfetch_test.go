package walfetch_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/barnacle-pg/barnacle/internal/retry"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/compress"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walfetch"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	cluster = "c1"
	prefix  = "c1/wals/"
	segSize = 1 << 20 // the smallest valid size keeps the tests quick
)

// archive is a file:// archive with an identity, wrapped in a counter.
type archive struct {
	fs   *fs.Backend
	b    *countingBackend
	root string
}

func newArchive(t testing.TB) *archive {
	t.Helper()
	root := t.TempDir()
	b, err := fs.New(root, fs.Options{})
	require.NoError(t, err)
	_, err = catalog.EnsureIdentity(t.Context(), b, catalog.Identity{Cluster: cluster, SystemID: "7000000000000000001", WALSegmentSize: segSize})
	require.NoError(t, err)
	return &archive{fs: b, b: &countingBackend{Backend: b}, root: root}
}

// segmentData is a deterministic segment's worth of compressible bytes
// that differ from segment to segment.
func segmentData(seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	data := make([]byte, segSize)
	for i := 0; i < len(data); i += 64 {
		data[i] = byte(r.Uint32())
	}
	return data
}

// put stores data under name (relative to the WAL prefix), compressed per
// the name's suffix, as the receiver does.
func (a *archive) put(t testing.TB, name string, data []byte) {
	t.Helper()
	_, partial, comp := wal.SplitFileName(name)
	alg := catalog.CompressionAlgorithm(comp)
	if partial {
		// The receiver grows a .partial by appending; do the same.
		h := sha256.New()
		half := len(data) / 2
		h.Write(data[:half])
		require.NoError(t, a.fs.Append(t.Context(), prefix+name, 0, data[:half], hex.EncodeToString(h.Sum(nil))))
		h.Write(data[half:])
		require.NoError(t, a.fs.Append(t.Context(), prefix+name, int64(half), data[half:], hex.EncodeToString(h.Sum(nil))))
		return
	}
	enc, err := compress.NewEncoder(alg)
	require.NoError(t, err)
	out, err := enc.Compress(data)
	require.NoError(t, err)
	_, err = storage.PutOnce(t.Context(), a.fs, prefix+name, out)
	require.NoError(t, err)
}

// damage flips a byte in the stored file of object name, behind the
// backend's back.
func (a *archive) damage(t *testing.T, name string, at int64) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(a.root, prefix+name), os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, at)
	require.NoError(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, at)
	require.NoError(t, err)
}

func seg(tli wal.Timeline, n wal.SegmentNo) string { return wal.SegmentFileName(tli, n, segSize) }

func fetch(t *testing.T, b storage.Backend, name string, opts walfetch.Options) (string, error) {
	t.Helper()
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	return dest, walfetch.Fetch(t.Context(), b, cluster, name, dest, opts)
}

func requireFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, len(want), len(got), "length of %s", path)
	require.True(t, bytes.Equal(want, got), "content of %s", path)
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1, "only the destination is left in its directory")
}

func requireNoFile(t *testing.T, path string) {
	t.Helper()
	_, err := os.Stat(path)
	require.ErrorIs(t, err, os.ErrNotExist)
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Empty(t, entries, "no temporary file is left behind")
}

func TestFetchCompleteSegment(t *testing.T) {
	for _, suffix := range []string{"", ".zst", ".lz4"} {
		t.Run("suffix="+suffix, func(t *testing.T) {
			a := newArchive(t)
			data := segmentData(5)
			a.put(t, seg(1, 5)+suffix, data)
			dest, err := fetch(t, a.b, seg(1, 5), walfetch.Options{})
			require.NoError(t, err)
			requireFile(t, dest, data)
		})
	}
}

func TestFetchCompleteSegmentBeatsSupersededPartial(t *testing.T) {
	a := newArchive(t)
	data := segmentData(5)
	a.put(t, seg(1, 5)+".partial", data[:1000])
	a.put(t, seg(1, 5)+".zst", data)
	dest, err := fetch(t, a.b, seg(1, 5), walfetch.Options{})
	require.NoError(t, err)
	requireFile(t, dest, data)
}

func TestFetchHistory(t *testing.T) {
	a := newArchive(t)
	hist := []byte("1\t0/5000000\tno recovery target specified\n")
	a.put(t, "00000002.history", hist)
	dest, err := fetch(t, a.b, "00000002.history", walfetch.Options{})
	require.NoError(t, err)
	requireFile(t, dest, hist)
}

func TestFetchNotFound(t *testing.T) {
	a := newArchive(t)
	a.put(t, seg(1, 5), segmentData(5))
	for _, name := range []string{seg(1, 6), seg(2, 5), "00000002.history", seg(1, 6) + ".partial"} {
		t.Run(name, func(t *testing.T) {
			dest, err := fetch(t, a.b, name, walfetch.Options{})
			require.ErrorIs(t, err, walfetch.ErrNotFound)
			requireNoFile(t, dest)
		})
	}
}

func TestFetchFailures(t *testing.T) {
	tests := []struct {
		name   string
		object string // stored, then damaged at offset at
		at     int64
		fetch  string
		wantIs error // nil: any error but ErrNotFound
	}{
		{name: "damaged plain segment", object: seg(1, 5), at: 1000, fetch: seg(1, 5), wantIs: storage.ErrChecksum},
		{name: "damaged zstd segment", object: seg(1, 5) + ".zst", at: 40, fetch: seg(1, 5), wantIs: walfetch.ErrDamaged},
		{name: "damaged lz4 segment", object: seg(1, 5) + ".lz4", at: 40, fetch: seg(1, 5), wantIs: walfetch.ErrDamaged},
		{name: "damaged history", object: "00000002.history", at: 0, fetch: "00000002.history", wantIs: storage.ErrChecksum},
		{name: "damaged highest partial", object: seg(1, 5) + ".partial", at: 10, fetch: seg(1, 5), wantIs: storage.ErrChecksum},
		{name: "backup label name", fetch: "000000010000000000000005.00000028.backup"},
		{name: "garbage name", fetch: "../etc/passwd"},
		{name: "segment number out of range for the size", fetch: "0000000100000000FFFFFFFF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newArchive(t)
			if tt.object != "" {
				data := segmentData(5)
				if strings.HasSuffix(tt.object, ".history") {
					data = []byte("1\t0/5000000\tno recovery target specified\n")
				}
				a.put(t, tt.object, data)
				a.damage(t, tt.object, tt.at)
			}
			dest, err := fetch(t, a.b, tt.fetch, walfetch.Options{})
			require.Error(t, err)
			require.NotErrorIs(t, err, walfetch.ErrNotFound)
			if tt.wantIs != nil {
				require.ErrorIs(t, err, tt.wantIs)
			}
			requireNoFile(t, dest)
		})
	}
}

func TestFetchWithoutIdentityFails(t *testing.T) {
	a := newArchive(t)
	a.put(t, seg(1, 5), segmentData(5))
	// A wrong cluster name must not look like an empty archive: PostgreSQL
	// would end recovery early.
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	err := walfetch.Fetch(t.Context(), a.b, "other", seg(1, 5), dest, walfetch.Options{})
	require.ErrorIs(t, err, storage.ErrNotExist)
	require.NotErrorIs(t, err, walfetch.ErrNotFound)
	requireNoFile(t, dest)
}

// TestFetchVanishedArchiveIsNoEndOfWAL: an archive directory that is
// renamed or unmounted after the backend was opened answers "no such file"
// for every name. That must be a failure, never ErrNotFound, which
// PostgreSQL takes for the end of the archive and promotes on.
func TestFetchVanishedArchiveIsNoEndOfWAL(t *testing.T) {
	a := newArchive(t)
	a.put(t, seg(1, 5), segmentData(5))
	a.put(t, "00000002.history", []byte("1\t0/5000000\tno recovery target specified\n"))
	require.NoError(t, os.Rename(a.root, a.root+".moved"))
	t.Cleanup(func() { _ = os.Rename(a.root+".moved", a.root) })
	for _, name := range []string{seg(1, 5), seg(1, 6), "00000002.history", "00000003.history", seg(1, 5) + ".partial"} {
		t.Run(name, func(t *testing.T) {
			dest, err := fetch(t, a.b, name, walfetch.Options{})
			require.ErrorIs(t, err, storage.ErrNotExist)
			require.ErrorContains(t, err, "archive's identity")
			require.NotErrorIs(t, err, walfetch.ErrNotFound)
			requireNoFile(t, dest)
		})
	}
}

func TestFetchKeepsOldDestOnFailure(t *testing.T) {
	a := newArchive(t)
	a.put(t, seg(1, 5), segmentData(5))
	a.damage(t, seg(1, 5), segSize-1) // found only at the very end
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	require.NoError(t, os.WriteFile(dest, []byte("old"), 0o600))
	err := walfetch.Fetch(t.Context(), a.b, cluster, seg(1, 5), dest, walfetch.Options{})
	require.ErrorIs(t, err, storage.ErrChecksum)
	requireFile(t, dest, []byte("old"))
}

func TestFetchPartial(t *testing.T) {
	partial := segmentData(9)[:300_000]
	padded := append(bytes.Clone(partial), make([]byte, segSize-len(partial))...)
	tests := []struct {
		name   string
		setup  func(t *testing.T, a *archive)
		fetch  string
		want   []byte // nil: ErrNotFound
		reason string // in the error when not served
	}{
		{
			name:  "end of the only timeline is served padded",
			setup: func(t *testing.T, a *archive) { a.put(t, seg(1, 4), segmentData(4)) },
			fetch: seg(1, 5), want: padded,
		},
		{
			name: "end of the newest timeline is served padded",
			setup: func(t *testing.T, a *archive) {
				a.put(t, seg(1, 4), segmentData(4))
				a.put(t, seg(1, 5)+".partial", segmentData(1)[:1000])
				a.put(t, "00000002.history", []byte("1\t0/500100\tno recovery target specified\n"))
				a.put(t, seg(2, 4), segmentData(4))
			},
			fetch: seg(2, 5), want: padded,
		},
		{
			name: "old timeline's partial with the next history archived",
			setup: func(t *testing.T, a *archive) {
				a.put(t, "00000002.history", []byte("1\t0/5049E0\tno recovery target specified\n"))
			},
			fetch: seg(1, 5), reason: "timeline 1 is not the newest (the archive has 00000002.history)",
		},
		{
			name: "old timeline's partial with segments of a later timeline",
			setup: func(t *testing.T, a *archive) {
				a.put(t, seg(3, 5), segmentData(5))
			},
			fetch: seg(1, 5), reason: "timeline 1 is not the newest",
		},
		{
			name: "partial with a later segment on its timeline",
			setup: func(t *testing.T, a *archive) {
				a.put(t, seg(1, 6)+".zst", segmentData(6))
			},
			fetch: seg(1, 5), reason: "it is not the end of timeline 1",
		},
		{
			name: "literal partial name of an old timeline is copied verbatim",
			setup: func(t *testing.T, a *archive) {
				a.put(t, "00000002.history", []byte("1\t0/5049E0\tno recovery target specified\n"))
			},
			fetch: seg(1, 5) + ".partial", want: partial,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newArchive(t)
			tli := tt.fetch[:8]
			a.put(t, tli+tt.fetch[8:24]+".partial", partial)
			tt.setup(t, a)
			dest, err := fetch(t, a.b, tt.fetch, walfetch.Options{})
			if tt.want == nil {
				require.ErrorIs(t, err, walfetch.ErrNotFound)
				require.ErrorContains(t, err, tt.reason)
				requireNoFile(t, dest)
				return
			}
			require.NoError(t, err)
			requireFile(t, dest, tt.want)
		})
	}
}

// TestFetchCompleteOnly: a standby that asks for whole segments only is
// told "not found" for the end of the archive held as a .partial, and
// still gets complete segments.
func TestFetchCompleteOnly(t *testing.T) {
	a := newArchive(t)
	a.put(t, seg(1, 4), segmentData(4))
	a.put(t, seg(1, 5)+".partial", segmentData(5)[:1000])
	opts := walfetch.Options{CompleteOnly: true}
	dest, err := fetch(t, a.b, seg(1, 5), opts)
	require.ErrorIs(t, err, walfetch.ErrNotFound)
	require.ErrorContains(t, err, "complete segments only")
	requireNoFile(t, dest)
	dest, err = fetch(t, a.b, seg(1, 4), opts)
	require.NoError(t, err)
	requireFile(t, dest, segmentData(4))
}

// TestFetchReusesServedPartial: a standby asking again for the .partial it
// was served, while PostgreSQL holds that copy under the segment's name and
// the archive's .partial has not grown, is told "not found" (PostgreSQL
// then reads its copy) instead of downloading it again; once the .partial
// grows, or the copy is gone, it is served again.
func TestFetchReusesServedPartial(t *testing.T) {
	a := newArchive(t)
	data := segmentData(5)[:3000]
	name := seg(1, 5)
	a.put(t, name+".partial", data[:1000])
	dir := t.TempDir()
	dest := filepath.Join(dir, "RECOVERYXLOG")
	opts := walfetch.Options{ReuseServedPartial: true}
	padded := func(n int) []byte { return append(bytes.Clone(data[:n]), make([]byte, segSize-n)...) }
	// The directory is PostgreSQL's pg_wal: it holds more than dest.
	requireFile := func(t *testing.T, path string, want []byte) {
		t.Helper()
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "content of %s", path)
	}
	requireNoFile := func(t *testing.T, path string) {
		t.Helper()
		_, err := os.Stat(path)
		require.ErrorIs(t, err, os.ErrNotExist)
		tmps, err := filepath.Glob(filepath.Join(dir, ".barnacle-tmp-*"))
		require.NoError(t, err)
		require.Empty(t, tmps)
	}
	// What PostgreSQL does with a restored segment: rename it to its name.
	keep := func() {
		t.Helper()
		requireFile(t, dest, padded(1000))
		require.NoError(t, os.Rename(dest, filepath.Join(dir, name)))
	}

	require.NoError(t, walfetch.Fetch(t.Context(), a.b, cluster, name, dest, opts))
	keep()
	gets, lists := a.b.getsOf(prefix+name+".partial"), a.b.lists.Load()
	err := walfetch.Fetch(t.Context(), a.b, cluster, name, dest, opts)
	require.ErrorIs(t, err, walfetch.ErrNotFound)
	require.ErrorContains(t, err, "unchanged since it was served")
	requireNoFile(t, dest)
	require.Equal(t, gets, a.b.getsOf(prefix+name+".partial"), "no download")
	require.Equal(t, lists+1, a.b.lists.Load(), "one listing, of the segment's names: not the whole archive")

	// Without the option (archive recovery), it is served.
	require.NoError(t, walfetch.Fetch(t.Context(), a.b, cluster, name, dest, walfetch.Options{}))
	requireFile(t, dest, padded(1000))
	require.NoError(t, os.Remove(dest))

	// The copy is not the one served (another file under that name).
	require.NoError(t, os.Rename(filepath.Join(dir, name), filepath.Join(dir, "moved")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), padded(1000), 0o600))
	require.NoError(t, walfetch.Fetch(t.Context(), a.b, cluster, name, dest, opts))
	require.NoError(t, os.Remove(filepath.Join(dir, name)))
	keep()

	// The .partial grew: served again, longer.
	h := sha256.New()
	h.Write(data)
	require.NoError(t, a.fs.Append(t.Context(), prefix+name+".partial", 1000, data[1000:], hex.EncodeToString(h.Sum(nil))))
	require.NoError(t, walfetch.Fetch(t.Context(), a.b, cluster, name, dest, opts))
	requireFile(t, dest, padded(3000))
}

// spoolFiles lists the regular files under dir, by base name, but for
// locks and the spool's bookkeeping.
func spoolFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		bookkeeping := d.Name() == "position" || d.Name() == "segment-size" || strings.HasSuffix(p, ".lock")
		if d.Type().IsRegular() && !bookkeeping {
			out[d.Name()] = p
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return out
	}
	require.NoError(t, err)
	return out
}

// spooledSegments returns the segment names spooled under dir, sorted.
func spooledSegments(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for name := range spoolFiles(t, dir) {
		out = append(out, name[:24])
	}
	slices.Sort(out)
	return out
}

func TestPrefetchFillsSpoolAndFetchUsesIt(t *testing.T) {
	a := newArchive(t)
	for i := wal.SegmentNo(1); i <= 6; i++ {
		suffix := []string{"", ".zst", ".lz4"}[i%3]
		a.put(t, seg(1, i)+suffix, segmentData(uint64(i)))
	}
	a.put(t, seg(1, 7)+".partial", segmentData(7)[:5000])
	opts := walfetch.Options{SpoolDir: filepath.Join(t.TempDir(), "spool"), Prefetch: 4}

	dest, err := fetch(t, a.b, seg(1, 1), opts)
	require.NoError(t, err)
	requireFile(t, dest, segmentData(1))
	require.Empty(t, spooledSegments(t, opts.SpoolDir), "Fetch itself prefetches nothing")

	require.NoError(t, walfetch.Prefetch(t.Context(), a.b, cluster, seg(1, 1), opts))
	require.Equal(t, []string{seg(1, 2), seg(1, 3), seg(1, 4), seg(1, 5)}, spooledSegments(t, opts.SpoolDir))

	before := a.b.calls()
	dest, err = fetch(t, a.b, seg(1, 2), opts)
	require.NoError(t, err)
	requireFile(t, dest, segmentData(2))
	require.Equal(t, before, a.b.calls(), "a spooled segment is served without touching the archive")
	require.Equal(t, []string{seg(1, 3), seg(1, 4), seg(1, 5)}, spooledSegments(t, opts.SpoolDir))

	// The archive ends after 6 (7 is only a .partial, which grows): no
	// error, nothing spooled past the end.
	opts.Prefetch = 8
	require.NoError(t, walfetch.Prefetch(t.Context(), a.b, cluster, seg(1, 2), opts))
	require.Equal(t, []string{seg(1, 3), seg(1, 4), seg(1, 5), seg(1, 6)}, spooledSegments(t, opts.SpoolDir))
	gets := a.b.gets.Load()
	require.NoError(t, walfetch.Prefetch(t.Context(), a.b, cluster, seg(1, 2), opts))
	require.Equal(t, gets, a.b.gets.Load(), "spooled segments are not fetched again, nor archive.json (its segment size is cached)")

	for i := wal.SegmentNo(3); i <= 6; i++ {
		dest, err = fetch(t, a.b, seg(1, i), opts)
		require.NoError(t, err)
		requireFile(t, dest, segmentData(uint64(i)))
	}
	require.Empty(t, spooledSegments(t, opts.SpoolDir))

	// The partial end is served from the archive, padded.
	dest, err = fetch(t, a.b, seg(1, 7), opts)
	require.NoError(t, err)
	got, err := os.ReadFile(dest)
	require.NoError(t, err)
	require.Equal(t, segmentData(7)[:5000], got[:5000])
	require.Len(t, got, segSize)

	require.NoError(t, walfetch.RemoveSpool(opts.SpoolDir))
	_, err = os.Stat(opts.SpoolDir)
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestDamagedSpoolFileIsNotServed(t *testing.T) {
	for _, damage := range []string{"flip", "truncate"} {
		t.Run(damage, func(t *testing.T) {
			a := newArchive(t)
			a.put(t, seg(1, 1), segmentData(1))
			a.put(t, seg(1, 2), segmentData(2))
			opts := walfetch.Options{SpoolDir: t.TempDir(), Prefetch: 2}
			require.NoError(t, walfetch.Prefetch(t.Context(), a.b, cluster, seg(1, 1), opts))
			files := spoolFiles(t, opts.SpoolDir)
			require.Len(t, files, 1)
			for _, p := range files {
				if damage == "flip" {
					f, err := os.OpenFile(p, os.O_RDWR, 0)
					require.NoError(t, err)
					_, err = f.WriteAt([]byte{0xAA}, 4096)
					require.NoError(t, err)
					require.NoError(t, f.Close())
				} else {
					require.NoError(t, os.Truncate(p, 8192))
				}
			}
			gets := a.b.gets.Load()
			dest, err := fetch(t, a.b, seg(1, 2), opts)
			require.NoError(t, err)
			requireFile(t, dest, segmentData(2))
			require.Greater(t, a.b.gets.Load(), gets, "served from the archive")
			require.Empty(t, spoolFiles(t, opts.SpoolDir), "the damaged file is deleted")
		})
	}
}

func TestFetchRemovesStaleSpoolFiles(t *testing.T) {
	a := newArchive(t)
	for i := wal.SegmentNo(1); i <= 4; i++ {
		a.put(t, seg(1, i), segmentData(uint64(i)))
		a.put(t, seg(2, i), segmentData(uint64(i)+100))
	}
	opts := walfetch.Options{SpoolDir: t.TempDir(), Prefetch: 3}
	require.NoError(t, walfetch.Prefetch(t.Context(), a.b, cluster, seg(1, 1), opts))
	require.Equal(t, []string{seg(1, 2), seg(1, 3), seg(1, 4)}, spooledSegments(t, opts.SpoolDir))
	// Another archive's leftovers, and a file that is not ours.
	other := filepath.Join(opts.SpoolDir, "0123456789abcdef")
	require.NoError(t, os.MkdirAll(other, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(other, seg(2, 3)+"."+strings.Repeat("0", 64)), nil, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(opts.SpoolDir, "keep-me"), nil, 0o600))

	// Recovery moved to timeline 2 at segment 3: the timeline 1 segments
	// are of no use any more, whatever their number.
	dest, err := fetch(t, a.b, seg(2, 3), opts)
	require.NoError(t, err)
	requireFile(t, dest, segmentData(103))
	got := spoolFiles(t, opts.SpoolDir)
	require.Equal(t, map[string]string{"keep-me": filepath.Join(opts.SpoolDir, "keep-me")}, got)
}

func TestFetchWaitsForPrefetcher(t *testing.T) {
	a := newArchive(t)
	a.put(t, seg(1, 1), segmentData(1))
	a.put(t, seg(1, 2), segmentData(2))
	opts := walfetch.Options{SpoolDir: t.TempDir(), Prefetch: 1}
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	a.b.hold = func(name string) {
		if name == prefix+seg(1, 2) {
			once.Do(func() { close(started) })
			<-release
		}
	}
	var wg sync.WaitGroup
	var perr, ferr error
	wg.Go(func() { perr = walfetch.Prefetch(t.Context(), a.b, cluster, seg(1, 1), opts) })
	<-started // the prefetcher holds segment 2's lock and is reading it
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	waiting := make(chan struct{})
	var waitOnce sync.Once
	walfetch.SetLockBusyHook(t, func(string) { waitOnce.Do(func() { close(waiting) }) })
	wg.Go(func() { ferr = walfetch.Fetch(t.Context(), a.b, cluster, seg(1, 2), dest, opts) })
	<-waiting
	// Fetch waits for the prefetcher rather than reading segment 2 itself:
	// a Get of its own would be counted below.
	close(release)
	wg.Wait()
	require.NoError(t, perr)
	require.NoError(t, ferr)
	requireFile(t, dest, segmentData(2))
	assert.Equal(t, int64(1), a.b.getsOf(prefix+seg(1, 2)), "segment 2 was read from the archive once")
}

// countingBackend counts the calls that reach the archive, and can add a
// latency to each (to play an object store) or hold a Get.
type countingBackend struct {
	storage.Backend
	latency time.Duration
	hold    func(name string)

	gets, lists, stats atomic.Int64
	// listed counts the objects List and ListAfter returned.
	listed  atomic.Int64
	mu      sync.Mutex
	perName map[string]int64
}

func (c *countingBackend) wait(ctx context.Context) error {
	if c.latency == 0 {
		return nil
	}
	retry.Sleep(ctx, c.latency)
	return ctx.Err()
}

func (c *countingBackend) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	c.gets.Add(1)
	c.mu.Lock()
	if c.perName == nil {
		c.perName = map[string]int64{}
	}
	c.perName[name]++
	c.mu.Unlock()
	if c.hold != nil {
		c.hold(name)
	}
	if err := c.wait(ctx); err != nil {
		return nil, err
	}
	return c.Backend.Get(ctx, name)
}

func (c *countingBackend) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	c.lists.Add(1)
	if err := c.wait(ctx); err != nil {
		return nil, err
	}
	objs, err := c.Backend.List(ctx, prefix)
	c.listed.Add(int64(len(objs)))
	return objs, err
}

// ListAfter forwards storage.DirLister (the fs backend has it).
func (c *countingBackend) ListAfter(ctx context.Context, dir, after string, limit int) ([]storage.ObjectInfo, error) {
	c.lists.Add(1)
	if err := c.wait(ctx); err != nil {
		return nil, err
	}
	objs, err := c.Backend.(storage.DirLister).ListAfter(ctx, dir, after, limit)
	c.listed.Add(int64(len(objs)))
	return objs, err
}

func (c *countingBackend) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	c.stats.Add(1)
	if err := c.wait(ctx); err != nil {
		return storage.ObjectInfo{}, err
	}
	return c.Backend.Stat(ctx, name)
}

func (c *countingBackend) calls() int64 { return c.gets.Load() + c.lists.Load() + c.stats.Load() }

func (c *countingBackend) getsOf(name string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.perName[name]
}

// TestRemoveSpoolKeepsPrefetchersOut: once recovery has ended and the
// spool is removed, a prefetcher that was started before does not bring it
// back (it used to leave up to Prefetch segments, 64 MiB by default, in
// pg_wal for good).
func TestRemoveSpoolKeepsPrefetchersOut(t *testing.T) {
	a := newArchive(t)
	for i := wal.SegmentNo(1); i <= 3; i++ {
		a.put(t, seg(1, i), segmentData(uint64(i)))
	}
	opts := walfetch.Options{SpoolDir: filepath.Join(t.TempDir(), ".barnacle-prefetch"), Prefetch: 2}
	_, err := fetch(t, a.b, seg(1, 1), opts)
	require.NoError(t, err)
	require.NoError(t, walfetch.Prefetch(t.Context(), a.b, cluster, seg(1, 1), opts))
	require.Equal(t, []string{seg(1, 2), seg(1, 3)}, spooledSegments(t, opts.SpoolDir))

	require.NoError(t, walfetch.RemoveSpool(opts.SpoolDir))
	require.NoDirExists(t, opts.SpoolDir)
	entries, err := os.ReadDir(filepath.Dir(opts.SpoolDir))
	require.NoError(t, err)
	require.Empty(t, entries, "nothing is left beside the spool either")

	err = walfetch.Prefetch(t.Context(), a.b, cluster, seg(1, 1), opts)
	require.Error(t, err, "a late prefetcher finds no spool")
	require.NoDirExists(t, opts.SpoolDir)
	require.NoError(t, walfetch.RemoveSpool(opts.SpoolDir), "removing a removed spool is no error")
}

// TestFetchPartialListsWhatFollowsOnly: deciding whether to serve a
// .partial reads the segment's names and a page of what follows it, not
// the whole WAL prefix, so its cost does not grow with the archive (it
// used to list every segment: on S3 a LIST per 1,000 names and, without
// metadata in listings, a HEAD per name, at every retry of a standby once
// the .partial had grown).
func TestFetchPartialListsWhatFollowsOnly(t *testing.T) {
	// filler stores n tiny objects under segment names, never read.
	filler := func(t *testing.T, a *archive, tli wal.Timeline, from, n int) {
		t.Helper()
		for i := from; i < from+n; i++ {
			name := prefix + seg(tli, wal.SegmentNo(i))
			require.NoError(t, a.fs.Put(t.Context(), name, strings.NewReader(name), storage.PutOptions{}))
		}
	}
	listed := func(t *testing.T, segments int) (served, refused int64) {
		t.Helper()
		a := newArchive(t)
		filler(t, a, 1, 1, segments)
		end := wal.SegmentNo(segments + 1)
		a.put(t, seg(1, end)+".partial", segmentData(uint64(end))[:1000])

		// The newest timeline's end: served.
		before := a.b.listed.Load()
		dest, err := fetch(t, a.b, seg(1, end), walfetch.Options{})
		require.NoError(t, err)
		got, err := os.ReadFile(dest)
		require.NoError(t, err)
		require.Equal(t, segmentData(uint64(end))[:1000], got[:1000])
		served = a.b.listed.Load() - before

		// A failover: timeline 2 follows with as many segments. Timeline
		// 1's .partial is no longer served.
		a.put(t, "00000002.history", []byte("1\t0/5000000\tno recovery target specified\n"))
		filler(t, a, 2, int(end), segments)
		before = a.b.listed.Load()
		_, err = fetch(t, a.b, seg(1, end), walfetch.Options{})
		require.ErrorIs(t, err, walfetch.ErrNotFound)
		require.ErrorContains(t, err, "timeline 1 is not the newest")
		return served, a.b.listed.Load() - before
	}
	smallServed, smallRefused := listed(t, 10)
	largeServed, largeRefused := listed(t, 1500)
	t.Logf("objects listed to serve the .partial: %d with 10 segments, %d with 1500; to refuse it: %d and %d",
		smallServed, largeServed, smallRefused, largeRefused)
	require.Equal(t, smallServed, largeServed, "the cost of serving a .partial does not depend on the archive's size")
	require.Equal(t, smallRefused, largeRefused, "nor that of refusing one")
	require.Less(t, largeServed, int64(10))
}
