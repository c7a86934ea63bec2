package storage_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
)

// sum is the checksum Put stores when it is given none.
func sum(data []byte) string { return storage.ChecksumOf(storage.DefaultAlgorithm, data) }

// sha256Sum is a checksum of the older form, which archives written before
// BLAKE3 hold and which callers may still give.
func sha256Sum(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

func TestCheckName(t *testing.T) {
	cases := []struct {
		name  string
		valid bool
	}{
		{"a", true},
		{"mycluster/wals/000000010000000000000005.zst", true},
		{"c/wals/00000002.history", true},
		{"c/wals/x.zst.conflict-20260101T000000.000000000Z", true},
		{"a b/ü", true},
		{strings.Repeat("n", 1024), true},
		{"", false},
		{strings.Repeat("n", 1025), false},
		{"/a", false},
		{"a/", false},
		{"a//b", false},
		{".", false},
		{"..", false},
		{"a/./b", false},
		{"a/../b", false},
		{".hidden", false},
		{"a/.tmp-123", false},
		{"a\\b", false},
		{"a\x00b", false},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%.30q", tc.name), func(t *testing.T) {
			err := storage.CheckName(tc.name)
			if tc.valid {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, storage.ErrInvalidName)
			}
		})
	}
}

func TestNormalizeSHA256(t *testing.T) {
	good := sum([]byte("x"))
	got, err := storage.NormalizeChecksum(strings.ToUpper(good))
	require.NoError(t, err)
	assert.Equal(t, good, got)
	for _, bad := range []string{"", "abc", good[:63], good + "a", "z" + good[1:]} {
		_, err := storage.NormalizeChecksum(bad)
		require.ErrorIs(t, err, storage.ErrInvalidChecksum, "%q", bad)
	}
}

func TestVerifyingReader(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	cases := []struct {
		name    string
		r       io.Reader
		want    string
		wantErr error
	}{
		{"match", bytes.NewReader(data), sum(data), nil},
		{"match, one byte at a time", iotest.OneByteReader(bytes.NewReader(data)), sum(data), nil},
		{"match, data with EOF", iotest.DataErrReader(bytes.NewReader(data)), sum(data), nil},
		{"empty", bytes.NewReader(nil), sum(nil), nil},
		{"mismatch", bytes.NewReader(data[1:]), sum(data), storage.ErrChecksum},
		{"mismatch, data with EOF", iotest.DataErrReader(bytes.NewReader(data[1:])), sum(data), storage.ErrChecksum},
		{"read error passes through", iotest.TimeoutReader(bytes.NewReader(data)), sum(data), iotest.ErrTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := storage.NewVerifyingReader("obj", io.NopCloser(tc.r), tc.want)
			_, err := io.ReadAll(rc)
			if tc.wantErr == nil {
				require.NoError(t, err)
				_, err = rc.Read(make([]byte, 1))
				require.ErrorIs(t, err, io.EOF, "read after EOF")
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
			if errors.Is(tc.wantErr, storage.ErrChecksum) {
				var cerr *storage.ChecksumError
				require.ErrorAs(t, err, &cerr)
				assert.Equal(t, storage.ChecksumError{Name: "obj", Want: tc.want, Got: sum(data[1:])}, *cerr)
				_, err = rc.Read(make([]byte, 1))
				require.ErrorIs(t, err, storage.ErrChecksum, "the mismatch is sticky")
			}
			require.NoError(t, rc.Close())
		})
	}
}

// TestVerifyingReaderLargeReads reads megabytes through a verifying reader
// in a mix of small and large reads: the digest must cover every byte in
// order, one flipped bit must fail it, and Close before EOF must leave
// nothing running.
func TestVerifyingReaderLargeReads(t *testing.T) {
	defer goleak.VerifyNone(t)
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 5<<20+12345)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	// readSizes cycle through small and large reads, some of them larger
	// than the 1 MiB buffers restore reads with.
	readSizes := []int{100, 32 << 10, 1 << 20, 7, 300 << 10, 3 << 20, 1}
	readAll := func(rc io.Reader) ([]byte, error) {
		var got []byte
		for i := 0; ; i++ {
			buf := make([]byte, readSizes[i%len(readSizes)])
			n, err := rc.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				return got, err
			}
		}
	}

	rc := storage.NewVerifyingReader("obj", io.NopCloser(bytes.NewReader(data)), sum(data))
	got, err := readAll(rc)
	require.ErrorIs(t, err, io.EOF)
	assert.True(t, bytes.Equal(data, got))
	require.NoError(t, rc.Close())

	damaged := bytes.Clone(data)
	damaged[4<<20+1] ^= 1
	rc = storage.NewVerifyingReader("obj", io.NopCloser(bytes.NewReader(damaged)), sum(data))
	_, err = readAll(rc)
	var cerr *storage.ChecksumError
	require.ErrorAs(t, err, &cerr, "one flipped bit, 4 MiB in")
	assert.Equal(t, sum(damaged), cerr.Got)
	require.NoError(t, rc.Close())

	rc = storage.NewVerifyingReader("obj", io.NopCloser(bytes.NewReader(data)), sum(data))
	_, err = rc.Read(make([]byte, 2<<20))
	require.NoError(t, err)
	require.NoError(t, rc.Close(), "Close before EOF")
}

func TestErrorMessages(t *testing.T) {
	a, b := sum([]byte("a")), sum([]byte("b"))
	ha, hb := a[len("blake3:"):], b[len("blake3:"):]
	s := sha256Sum([]byte("a"))
	cases := []struct {
		err  error
		is   error
		want string
	}{
		{&storage.ChecksumError{Name: "n", Want: a, Got: b}, storage.ErrChecksum,
			"storage: checksum mismatch for n: want blake3 " + ha + ", got " + hb},
		{&storage.ChecksumError{Name: "n", Want: s, Got: s}, storage.ErrChecksum,
			"storage: checksum mismatch for n: want sha256 " + s + ", got " + s},
		{&storage.ConflictError{Name: "n", AsideName: "n.conflict-x", ExistingChecksum: a, NewChecksum: b}, storage.ErrConflict,
			"storage: n already exists with different content (blake3 " + ha + ", new blake3 " + hb + "); new bytes stored as n.conflict-x"},
		{&storage.ConflictError{Name: "n", AsideName: "n.conflict-x", NewChecksum: b}, storage.ErrConflict,
			"storage: n already exists with different content (unknown (no stored checksum), new blake3 " + hb + "); new bytes stored as n.conflict-x"},
		{&storage.ConflictError{Name: "n", AsideName: "n.conflict-x", ExistingChecksum: b, NewChecksum: b}, storage.ErrConflict,
			"storage: n exists with the expected checksum (blake3 " + hb + ") stored but a different size, so it is damaged; new bytes stored as n.conflict-x"},
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, tc.err.Error())
		assert.ErrorIs(t, fmt.Errorf("wrapped: %w", tc.err), tc.is)
		assert.NotErrorIs(t, tc.err, storage.ErrNotExist)
	}
}

// vanishing reports the object as existing to the first IfAbsent Put and
// as missing to the Stat that follows, as a concurrent Delete would.
type vanishing struct {
	storage.Backend
	puts, stats int
}

func (v *vanishing) Put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	v.puts++
	if v.puts == 1 {
		return fmt.Errorf("put %s: %w", name, storage.ErrExist)
	}
	return v.Backend.Put(ctx, name, r, opts)
}

func (v *vanishing) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	v.stats++
	return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", name, storage.ErrNotExist)
}

func TestPutOnceRetriesWhenObjectVanishes(t *testing.T) {
	b, err := fs.New(t.TempDir(), fs.Options{})
	require.NoError(t, err)
	v := &vanishing{Backend: b}
	existed, err := storage.PutOnce(t.Context(), v, "obj", []byte("x"))
	require.NoError(t, err)
	assert.False(t, existed)
	assert.Equal(t, 2, v.puts)
	assert.Equal(t, 1, v.stats)
	got, err := storage.ReadAll(t.Context(), b, "obj")
	require.NoError(t, err)
	assert.Equal(t, []byte("x"), got)
}
