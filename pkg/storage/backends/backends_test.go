package backends_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
)

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	b, err := backends.Open(t.Context(), "file://"+dir)
	require.NoError(t, err)
	require.IsType(t, &fs.Backend{}, b)
	assert.Equal(t, "file://"+dir, b.URL())
}

func TestOpenErrors(t *testing.T) {
	cases := []struct {
		url  string
		want string
	}{
		{"s3://bucket/prefix", `unsupported archive-url scheme "s3": use file:///path`},
		{"ftp://user:secret@host/x", `unsupported archive-url scheme "ftp": use file:///path`},
		{"", `unsupported archive-url scheme "": use file:///path`},
		{"/var/lib/barnacle", `archive-url "/var/lib/barnacle" has no scheme: use file:///var/lib/barnacle`},
		{"file://var/lib/barnacle", `open archive-url: fs: archive URL "file://var/lib/barnacle" names host "var"`},
		{"s3://user:secret@bucket/%zz", `parse archive-url: invalid URL escape "%zz"`},
	}
	for _, tc := range cases {
		t.Run(tc.url, func(t *testing.T) {
			_, err := backends.Open(t.Context(), tc.url)
			require.ErrorContains(t, err, tc.want)
			assert.NotContains(t, err.Error(), "secret", "errors must not leak credentials")
		})
	}
}

func TestSchemes(t *testing.T) {
	assert.Equal(t, []string{"file"}, backends.Schemes())
}
