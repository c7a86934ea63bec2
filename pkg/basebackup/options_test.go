package basebackup

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOptionsSQL(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		version int
		want    string
		wantErr string
	}{
		{
			name:    "zero value on 15",
			version: 15,
			want:    "BASE_BACKUP (CHECKPOINT 'spread', WAIT false, MANIFEST 'no')",
		},
		{
			name: "everything on 15",
			opts: Options{Label: "barnacle 2024-01-01", Fast: true, Manifest: true, MaxRate: 1024,
				TablespaceMap: true, Progress: true, ManifestChecksums: "SHA256"},
			version: 15,
			want: "BASE_BACKUP (LABEL 'barnacle 2024-01-01', PROGRESS, CHECKPOINT 'fast', WAIT false, " +
				"MAX_RATE 1024, TABLESPACE_MAP, MANIFEST 'yes', MANIFEST_CHECKSUMS 'SHA256')",
		},
		{
			name:    "same syntax on 17",
			opts:    Options{Fast: true, Manifest: true},
			version: 17,
			want:    "BASE_BACKUP (CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C')",
		},
		{
			name:    "label quoting",
			opts:    Options{Label: `it's a \ label`},
			version: 15,
			want:    `BASE_BACKUP (LABEL 'it''s a \ label', CHECKPOINT 'spread', WAIT false, MANIFEST 'no')`,
		},
		{
			name:    "max rate bounds",
			opts:    Options{MaxRate: 32},
			version: 16,
			want:    "BASE_BACKUP (CHECKPOINT 'spread', WAIT false, MAX_RATE 32, MANIFEST 'no')",
		},
		{
			name:    "checksum algorithm in any case",
			opts:    Options{Manifest: true, ManifestChecksums: "sha512"},
			version: 15,
			want:    "BASE_BACKUP (CHECKPOINT 'spread', WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'SHA512')",
		},
		{
			name:    "unknown checksum algorithm",
			opts:    Options{Manifest: true, ManifestChecksums: "md5"},
			version: 15,
			wantErr: `manifest checksum algorithm "md5" is unknown: use one of NONE, CRC32C, SHA224, SHA256, SHA384, SHA512`,
		},
		{name: "max rate too low", opts: Options{MaxRate: 31}, version: 15, wantErr: "max rate 31 kB/s is outside 32..1048576"},
		{name: "max rate too high", opts: Options{MaxRate: 1048577}, version: 15, wantErr: "outside"},
		{name: "negative max rate", opts: Options{MaxRate: -1}, version: 15, wantErr: "outside"},
		{name: "NUL in label", opts: Options{Label: "a\x00b"}, version: 15, wantErr: "NUL"},
		{name: "14 refused", version: 14, wantErr: "PostgreSQL 15 or later is required: server is version 14"},
		{name: "13 refused", version: 13, wantErr: "PostgreSQL 15 or later is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.opts.sql(tt.version)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestOptionsSQLOldVersionIsSentinel(t *testing.T) {
	_, err := Options{}.sql(14)
	assert.True(t, errors.Is(err, ErrUnsupportedVersion))
}

func TestParsePosition(t *testing.T) {
	tests := []struct {
		name    string
		row     [][]byte
		want    Position
		wantErr string
	}{
		{name: "ok", row: [][]byte{[]byte("0/2000028"), []byte("1")}, want: Position{LSN: 0x2000028, Timeline: 1}},
		{name: "high timeline", row: [][]byte{[]byte("16/B374D848"), []byte("4294967295")}, want: Position{LSN: 0x16B374D848, Timeline: 4294967295}},
		{name: "null lsn", row: [][]byte{nil, []byte("1")}, wantErr: "want recptr and tli"},
		{name: "one column", row: [][]byte{[]byte("0/1")}, wantErr: "want recptr and tli"},
		{name: "bad lsn", row: [][]byte{[]byte("0x1"), []byte("1")}, wantErr: "recptr"},
		{name: "timeline 0", row: [][]byte{[]byte("0/1"), []byte("0")}, wantErr: "not a timeline"},
		{name: "timeline too big", row: [][]byte{[]byte("0/1"), []byte("4294967296")}, wantErr: "not a timeline"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePosition(tt.row)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestParseTablespace(t *testing.T) {
	tests := []struct {
		name    string
		row     [][]byte
		want    Tablespace
		wantErr string
	}{
		{name: "data directory without size", row: [][]byte{nil, nil, nil}, want: Tablespace{Size: -1}},
		{name: "data directory with size", row: [][]byte{nil, nil, []byte("30000")}, want: Tablespace{Size: 30000 * 1024}},
		{name: "tablespace", row: [][]byte{[]byte("16384"), []byte("/srv/ts1"), []byte("8")},
			want: Tablespace{OID: 16384, Location: "/srv/ts1", Size: 8192}},
		{name: "oid without location", row: [][]byte{[]byte("16384"), nil, nil}, wantErr: "both be NULL"},
		{name: "empty location", row: [][]byte{[]byte("16384"), {}, nil}, wantErr: "empty location"},
		{name: "oid 0", row: [][]byte{[]byte("0"), []byte("/x"), nil}, wantErr: "not an OID"},
		{name: "negative size", row: [][]byte{nil, nil, []byte("-1")}, wantErr: "not a size"},
		{name: "overflowing size", row: [][]byte{nil, nil, []byte("9223372036854775807")}, wantErr: "not a size"},
		{name: "two columns", row: [][]byte{nil, nil}, wantErr: "want 3 columns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseTablespace(tt.row)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}
