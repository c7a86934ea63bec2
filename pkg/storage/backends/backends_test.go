package backends_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/storage/s3"
)

// setCredentials gives the s3 backend credentials through the environment,
// so that its credential chain never reaches the IAM provider (which would
// query the instance metadata address).
func setCredentials(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "examplesecret")
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	b, err := backends.Open(t.Context(), "file://"+dir)
	require.NoError(t, err)
	require.IsType(t, &fs.Backend{}, b)
	assert.Equal(t, "file://"+dir, b.URL())

	setCredentials(t)
	u := "s3://bucket/prefix?endpoint=http%3A%2F%2F127.0.0.1%3A7070&path-style=true&region=us-east-1"
	b, err = backends.Open(t.Context(), u)
	require.NoError(t, err)
	require.IsType(t, &s3.Backend{}, b)
	assert.Equal(t, u, b.URL())
}

func TestOpenErrors(t *testing.T) {
	setCredentials(t)
	cases := []struct {
		url  string
		want string
	}{
		{"s3://user:secret@bucket/prefix", `open archive-url: s3: archive URL "s3://REDACTED@bucket/prefix" has user information`},
		{"s3://bucket/prefix?acl=private", `open archive-url: s3: archive URL "s3://bucket/prefix?acl=REDACTED": unknown query parameter "acl"`},
		{"s3://bucket/prefix?key=secret", `archive URL "s3://bucket/prefix?key=REDACTED": unknown query parameter "key"; known: endpoint, region,`},
		{"s3://bucket/prefix?endpoint=http://u:secret@h:9000", `endpoint "http://REDACTED@h:9000" has user information`},
		{"ftp://user:secret@host/x", `unsupported archive-url scheme "ftp": use file:///path or s3://bucket/prefix?endpoint=https://host&region=us-east-1`},
		{"", `unsupported archive-url scheme "": use file:///path or s3://`},
		{"/var/lib/barnacle", `archive-url "/var/lib/barnacle" has no scheme: use file:///var/lib/barnacle`},
		{"file://var/lib/barnacle", `open archive-url: fs: archive URL "file://var/lib/barnacle" names host "var"`},
		{"s3://user:secret@bucket/%zz", `parse archive-url "(unparsable URL, not shown)": invalid URL escape "%zz"`},
	}
	for _, tc := range cases {
		t.Run(tc.url, func(t *testing.T) {
			_, err := backends.Open(t.Context(), tc.url)
			require.ErrorContains(t, err, tc.want)
			assert.NotContains(t, err.Error(), "secret", "errors must not leak credentials")
			// Check finds the same without opening anything (file URLs
			// are checked by Open, which looks at the directory).
			if err := backends.Check(tc.url); err != nil {
				assert.NotContains(t, err.Error(), "secret")
			} else {
				assert.Contains(t, tc.url, "file://")
			}
		})
	}
}
