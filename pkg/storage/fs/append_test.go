package fs_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
)

func xattr(t *testing.T, p string) string {
	t.Helper()
	buf := make([]byte, 128)
	n, err := unix.Getxattr(p, fs.XattrName, buf)
	require.NoError(t, err)
	return string(buf[:n])
}

// appendAll appends chunks to name from offset 0 and returns the object.
func appendAll(t *testing.T, b *fs.Backend, name string, chunks ...[]byte) []byte {
	t.Helper()
	h := storage.NewHash(storage.DefaultAlgorithm)
	var data []byte
	for _, c := range chunks {
		h.Write(c)
		require.NoError(t, b.Append(t.Context(), name, int64(len(data)), c, h.Checksum()))
		data = append(data, c...)
	}
	return data
}

func TestAppendXattrFormat(t *testing.T) {
	b := newBackend(t)
	p := filepath.Join(b.Root(), "obj")
	data := appendAll(t, b, "obj", []byte("hello"))
	assert.Equal(t, sum(data)+":5", xattr(t, p), "offset 0 records the length")
	data = appendAll(t, b, "obj", []byte("hello"), []byte(", world"))
	assert.Equal(t, sum(data)+":12", xattr(t, p))

	// Put writes the plain digest again; the first append after it
	// records the length.
	require.NoError(t, b.Put(t.Context(), "obj", bytes.NewReader([]byte("abc")), storage.PutOptions{}))
	assert.Equal(t, sum([]byte("abc")), xattr(t, p))
	require.NoError(t, b.Append(t.Context(), "obj", 3, []byte("def"), sum([]byte("abcdef"))))
	assert.Equal(t, sum([]byte("abcdef"))+":6", xattr(t, p))
}

// TestAppendCrashBeforeChecksum simulates a crash after an Append wrote its
// bytes and before it recorded their checksum (and, for the file written by
// Put, before the first Append recorded the length): the file is longer
// than the object, and the object reads back as it was, verified.
func TestAppendCrashBeforeChecksum(t *testing.T) {
	for _, viaPut := range []bool{false, true} {
		t.Run(fmt.Sprintf("put=%v", viaPut), func(t *testing.T) {
			ctx := t.Context()
			b := newBackend(t)
			p := filepath.Join(b.Root(), "c", "seg.partial")
			var data []byte
			if viaPut {
				data = []byte("written by put")
				require.NoError(t, b.Put(ctx, "c/seg.partial", bytes.NewReader(data), storage.PutOptions{}))
				// The first Append records the length before it writes.
				require.NoError(t, b.Append(ctx, "c/seg.partial", int64(len(data)), []byte("+1"), sum(append(data, "+1"...))))
				data = append(data, "+1"...)
			} else {
				data = appendAll(t, b, "c/seg.partial", []byte("first "), []byte("second"))
			}
			before := xattr(t, p)

			// The interrupted Append: bytes written in place, attribute unchanged.
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = f.Write([]byte("bytes whose checksum was never recorded"))
			require.NoError(t, err)
			require.NoError(t, f.Close())
			assert.Equal(t, before, xattr(t, p))

			got, err := storage.ReadAll(ctx, b, "c/seg.partial")
			require.NoError(t, err)
			assert.Equal(t, data, got)
			info, err := b.Stat(ctx, "c/seg.partial")
			require.NoError(t, err)
			assert.Equal(t, int64(len(data)), info.Size)
			assert.Equal(t, sum(data), info.Checksum)
			infos, err := b.List(ctx, "c/")
			require.NoError(t, err)
			require.Len(t, infos, 1)
			assert.Equal(t, int64(len(data)), infos[0].Size)

			// The writer resumes at the recorded length, over the debris.
			more := []byte("third")
			whole := append(bytes.Clone(data), more...)
			require.NoError(t, b.Append(ctx, "c/seg.partial", int64(len(data)), more, sum(whole)))
			got, err = storage.ReadAll(ctx, b, "c/seg.partial")
			require.NoError(t, err)
			assert.Equal(t, whole, got)
			// And an append at the file's length (past the object) is refused.
			fi, err := os.Stat(p)
			require.NoError(t, err)
			if fi.Size() > int64(len(whole)) {
				err = b.Append(ctx, "c/seg.partial", fi.Size(), more, sum(whole))
				require.ErrorIs(t, err, storage.ErrAppendOffset)
			}
		})
	}
}

func TestAppendedFileTooShort(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	data := appendAll(t, b, "obj", []byte("0123456789"), []byte("abcdef"))
	p := filepath.Join(b.Root(), "obj")
	require.NoError(t, os.Truncate(p, 12))

	_, err := storage.ReadAll(ctx, b, "obj")
	require.ErrorIs(t, err, storage.ErrChecksum, "a file shorter than its recorded length")
	info, err := b.Stat(ctx, "obj")
	require.NoError(t, err)
	assert.Equal(t, int64(len(data)), info.Size, "stat reports the recorded length")
	for _, off := range []int64{12, int64(len(data))} {
		err = b.Append(ctx, "obj", off, []byte("x"), sum(append(data, 'x')))
		require.ErrorIs(t, err, storage.ErrAppendOffset, "offset %d", off)
	}
	// Rewriting it whole repairs it.
	require.NoError(t, b.Append(ctx, "obj", 0, data, sum(data)))
	got, err := storage.ReadAll(ctx, b, "obj")
	require.NoError(t, err)
	assert.Equal(t, data, got)
}

func TestInvalidRecordedLength(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	data := appendAll(t, b, "obj", []byte("abc"))
	p := filepath.Join(b.Root(), "obj")
	for _, v := range []string{sum(data) + ":", sum(data) + ":-1", sum(data) + ":+3", sum(data) + ":3x", sum(data) + ":3:3", "xyz:3"} {
		require.NoError(t, unix.Setxattr(p, fs.XattrName, []byte(v), 0))
		_, err := b.Get(ctx, "obj")
		require.ErrorIs(t, err, storage.ErrInvalidChecksum, "attribute %q", v)
		info, err := b.Stat(ctx, "obj")
		require.NoError(t, err)
		assert.Empty(t, info.Checksum, "attribute %q", v)
		assert.Equal(t, int64(3), info.Size, "attribute %q: the file size", v)
		require.ErrorIs(t, b.Append(ctx, "obj", 3, []byte("d"), sum([]byte("abcd"))), storage.ErrInvalidChecksum)
	}
	// Upper-case digests written by someone else are read.
	require.NoError(t, unix.Setxattr(p, fs.XattrName, []byte(fmt.Sprintf("%X:%s", sha256.Sum256(data), strconv.Itoa(len(data)))), 0))
	got, err := storage.ReadAll(ctx, b, "obj")
	require.NoError(t, err)
	assert.Equal(t, data, got)
}

func TestAppendToForeignFile(t *testing.T) {
	b := newBackend(t)
	require.NoError(t, os.WriteFile(filepath.Join(b.Root(), "foreign"), []byte("abc"), 0o600))
	err := b.Append(t.Context(), "foreign", 3, []byte("d"), sum([]byte("abcd")))
	require.ErrorIs(t, err, storage.ErrNoChecksum)
	require.NoError(t, os.Mkdir(filepath.Join(b.Root(), "dir"), 0o700))
	err = b.Append(t.Context(), "dir", 3, []byte("d"), sum([]byte("abcd")))
	require.ErrorIs(t, err, storage.ErrAppendOffset)
	require.ErrorIs(t, err, storage.ErrNotExist)
}

// BenchmarkGrowSegment compares ways of keeping a growing 8 MiB object
// durable after every chunk: Append of the new chunk (pwrite, fdatasync,
// attribute, fsync); Put of the whole object so far (temporary file, fsync,
// rename, directory fsync), which is what the WAL receiver did for its
// .partial; and, as the floor, what pg_receivewal --synchronous does
// (pwrite into a zero-filled, preallocated segment, then fdatasync, which
// then has no metadata to commit). 8 KiB chunks are a synchronous
// receiver's typical WAL message, 64 KiB a 50-100 ms flush at a few MB/s.
// MB/s counts the data made durable, not the bytes written.
//
//	go test -run '^$' -bench GrowSegment -benchtime 3x ./pkg/storage/fs/
func BenchmarkGrowSegment(b *testing.B) {
	const total = 8 << 20
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(i * 7)
	}
	root := b.TempDir()
	be, err := fs.New(root, fs.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	report := func(b *testing.B, chunk int) {
		b.ReportMetric(float64(b.N*total/chunk)/b.Elapsed().Seconds(), "ops/s")
	}
	for _, chunk := range []int{8 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("append/%dKiB", chunk>>10), func(b *testing.B) {
			b.SetBytes(total)
			for b.Loop() {
				h := storage.NewHash(storage.DefaultAlgorithm)
				for off := 0; off < total; off += chunk {
					h.Write(data[off : off+chunk])
					if err := be.Append(ctx, "seg.partial", int64(off), data[off:off+chunk], h.Checksum()); err != nil {
						b.Fatal(err)
					}
				}
			}
			report(b, chunk)
		})
		b.Run(fmt.Sprintf("prealloc-fdatasync/%dKiB", chunk>>10), func(b *testing.B) {
			p := filepath.Join(root, "prealloc")
			if err := os.WriteFile(p, make([]byte, total), 0o600); err != nil {
				b.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close() //nolint:errcheck // benchmark
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(total)
			b.ResetTimer()
			for b.Loop() {
				for off := 0; off < total; off += chunk {
					if _, err := f.WriteAt(data[off:off+chunk], int64(off)); err != nil {
						b.Fatal(err)
					}
					if err := unix.Fdatasync(int(f.Fd())); err != nil {
						b.Fatal(err)
					}
				}
			}
			report(b, chunk)
		})
	}
	b.Run("put/64KiB", func(b *testing.B) {
		const chunk = 64 << 10
		b.SetBytes(total)
		for b.Loop() {
			for off := chunk; off <= total; off += chunk {
				if err := be.Put(ctx, "seg.partial", bytes.NewReader(data[:off]), storage.PutOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		}
		report(b, chunk)
	})
}
