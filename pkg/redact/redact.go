// Package redact holds the one function through which barnacle prints a
// URL (archive URLs, etcd endpoints, the s3 endpoint parameter): in logs,
// errors, etcd records, /status, /readyz and --json outputs. The
// configuration refuses credentials in URLs, so in a URL it accepted there
// is nothing to hide; URL exists for the URLs it refuses, which error
// messages must still name, and as a second fence should a new parameter
// ever carry a secret.
//
// It is a leaf that every package may import. Other modules may import
// this package, but its API is not stable.
package redact

import (
	"net/url"
	"slices"
	"strings"
)

// Hidden replaces every value URL hides.
const Hidden = "REDACTED"

// safeParams are the query parameters whose values are shown: the s3://
// parameters, none of which holds a secret (the s3 package tests that
// every parameter it accepts is here). Any other parameter's value is
// hidden, because an unknown parameter is exactly where a user pastes a
// secret key.
var safeParams = []string{"endpoint", "region", "path-style", "part-size", "concurrency", "sse", "sse-kms-key-id", "ca-file"}

// URL returns raw fit for printing: user information (name and password)
// replaced by Hidden, the value of every query parameter not known to be
// safe replaced by Hidden, a URL-valued parameter (endpoint) redacted in
// turn, and a fragment replaced by Hidden. A string that does not parse as
// a URL is shown only if it has no '@', '?' or '#' (such as "host:port"),
// since where a secret would sit in it is unknown.
func URL(raw string) string {
	return redactURL(raw, 0)
}

func redactURL(raw string, depth int) string {
	u, err := url.Parse(raw)
	if err != nil || depth > 2 {
		// Without a parse the secret's place is unknown; a string with
		// no user information, query or fragment (host:port) has none.
		if strings.ContainsAny(raw, "@?#") || depth > 2 {
			return "(unparsable URL, not shown)"
		}
		return raw
	}
	// hid records whether anything was hidden: a URL with nothing to hide
	// is shown as it was written, since re-encoding changes what the user
	// typed (u.String() of "s3://" is "s3:").
	hid := false
	if u.User != nil {
		u.User = url.User(Hidden)
		hid = true
	}
	if strings.Contains(u.Opaque, "@") {
		// "user:password@host" parses as scheme "user", opaque
		// "password@host".
		u.Opaque = Hidden
		hid = true
	}
	if u.Fragment != "" || u.RawFragment != "" {
		u.Fragment, u.RawFragment = Hidden, ""
		hid = true
	}
	if u.RawQuery != "" {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			u.RawQuery = Hidden
			hid = true
		} else {
			for k, vs := range q {
				for i, v := range vs {
					switch {
					case k == "endpoint":
						vs[i] = redactURL(v, depth+1)
					case !slices.Contains(safeParams, k):
						vs[i] = Hidden
					}
					hid = hid || vs[i] != v
				}
			}
			u.RawQuery = q.Encode()
		}
	}
	if !hid {
		return raw
	}
	return u.String()
}

// URLs redacts each of raws and joins them with commas, as etcd endpoints
// are written.
func URLs(raws []string) string {
	out := make([]string, len(raws))
	for i, r := range raws {
		out[i] = URL(r)
	}
	return strings.Join(out, ",")
}

// SafeParam reports whether URL shows the value of query parameter name.
func SafeParam(name string) bool { return slices.Contains(safeParams, name) }
