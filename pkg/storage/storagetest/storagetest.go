// Package storagetest is the conformance suite that every storage.Backend
// must pass, modelled on WAL-G's storage.RunFolderTest. A backend's own
// tests call Run with a constructor for empty backends, and add tests only
// for what is specific to that backend (corruption on disk, URL parsing).
//
// Other modules may import this package, but its API is not stable.
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// Run runs the conformance suite as subtests of t. newBackend must return a
// new, empty backend for each subtest (it is called once per subtest) and
// arrange its cleanup with t.Cleanup. The Append cases run when the backend
// implements storage.Appender and are skipped otherwise.
func Run(t *testing.T, newBackend func(t *testing.T) storage.Backend) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, b storage.Backend)
	}{
		{"RoundTrip", testRoundTrip},
		{"ExpectedChecksum", testExpectedChecksum},
		{"Overwrite", testOverwrite},
		{"OverwriteIsAtomicForReaders", testOverwriteAtomic},
		{"IfAbsent", testIfAbsent},
		{"PutOnce", testPutOnce},
		{"PutOnceConcurrent", testPutOnceConcurrent},
		{"List", testList},
		{"ListAfter", testListAfter},
		{"NestedNames", testNestedNames},
		{"Delete", testDelete},
		{"ConcurrentPutAndDelete", testConcurrentPutAndDelete},
		{"Missing", testMissing},
		{"InvalidNames", testInvalidNames},
		{"ContextCancelled", testContextCancelled},
		{"URL", testURL},
		{"Append", testAppend},
		{"AppendWrongOffset", testAppendWrongOffset},
		{"AppendReplaceAndPut", testAppendReplaceAndPut},
		{"AppendWhileReading", testAppendWhileReading},
		{"AppendArguments", testAppendArguments},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newBackend(t))
		})
	}
}

// sum is the checksum Put stores when it is given none.
func sum(data []byte) string { return storage.ChecksumOf(storage.DefaultAlgorithm, data) }

// sha256Sum is a checksum of the older form, which archives written before
// BLAKE3 hold and which callers may still give.
func sha256Sum(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// randomBytes returns n deterministic pseudo-random bytes; seed picks them.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func put(t *testing.T, b storage.Backend, name string, data []byte) {
	t.Helper()
	require.NoError(t, b.Put(t.Context(), name, bytes.NewReader(data), storage.PutOptions{}), "put %s", name)
}

func readAll(t *testing.T, b storage.Backend, name string) []byte {
	t.Helper()
	data, err := storage.ReadAll(t.Context(), b, name)
	require.NoError(t, err, "read %s", name)
	return data
}

func names(infos []storage.ObjectInfo) []string {
	out := make([]string, len(infos))
	for i, info := range infos {
		out[i] = info.Name
	}
	return out
}

func requireEqualBytes(t *testing.T, want, got []byte, msg string) {
	t.Helper()
	if !bytes.Equal(want, got) {
		t.Fatalf("%s: got %d bytes (sha256 %s), want %d bytes (sha256 %s)", msg, len(got), sum(got), len(want), sum(want))
	}
}

func testRoundTrip(t *testing.T, b storage.Backend) {
	cases := []struct {
		name string
		data []byte
	}{
		{"empty", []byte{}},
		{"one-byte", []byte{0x42}},
		{"five-MiB", randomBytes(5<<20, 1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := "roundtrip/" + tc.name
			before := time.Now()
			put(t, b, name, tc.data)
			after := time.Now()

			rc, err := b.Get(t.Context(), name)
			require.NoError(t, err)
			got, err := io.ReadAll(rc)
			require.NoError(t, err)
			require.NoError(t, rc.Close())
			requireEqualBytes(t, tc.data, got, "get")

			info, err := b.Stat(t.Context(), name)
			require.NoError(t, err)
			assert.Equal(t, name, info.Name)
			assert.Equal(t, int64(len(tc.data)), info.Size)
			assert.Equal(t, sum(tc.data), info.Checksum)
			// Object stores keep whole seconds; allow for that and for clock skew.
			assert.WithinRange(t, info.ModTime, before.Add(-time.Minute), after.Add(time.Minute))
		})
	}
}

// testExpectedChecksum gives Put checksums of both algorithms: BLAKE3, and
// SHA-256, which older archives hold and callers may still give.
func testExpectedChecksum(t *testing.T, b storage.Backend) {
	for alg, sum := range map[string]func([]byte) string{"blake3": sum, "sha256": sha256Sum} {
		t.Run(alg, func(t *testing.T) { testExpectedChecksumOf(t, b, alg+"-", sum) })
	}
	infos, err := b.List(t.Context(), "")
	require.NoError(t, err)
	assert.Equal(t, []string{"blake3-existing", "blake3-match", "sha256-existing", "sha256-match"}, names(infos))
}

func testExpectedChecksumOf(t *testing.T, b storage.Backend, prefix string, sum func([]byte) string) {
	ctx := t.Context()
	data := []byte("expected checksum")
	other := []byte("something else")

	t.Run("match", func(t *testing.T) {
		// Either case is accepted, and the checksum is stored normalized.
		err := b.Put(ctx, prefix+"match", bytes.NewReader(data), storage.PutOptions{Checksum: strings.ToUpper(sum(data))})
		require.NoError(t, err)
		requireEqualBytes(t, data, readAll(t, b, prefix+"match"), "read back")
		info, err := b.Stat(ctx, prefix+"match")
		require.NoError(t, err)
		assert.Equal(t, sum(data), info.Checksum)
	})
	t.Run("mismatch stores nothing", func(t *testing.T) {
		for _, ifAbsent := range []bool{false, true} {
			err := b.Put(ctx, prefix+"mismatch", bytes.NewReader(data), storage.PutOptions{Checksum: sum(other), IfAbsent: ifAbsent})
			require.ErrorIs(t, err, storage.ErrChecksum, "if-absent %v", ifAbsent)
			var cerr *storage.ChecksumError
			require.ErrorAs(t, err, &cerr)
			assert.Equal(t, sum(other), cerr.Want)
			assert.Equal(t, sum(data), cerr.Got)
			_, err = b.Stat(ctx, prefix+"mismatch")
			require.ErrorIs(t, err, storage.ErrNotExist, "if-absent %v", ifAbsent)
		}
	})
	t.Run("mismatch keeps existing object", func(t *testing.T) {
		put(t, b, prefix+"existing", data)
		err := b.Put(ctx, prefix+"existing", bytes.NewReader(other), storage.PutOptions{Checksum: sum(data)})
		require.ErrorIs(t, err, storage.ErrChecksum)
		requireEqualBytes(t, data, readAll(t, b, prefix+"existing"), "original")
	})
	t.Run("invalid digest", func(t *testing.T) {
		good := sum(data)
		for _, bad := range []string{"xyz", good[:len(good)-1], good + "0", strings.Repeat("g", 64),
			"blake3:" + strings.Repeat("g", 64), "md5:" + strings.Repeat("0", 64), "blake3" + strings.Repeat("0", 64)} {
			err := b.Put(ctx, prefix+"invalid", bytes.NewReader(data), storage.PutOptions{Checksum: bad})
			require.ErrorIs(t, err, storage.ErrInvalidChecksum, "digest %q", bad)
		}
		_, err := b.Stat(ctx, prefix+"invalid")
		require.ErrorIs(t, err, storage.ErrNotExist)
	})
}

func testOverwrite(t *testing.T, b storage.Backend) {
	a, c := []byte("first version"), []byte("second, longer version")
	put(t, b, "obj", a)
	put(t, b, "obj", c)
	requireEqualBytes(t, c, readAll(t, b, "obj"), "after overwrite")
	info, err := b.Stat(t.Context(), "obj")
	require.NoError(t, err)
	assert.Equal(t, int64(len(c)), info.Size)
	assert.Equal(t, sum(c), info.Checksum)
	put(t, b, "obj", nil)
	requireEqualBytes(t, nil, readAll(t, b, "obj"), "after overwrite with empty")
}

// testOverwriteAtomic overwrites an object while readers read it: every read
// must return one whole version, verified, never a mix or a prefix.
func testOverwriteAtomic(t *testing.T, b storage.Backend) {
	versions := [][]byte{randomBytes(1<<20, 2), randomBytes(1<<20+17, 3)}
	put(t, b, "obj", versions[0])

	ctx := t.Context()
	var writerDone atomic.Bool
	var reads atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer writerDone.Store(true)
		for i := range 20 {
			if err := b.Put(gctx, "obj", bytes.NewReader(versions[i%2]), storage.PutOptions{}); err != nil {
				return fmt.Errorf("overwrite %d: %w", i, err)
			}
		}
		return nil
	})
	for range 2 {
		g.Go(func() error {
			for !writerDone.Load() || reads.Load() == 0 {
				got, err := storage.ReadAll(gctx, b, "obj")
				if err != nil {
					return err
				}
				if !bytes.Equal(got, versions[0]) && !bytes.Equal(got, versions[1]) {
					return fmt.Errorf("read %d bytes (sha256 %s) that are neither version", len(got), sum(got))
				}
				reads.Add(1)
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	t.Logf("%d verified reads during 20 overwrites", reads.Load())
}

func testIfAbsent(t *testing.T, b storage.Backend) {
	ctx := t.Context()
	orig, other := []byte("original"), []byte("intruder")
	require.NoError(t, b.Put(ctx, "once", bytes.NewReader(orig), storage.PutOptions{IfAbsent: true}))
	err := b.Put(ctx, "once", bytes.NewReader(other), storage.PutOptions{IfAbsent: true})
	require.ErrorIs(t, err, storage.ErrExist)
	requireEqualBytes(t, orig, readAll(t, b, "once"), "original after refused put")
	info, err := b.Stat(ctx, "once")
	require.NoError(t, err)
	assert.Equal(t, sum(orig), info.Checksum)

	// Same bytes again are refused too: IfAbsent is about the name.
	err = b.Put(ctx, "once", bytes.NewReader(orig), storage.PutOptions{IfAbsent: true})
	require.ErrorIs(t, err, storage.ErrExist)

	infos, err := b.List(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, []string{"once"}, names(infos))
}

func testPutOnce(t *testing.T, b storage.Backend) {
	ctx := t.Context()
	name := "cluster/wals/000000010000000000000005"
	orig, other := randomBytes(4096, 4), randomBytes(4096, 5)

	existed, err := storage.PutOnce(ctx, b, name, orig)
	require.NoError(t, err)
	assert.False(t, existed, "first put")

	existed, err = storage.PutOnce(ctx, b, name, orig)
	require.NoError(t, err, "same bytes again")
	assert.True(t, existed, "same bytes again")

	existed, err = storage.PutOnce(ctx, b, name, other)
	assert.True(t, existed, "different bytes")
	require.ErrorIs(t, err, storage.ErrConflict)
	var cerr *storage.ConflictError
	require.ErrorAs(t, err, &cerr)
	assert.Equal(t, name, cerr.Name)
	assert.Equal(t, sum(orig), cerr.ExistingChecksum)
	assert.Equal(t, sum(other), cerr.NewChecksum)
	require.True(t, strings.HasPrefix(cerr.AsideName, name+".conflict-"), "aside name %q", cerr.AsideName)

	requireEqualBytes(t, orig, readAll(t, b, name), "original after conflict")
	requireEqualBytes(t, other, readAll(t, b, cerr.AsideName), "aside copy")
	infos, err := b.List(ctx, name)
	require.NoError(t, err)
	assert.Equal(t, []string{name, cerr.AsideName}, names(infos))

	// A second conflict keeps both earlier copies.
	_, err = storage.PutOnce(ctx, b, name, randomBytes(10, 6))
	require.ErrorIs(t, err, storage.ErrConflict)
	infos, err = b.List(ctx, name)
	require.NoError(t, err)
	assert.Len(t, infos, 3)
	requireEqualBytes(t, orig, readAll(t, b, name), "original after second conflict")

	// An object stored with a SHA-256 checksum, as older versions stored
	// every object: the same bytes are recognized as such, in its algorithm.
	older := "cluster/wals/000000010000000000000006"
	require.NoError(t, b.Put(ctx, older, bytes.NewReader(orig), storage.PutOptions{Checksum: sha256Sum(orig), IfAbsent: true}))
	existed, err = storage.PutOnce(ctx, b, older, orig)
	require.NoError(t, err, "same bytes as a SHA-256 object")
	assert.True(t, existed, "same bytes as a SHA-256 object")
	_, err = storage.PutOnce(ctx, b, older, other)
	require.ErrorAs(t, err, &cerr)
	assert.Equal(t, sha256Sum(orig), cerr.ExistingChecksum)
	assert.Equal(t, sha256Sum(other), cerr.NewChecksum, "compared in the existing object's algorithm")
	requireEqualBytes(t, orig, readAll(t, b, older), "SHA-256 original after conflict")
}

func testPutOnceConcurrent(t *testing.T, b storage.Backend) {
	const writers = 8
	data := randomBytes(256<<10, 7)
	var created atomic.Int32
	var g errgroup.Group
	for i := range writers {
		g.Go(func() error {
			existed, err := storage.PutOnce(t.Context(), b, "cluster/wals/000000010000000000000001", data)
			if err != nil {
				return fmt.Errorf("writer %d: %w", i, err)
			}
			if !existed {
				created.Add(1)
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	assert.Equal(t, int32(1), created.Load(), "writers that reported creating the object")
	requireEqualBytes(t, data, readAll(t, b, "cluster/wals/000000010000000000000001"), "object")
	infos, err := b.List(t.Context(), "")
	require.NoError(t, err)
	assert.Equal(t, []string{"cluster/wals/000000010000000000000001"}, names(infos))
}

func testList(t *testing.T, b storage.Backend) {
	ctx := t.Context()
	all := []string{"list/z", "list/x/2", "list/x-y", "list/x/10", "list/y/1", "list/x/sub/deep", "other", "list/xa"}
	for i, n := range all {
		put(t, b, n, []byte(strings.Repeat("x", i)))
	}
	cases := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"list/x-y", "list/x/10", "list/x/2", "list/x/sub/deep", "list/xa", "list/y/1", "list/z", "other"}},
		{"list/", []string{"list/x-y", "list/x/10", "list/x/2", "list/x/sub/deep", "list/xa", "list/y/1", "list/z"}},
		{"list/x", []string{"list/x-y", "list/x/10", "list/x/2", "list/x/sub/deep", "list/xa"}},
		{"list/x/", []string{"list/x/10", "list/x/2", "list/x/sub/deep"}},
		{"list/x/1", []string{"list/x/10"}},
		{"list/x/sub/deep", []string{"list/x/sub/deep"}},
		{"list/x/sub/deeper", nil},
		{"list/q", nil},
		{"missing/dir/", nil},
		{"list/z/", nil}, // "list/z" is an object, not a directory
	}
	for _, tc := range cases {
		t.Run("prefix="+tc.prefix, func(t *testing.T) {
			infos, err := b.List(ctx, tc.prefix)
			require.NoError(t, err)
			assert.Equal(t, tc.want, nilIfEmpty(names(infos)))
			for _, info := range infos {
				i := indexOf(all, info.Name)
				data := []byte(strings.Repeat("x", i))
				assert.Equal(t, int64(len(data)), info.Size, info.Name)
				assert.Equal(t, sum(data), info.Checksum, info.Name)
				assert.False(t, info.ModTime.IsZero(), info.Name)
			}
		})
	}
}

// testListAfter checks storage.DirLister, for backends that have it.
func testListAfter(t *testing.T, b storage.Backend) {
	dl, ok := b.(storage.DirLister)
	if !ok {
		t.Skip("the backend does not implement storage.DirLister")
	}
	ctx := t.Context()
	all := []string{"dir/a", "dir/b.1", "dir/b", "dir/c/sub", "dir/d", "dir/e", "dirx/f", "other"}
	for i, n := range all {
		put(t, b, n, []byte(strings.Repeat("x", i)))
	}
	cases := []struct {
		dir, after string
		limit      int
		want       []string
	}{
		{"dir", "", 10, []string{"dir/a", "dir/b", "dir/b.1", "dir/d", "dir/e"}},
		{"dir", "a", 10, []string{"dir/b", "dir/b.1", "dir/d", "dir/e"}},
		{"dir", "b", 2, []string{"dir/b.1", "dir/d"}}, // "dir/c" is a directory
		{"dir", "b.1", 1, []string{"dir/d"}},
		{"dir", "bz", 10, []string{"dir/d", "dir/e"}},
		{"dir", "e", 10, nil},
		{"dir/c", "", 10, []string{"dir/c/sub"}},
		{"missing", "", 10, nil},
		{"dir/a", "", 10, nil}, // an object, not a directory
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s after %q limit %d", tc.dir, tc.after, tc.limit), func(t *testing.T) {
			infos, err := dl.ListAfter(ctx, tc.dir, tc.after, tc.limit)
			require.NoError(t, err)
			assert.Equal(t, tc.want, nilIfEmpty(names(infos)))
			for _, info := range infos {
				data := []byte(strings.Repeat("x", indexOf(all, info.Name)))
				assert.Equal(t, int64(len(data)), info.Size, info.Name)
				assert.Equal(t, sum(data), info.Checksum, info.Name)
			}
		})
	}
	_, err := dl.ListAfter(ctx, "../x", "", 1)
	require.ErrorIs(t, err, storage.ErrInvalidName)
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func testNestedNames(t *testing.T, b storage.Backend) {
	ctx := t.Context()
	deep := "c/backups/20260101T000000/pg_tblspc/16384/base.tar.zst"
	put(t, b, deep, []byte("deep"))
	requireEqualBytes(t, []byte("deep"), readAll(t, b, deep), "deep object")

	// A prefix of an object's name is not an object.
	for _, n := range []string{"c", "c/backups", "c/backups/20260101T000000"} {
		_, err := b.Stat(ctx, n)
		require.ErrorIs(t, err, storage.ErrNotExist, "stat %s", n)
		_, err = b.Get(ctx, n)
		require.ErrorIs(t, err, storage.ErrNotExist, "get %s", n)
		require.NoError(t, b.Delete(ctx, n), "delete %s", n)
	}
	requireEqualBytes(t, []byte("deep"), readAll(t, b, deep), "deep object after deleting its prefixes")

	put(t, b, "c/backups/20260101T000000/backup.json", []byte("{}"))
	infos, err := b.List(ctx, "c/backups/20260101T000000/")
	require.NoError(t, err)
	assert.Equal(t, []string{"c/backups/20260101T000000/backup.json", deep}, names(infos))
}

func testDelete(t *testing.T, b storage.Backend) {
	ctx := t.Context()
	put(t, b, "a/b/obj", []byte("x"))
	put(t, b, "a/keep", []byte("y"))

	require.NoError(t, b.Delete(ctx, "a/b/obj"))
	_, err := b.Stat(ctx, "a/b/obj")
	require.ErrorIs(t, err, storage.ErrNotExist)
	_, err = b.Get(ctx, "a/b/obj")
	require.ErrorIs(t, err, storage.ErrNotExist)

	require.NoError(t, b.Delete(ctx, "a/b/obj"), "second delete")
	require.NoError(t, b.Delete(ctx, "never/existed"), "delete of a name never written")

	infos, err := b.List(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, []string{"a/keep"}, names(infos))

	// Writing where the last object was deleted works.
	put(t, b, "a/b/again", []byte("z"))
	requireEqualBytes(t, []byte("z"), readAll(t, b, "a/b/again"), "object written after delete")
}

func testMissing(t *testing.T, b storage.Backend) {
	ctx := t.Context()
	put(t, b, "present", []byte("x"))
	for _, n := range []string{"absent", "no/such/dir/obj", "present/child"} {
		_, err := b.Get(ctx, n)
		require.ErrorIs(t, err, storage.ErrNotExist, "get %s", n)
		_, err = b.Stat(ctx, n)
		require.ErrorIs(t, err, storage.ErrNotExist, "stat %s", n)
		_, err = storage.ReadAll(ctx, b, n)
		require.ErrorIs(t, err, storage.ErrNotExist, "read all %s", n)
	}
}

func testInvalidNames(t *testing.T, b storage.Backend) {
	ctx := t.Context()
	bad := []string{"", "/abs", "a//b", "a/", "..", "a/../b", "./a", ".hidden", "a/.tmp-x", "a\\b", "a\x00b", strings.Repeat("n", 1025)}
	for _, n := range bad {
		require.ErrorIs(t, storage.CheckName(n), storage.ErrInvalidName, "CheckName(%q)", n)
		err := b.Put(ctx, n, bytes.NewReader([]byte("x")), storage.PutOptions{})
		require.ErrorIs(t, err, storage.ErrInvalidName, "put %q", n)
		_, err = b.Get(ctx, n)
		require.ErrorIs(t, err, storage.ErrInvalidName, "get %q", n)
		_, err = b.Stat(ctx, n)
		require.ErrorIs(t, err, storage.ErrInvalidName, "stat %q", n)
		require.ErrorIs(t, b.Delete(ctx, n), storage.ErrInvalidName, "delete %q", n)
	}
	for _, prefix := range []string{"/abs", "/", "a//", "a/../", ".x/"} {
		_, err := b.List(ctx, prefix)
		require.ErrorIs(t, err, storage.ErrInvalidName, "list %q", prefix)
	}
	infos, err := b.List(ctx, "")
	require.NoError(t, err)
	assert.Empty(t, infos)
}

// testConcurrentPutAndDelete writes and deletes objects that share parent
// "directories" from several goroutines: a backend that tidies up empty
// directories must not make a concurrent Put fail.
func testConcurrentPutAndDelete(t *testing.T, b storage.Backend) {
	const workers, rounds = 4, 25
	var g errgroup.Group
	for w := range workers {
		g.Go(func() error {
			for i := range rounds {
				name := fmt.Sprintf("churn/a/b%d/obj", (w+i)%2)
				if err := b.Put(t.Context(), name+fmt.Sprint(w), bytes.NewReader([]byte{byte(i)}), storage.PutOptions{}); err != nil {
					return err
				}
				if err := b.Delete(t.Context(), name+fmt.Sprint(w)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	infos, err := b.List(t.Context(), "")
	require.NoError(t, err)
	assert.Empty(t, infos)
}

// cancellingReader yields data forever, cancelling the context once it has
// yielded after bytes; limit stops a backend that ignores the context.
type cancellingReader struct {
	cancel  context.CancelFunc
	after   int
	limit   int
	yielded int
}

func (r *cancellingReader) Read(p []byte) (int, error) {
	if r.yielded >= r.limit {
		return 0, io.EOF
	}
	if r.yielded >= r.after {
		r.cancel()
	}
	n := min(len(p), r.limit-r.yielded)
	clear(p[:n])
	r.yielded += n
	return n, nil
}

func testContextCancelled(t *testing.T, b storage.Backend) {
	put(t, b, "present", randomBytes(5<<20, 8))
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()

	t.Run("before the call", func(t *testing.T) {
		err := b.Put(cancelled, "new", bytes.NewReader([]byte("x")), storage.PutOptions{})
		require.ErrorIs(t, err, context.Canceled, "put")
		_, err = b.Get(cancelled, "present")
		require.ErrorIs(t, err, context.Canceled, "get")
		_, err = b.Stat(cancelled, "present")
		require.ErrorIs(t, err, context.Canceled, "stat")
		_, err = b.List(cancelled, "")
		require.ErrorIs(t, err, context.Canceled, "list")
		require.ErrorIs(t, b.Delete(cancelled, "present"), context.Canceled, "delete")
		_, err = storage.PutOnce(cancelled, b, "new", []byte("x"))
		require.ErrorIs(t, err, context.Canceled, "put once")
	})
	t.Run("during a put", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		r := &cancellingReader{cancel: cancel, after: 1 << 20, limit: 64 << 20}
		err := b.Put(ctx, "big", r, storage.PutOptions{})
		require.ErrorIs(t, err, context.Canceled)
		assert.Less(t, r.yielded, r.limit, "put read all the input after its context ended")
		_, err = b.Stat(t.Context(), "big")
		require.ErrorIs(t, err, storage.ErrNotExist, "a cancelled put stored something")
	})
	t.Run("during a get", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		rc, err := b.Get(ctx, "present")
		require.NoError(t, err)
		defer rc.Close() //nolint:errcheck // test cleanup
		_, err = io.ReadFull(rc, make([]byte, 1024))
		require.NoError(t, err)
		cancel()
		_, err = io.Copy(io.Discard, rc)
		require.Error(t, err, "reading on after the context ended")
		assert.False(t, errors.Is(err, storage.ErrChecksum), "cancellation reported as a checksum error: %v", err)
	})
	infos, err := b.List(t.Context(), "")
	require.NoError(t, err)
	assert.Equal(t, []string{"present"}, names(infos))
}

func testURL(t *testing.T, b storage.Backend) {
	assert.NotEmpty(t, b.URL())
}

// appender returns b as a storage.Appender, skipping the test when the
// backend does not implement that optional feature.
func appender(t *testing.T, b storage.Backend) storage.Appender {
	t.Helper()
	a, ok := b.(storage.Appender)
	if !ok {
		t.Skip("backend does not implement storage.Appender")
	}
	return a
}

// growing is an object written by appends, with the running hash its
// writer keeps.
type growing struct {
	t    *testing.T
	a    storage.Appender
	name string
	data []byte
	h    *storage.Hash
}

func newGrowing(t *testing.T, a storage.Appender, name string) *growing {
	return &growing{t: t, a: a, name: name, h: storage.NewHash(storage.DefaultAlgorithm)}
}

// add appends chunk at the object's end.
func (g *growing) add(chunk []byte) {
	g.t.Helper()
	g.h.Write(chunk)
	err := g.a.Append(g.t.Context(), g.name, int64(len(g.data)), chunk, g.h.Checksum())
	require.NoError(g.t, err, "append %d bytes at %d", len(chunk), len(g.data))
	g.data = append(g.data, chunk...)
}

// requireObject checks that Get, Stat and List all see exactly data.
func requireObject(t *testing.T, b storage.Backend, name string, data []byte) {
	t.Helper()
	requireEqualBytes(t, data, readAll(t, b, name), "read "+name)
	info, err := b.Stat(t.Context(), name)
	require.NoError(t, err)
	assert.Equal(t, int64(len(data)), info.Size, "stat size")
	assert.Equal(t, sum(data), info.Checksum, "stat sha256")
	infos, err := b.List(t.Context(), name)
	require.NoError(t, err)
	require.Equal(t, []string{name}, names(infos))
	assert.Equal(t, int64(len(data)), infos[0].Size, "list size")
	assert.Equal(t, sum(data), infos[0].Checksum, "list sha256")
}

func testAppend(t *testing.T, b storage.Backend) {
	a := appender(t, b)
	cases := []struct {
		name   string
		chunks []int
	}{
		{"one chunk", []int{100}},
		{"small chunks", []int{1, 2, 3, 4096, 7, 1}},
		{"empty first and in between", []int{0, 10, 0, 10}},
		{"large chunks", []int{1 << 20, 64 << 10, 3<<20 + 5}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newGrowing(t, a, fmt.Sprintf("append/%d/obj.partial", i))
			all := randomBytes(sumInts(tc.chunks), uint64(100+i))
			for _, n := range tc.chunks {
				g.add(all[len(g.data) : len(g.data)+n])
				requireObject(t, b, g.name, g.data)
			}
			requireEqualBytes(t, all, g.data, "test bookkeeping")
		})
	}
}

func sumInts(s []int) int {
	n := 0
	for _, v := range s {
		n += v
	}
	return n
}

func testAppendWrongOffset(t *testing.T, b storage.Backend) {
	a := appender(t, b)
	ctx := t.Context()
	g := newGrowing(t, a, "obj")
	g.add([]byte("hello, "))
	g.add([]byte("world"))
	n := int64(len(g.data))
	more := []byte("!")
	whole := sum(append(slices.Clone(g.data), more...))
	for _, off := range []int64{n - 1, n + 1, 1, 2 * n} {
		err := a.Append(ctx, "obj", off, more, whole)
		require.ErrorIs(t, err, storage.ErrAppendOffset, "offset %d of %d", off, n)
		requireObject(t, b, "obj", g.data)
	}

	// A missing object has no length to append at.
	err := a.Append(ctx, "missing", 5, more, sum(more))
	require.ErrorIs(t, err, storage.ErrAppendOffset)
	require.ErrorIs(t, err, storage.ErrNotExist)
	_, err = b.Stat(ctx, "missing")
	require.ErrorIs(t, err, storage.ErrNotExist)

	// Right offset after the refusals.
	g.add(more)
	requireObject(t, b, "obj", []byte("hello, world!"))
}

func testAppendReplaceAndPut(t *testing.T, b storage.Backend) {
	a := appender(t, b)
	ctx := t.Context()
	g := newGrowing(t, a, "seg.partial")
	g.add(randomBytes(100<<10, 9))
	g.add(randomBytes(10<<10, 10))

	t.Run("offset 0 replaces", func(t *testing.T) {
		short := []byte("short")
		require.NoError(t, a.Append(ctx, g.name, 0, short, sum(short)))
		requireObject(t, b, g.name, short)
		g.data, g.h = slices.Clone(short), storage.NewHash(storage.DefaultAlgorithm)
		g.h.Write(short)
		g.add([]byte(" and more"))
		requireObject(t, b, g.name, []byte("short and more"))
	})
	t.Run("offset 0 with wrong checksum stores nothing", func(t *testing.T) {
		err := a.Append(ctx, g.name, 0, []byte("other"), sum([]byte("not other")))
		require.ErrorIs(t, err, storage.ErrChecksum)
		requireObject(t, b, g.name, g.data)
		err = a.Append(ctx, "never", 0, []byte("other"), sum([]byte("not other")))
		require.ErrorIs(t, err, storage.ErrChecksum)
		_, err = b.Stat(ctx, "never")
		require.ErrorIs(t, err, storage.ErrNotExist)
	})
	t.Run("put replaces, append continues after put", func(t *testing.T) {
		replaced := randomBytes(3000, 11)
		put(t, b, g.name, replaced)
		requireObject(t, b, g.name, replaced)
		err := a.Append(ctx, g.name, int64(len("short and more")), []byte("x"), sum([]byte("short and morex")))
		require.ErrorIs(t, err, storage.ErrAppendOffset, "the old length after a put")
		g.data, g.h = slices.Clone(replaced), storage.NewHash(storage.DefaultAlgorithm)
		g.h.Write(replaced)
		g.add([]byte("tail"))
		g.add([]byte("tail2"))
		requireObject(t, b, g.name, g.data)
		requireEqualBytes(t, append(slices.Clone(replaced), "tailtail2"...), g.data, "bookkeeping")
	})
	t.Run("put over appended object with a shorter one", func(t *testing.T) {
		put(t, b, g.name, []byte("p"))
		requireObject(t, b, g.name, []byte("p"))
		require.NoError(t, b.Delete(ctx, g.name))
		_, err := b.Stat(ctx, g.name)
		require.ErrorIs(t, err, storage.ErrNotExist)
	})
}

// testAppendWhileReading appends while readers read: every read must be a
// whole, verified version, a prefix that ends where an Append ended.
func testAppendWhileReading(t *testing.T, b storage.Backend) {
	a := appender(t, b)
	const chunk, chunks = 8 << 10, 60
	all := randomBytes(chunk*chunks, 12)
	g := newGrowing(t, a, "grow")
	g.add(all[:chunk])

	var writerDone atomic.Bool
	var reads atomic.Int64
	eg, ctx := errgroup.WithContext(t.Context())
	eg.Go(func() error {
		defer writerDone.Store(true)
		h := storage.NewHash(storage.DefaultAlgorithm)
		h.Write(all[:chunk])
		for i := 1; i < chunks; i++ {
			part := all[i*chunk : (i+1)*chunk]
			h.Write(part)
			if err := a.Append(ctx, "grow", int64(i*chunk), part, h.Checksum()); err != nil {
				return fmt.Errorf("append %d: %w", i, err)
			}
		}
		return nil
	})
	for range 2 {
		eg.Go(func() error {
			for !writerDone.Load() || reads.Load() == 0 {
				got, err := storage.ReadAll(ctx, b, "grow")
				if err != nil {
					return err
				}
				if len(got)%chunk != 0 || !bytes.Equal(got, all[:len(got)]) {
					return fmt.Errorf("read %d bytes (sha256 %s) that are no appended version", len(got), sum(got))
				}
				info, err := b.Stat(ctx, "grow")
				if err != nil {
					return err
				}
				if info.Size < int64(len(got)) || info.Size%chunk != 0 {
					return fmt.Errorf("stat size %d after reading %d bytes", info.Size, len(got))
				}
				reads.Add(1)
			}
			return nil
		})
	}
	require.NoError(t, eg.Wait())
	requireObject(t, b, "grow", all)
	t.Logf("%d verified reads during %d appends", reads.Load(), chunks-1)
}

func testAppendArguments(t *testing.T, b storage.Backend) {
	a := appender(t, b)
	ctx := t.Context()
	data := []byte("data")
	for _, n := range []string{"", "/abs", "a//b", ".hidden", "a/.tmp-x"} {
		require.ErrorIs(t, a.Append(ctx, n, 0, data, sum(data)), storage.ErrInvalidName, "name %q", n)
	}
	for _, bad := range []string{"", "xyz", sum(data)[:63], strings.Repeat("g", 64)} {
		require.ErrorIs(t, a.Append(ctx, "obj", 0, data, bad), storage.ErrInvalidChecksum, "digest %q", bad)
	}
	require.ErrorIs(t, a.Append(ctx, "obj", -1, data, sum(data)), storage.ErrAppendOffset)

	// Either case of digest is accepted.
	require.NoError(t, a.Append(ctx, "obj", 0, data, strings.ToUpper(sum(data))))
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	more := append(slices.Clone(data), "more"...)
	require.ErrorIs(t, a.Append(cancelled, "obj", 4, []byte("more"), sum(more)), context.Canceled)
	require.ErrorIs(t, a.Append(cancelled, "new", 0, data, sum(data)), context.Canceled)
	requireObject(t, b, "obj", data)
	_, err := b.Stat(ctx, "new")
	require.ErrorIs(t, err, storage.ErrNotExist)
}
