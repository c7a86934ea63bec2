package redact_test

import (
	"strings"
	"testing"

	"github.com/barnacle-pg/barnacle/pkg/redact"
)

func TestURL(t *testing.T) {
	const secret = "s3cr3tVALUE"
	for _, tc := range []struct {
		name, in, want string
	}{
		{"plain s3", "s3://bucket/p?endpoint=http%3A%2F%2F127.0.0.1%3A7070&region=r", "s3://bucket/p?endpoint=http%3A%2F%2F127.0.0.1%3A7070&region=r"},
		{"file", "file:///var/lib/barnacle", "file:///var/lib/barnacle"},
		// Nothing to hide: shown as written, not re-encoded.
		{"as written", "s3://bucket/p?endpoint=http://127.0.0.1:9000&region=r", "s3://bucket/p?endpoint=http://127.0.0.1:9000&region=r"},
		{"no bucket", "s3://", "s3://"},
		{"userinfo", "s3://AKID:" + secret + "@bucket/p", "s3://REDACTED@bucket/p"},
		{"user only", "http://" + secret + "@etcd:2379", "http://REDACTED@etcd:2379"},
		{"unknown param", "s3://bucket/p?region=r&secret_key=" + secret, "s3://bucket/p?region=r&secret_key=REDACTED"},
		{"endpoint userinfo", "s3://bucket/p?endpoint=http://u:" + secret + "@host:9000", "s3://bucket/p?endpoint=http%3A%2F%2FREDACTED%40host%3A9000"},
		{"endpoint query", "s3://bucket/p?endpoint=" + "http%3A%2F%2Fhost%3FX-Amz-Credential%3D" + secret, "s3://bucket/p?endpoint=http%3A%2F%2Fhost%3FX-Amz-Credential%3DREDACTED"},
		{"fragment", "file:///a#" + secret, "file:///a#REDACTED"},
		{"unparsable", "s3://b/p?x=%zz" + secret, "s3://b/p?REDACTED"},
		{"not a URL", "http://u:" + secret + "@[::1", "(unparsable URL, not shown)"},
		{"opaque", "user:" + secret + "@host:2379", "user:REDACTED"},
		{"host and port", "127.0.0.1:2379", "127.0.0.1:2379"},
		{"unparsable with at", "1.2.3.4:" + secret + "@h", "(unparsable URL, not shown)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := redact.URL(tc.in)
			if got != tc.want {
				t.Errorf("URL(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if strings.Contains(got, secret) {
				t.Errorf("URL(%q) = %q shows the secret", tc.in, got)
			}
		})
	}
	if got := redact.URLs([]string{"http://a:" + secret + "@h:1", "http://h:2"}); got != "http://REDACTED@h:1,http://h:2" {
		t.Errorf("URLs = %q", got)
	}
}
