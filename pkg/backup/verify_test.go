package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// withChecksum appends the Manifest-Checksum line PostgreSQL writes: the
// SHA-256 of everything before it.
func withChecksum(body string) string {
	sum := sha256.Sum256([]byte(body))
	return body + `"Manifest-Checksum": "` + hex.EncodeToString(sum[:]) + "\"}\n"
}

func TestParseManifest(t *testing.T) {
	const body = `{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "global/pg_control", "Size": 8192, "Last-Modified": "2026-01-01 00:00:00 GMT", "Checksum-Algorithm": "SHA256", "Checksum": "ab" },
{ "Encoded-Path": "626173652f78ff", "Size": 0, "Last-Modified": "2026-01-01 00:00:00 GMT", "Checksum-Algorithm": "SHA256", "Checksum": "cd" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
`
	good := withChecksum(body)
	m, err := parseManifest([]byte(good))
	require.NoError(t, err)
	require.Len(t, m.Files, 2)
	assert.Equal(t, "global/pg_control", m.Files[0].path())
	assert.Equal(t, "base/x\xff", m.Files[1].path())
	assert.Empty(t, m.problems)
	require.Len(t, m.WALRanges, 1)
	assert.Equal(t, "0/2000100", m.WALRanges[0].EndLSN)

	for name, tc := range map[string]struct{ data, want string }{
		"ChecksumMismatch": {good[:40] + "2" + good[41:], "manifest checksum mismatch"},
		"NoFinalNewline":   {good[:len(good)-1], "not newline-terminated"},
		"Version":          {withChecksum(`{ "PostgreSQL-Backup-Manifest-Version": 9, "Files": [],` + "\n"), "unsupported manifest version 9"},
		"NotJSON":          {"{\n", "parse"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseManifest([]byte(tc.data))
			assert.ErrorContains(t, err, tc.want)
		})
	}
}

func TestIgnored(t *testing.T) {
	for p, want := range map[string]bool{
		"pg_wal":                 true,
		"pg_wal/archive_status":  true,
		"backup_manifest":        true,
		"postgresql.auto.conf":   true,
		"standby.signal":         true,
		"pg_walx":                false,
		"base/1/pg_wal":          false,
		"global/pg_control":      false,
		"pg_tblspc/16384/pg_wal": false,
	} {
		assert.Equal(t, want, ignored(p), p)
	}
}

func TestVersionNum(t *testing.T) {
	for v, want := range map[string]int{
		"15.8 (Debian 15.8-1.pgdg120+1)": 150008,
		"15.10":                          150010,
		"16beta1":                        160000,
		"17":                             170000,
	} {
		got, err := versionNum(v)
		require.NoError(t, err, v)
		assert.Equal(t, want, got, v)
	}
	for _, v := range []string{"", "9.6.24", "x"} {
		_, err := versionNum(v)
		assert.Error(t, err, v)
	}
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]uint64{"16MB": 16 << 20, "1GB": 1 << 30, "512kB": 512 << 10, "4096": 4096} {
		got, err := parseSize(s)
		require.NoError(t, err, s)
		assert.Equal(t, want, got, s)
	}
	for _, s := range []string{"", "MB", "16 XB", "16mb"} {
		_, err := parseSize(s)
		assert.Error(t, err, s)
	}
}

// TestManifestHash checks each algorithm against a known value for
// "123456789". PostgreSQL's CRC32C (0xe3069283) is recorded in memory order,
// little-endian; real servers' manifests are checked in TestTake.
func TestManifestHash(t *testing.T) {
	tests := map[string]string{
		"CRC32C": "839206e3",
		"crc32c": "839206e3",
		"SHA224": "9b3e61bf29f17c75572fae2e86e17809a4513d07c8a18152acf34521",
		"SHA256": "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225",
		"SHA384": "eb455d56d2c1a69de64e832011f3393d45f3fa31d6842f21af92d2fe469c499da5e3179847334a18479c8d1dedea1be3",
		"SHA512": "d9e6762dd1c8eaf6d61b3c6192fc408d4d6d5f1176d0c29169bc24e71c3f274ad27fcd5811b313d681f7e55ec02d73d499c95455b6b5bb503acf574fba8ffe85",
	}
	for alg, want := range tests {
		h, known := manifestHash(alg)
		require.True(t, known, alg)
		h.Write([]byte("123456789"))
		assert.Equal(t, want, hex.EncodeToString(h.Sum(nil)), alg)
	}
	for _, alg := range []string{"", "NONE", "none"} {
		h, known := manifestHash(alg)
		assert.True(t, known, alg)
		assert.Nil(t, h, alg)
	}
	h, known := manifestHash("MD5")
	assert.False(t, known)
	assert.Nil(t, h)
}
