package storage_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/storage"
)

func TestChecksumForms(t *testing.T) {
	// Published test vectors: BLAKE3 and SHA-256 of "" and "abc".
	const (
		blake3Empty = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
		blake3ABC   = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
		sha256ABC   = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	)
	assert.Equal(t, "blake3:"+blake3Empty, storage.ChecksumOf(storage.BLAKE3, nil))
	assert.Equal(t, "blake3:"+blake3ABC, storage.ChecksumOf(storage.BLAKE3, []byte("abc")))
	assert.Equal(t, sha256ABC, storage.ChecksumOf(storage.SHA256, []byte("abc")), "SHA-256 keeps the untagged form")
	assert.Equal(t, storage.BLAKE3, storage.DefaultAlgorithm)

	for _, c := range []string{"blake3:" + blake3ABC, sha256ABC} {
		assert.True(t, storage.Matches(c, []byte("abc")), c)
		assert.True(t, storage.Matches(strings.ToUpper(c), []byte("abc")), "upper case %s", c)
		assert.False(t, storage.Matches(c, []byte("abd")), c)
		h, err := storage.HashFor(strings.ToUpper(c))
		require.NoError(t, err)
		h.Write([]byte("abc"))
		assert.Equal(t, c, h.Checksum())
	}
	assert.False(t, storage.Matches("", nil))
	assert.Equal(t, "blake3 "+blake3ABC, storage.DescribeChecksum("blake3:"+blake3ABC))
	assert.Equal(t, "sha256 "+sha256ABC, storage.DescribeChecksum(sha256ABC))

	got, err := storage.NormalizeChecksum("BLAKE3:" + strings.ToUpper(blake3ABC))
	require.NoError(t, err)
	assert.Equal(t, "blake3:"+blake3ABC, got)
	for _, bad := range []string{"", "abc", "blake3:", "blake3:" + blake3ABC[:63], "sha256:" + sha256ABC,
		"blake3:" + blake3ABC + ":5", strings.Repeat("z", 64)} {
		_, err := storage.NormalizeChecksum(bad)
		require.ErrorIs(t, err, storage.ErrInvalidChecksum, "%q", bad)
		_, err = storage.HashFor(bad)
		require.ErrorIs(t, err, storage.ErrInvalidChecksum, "%q", bad)
	}
}

// TestHashChecksumKeepsState checks what Append's callers rely on: reading
// the checksum so far does not reset the running hash.
func TestHashChecksumKeepsState(t *testing.T) {
	for _, alg := range []storage.Algorithm{storage.BLAKE3, storage.SHA256} {
		h := storage.NewHash(alg)
		assert.Equal(t, alg, h.Algorithm())
		h.Write([]byte("ab"))
		assert.Equal(t, storage.ChecksumOf(alg, []byte("ab")), h.Checksum())
		h.Write([]byte("c"))
		assert.Equal(t, storage.ChecksumOf(alg, []byte("abc")), h.Checksum(), string(alg))
	}
}
