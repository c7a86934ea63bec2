// Package backends opens the storage.Backend named by an archive URL. It
// holds an explicit table from URL scheme to constructor rather than letting
// backends register themselves in init functions, so the set of backends a
// binary supports is visible in one place.
//
// Other modules may import this package, but its API is not stable.
package backends

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/barnacle-pg/barnacle/pkg/redact"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
	"github.com/barnacle-pg/barnacle/pkg/storage/s3"
)

// scheme is one row of the table: a URL scheme, an example for error
// messages, and the constructor.
type scheme struct {
	name    string
	example string
	open    func(ctx context.Context, u *url.URL, readOnly bool) (storage.Backend, error)
}

// schemes lists every supported archive URL scheme.
var schemes = []scheme{
	{name: "file", example: "file:///path", open: openFS},
	{name: "s3", example: "s3://bucket/prefix?endpoint=https://host&region=us-east-1", open: openS3},
}

func openFS(_ context.Context, u *url.URL, readOnly bool) (storage.Backend, error) {
	return fs.OpenWith(u, fs.Options{ReadOnly: readOnly})
}

// openS3 needs no read-only mode: s3.Open makes no request, so read-only
// credentials open a bucket as well as any.
func openS3(ctx context.Context, u *url.URL, _ bool) (storage.Backend, error) {
	return s3.Open(ctx, u)
}

// Check reports what Open would refuse in rawURL's form (scheme, query
// parameters, user information) without opening anything, so that a
// command can refuse a bad archive-url as a configuration error before it
// starts. Errors never contain a secret.
func Check(rawURL string) error {
	u, err := parse(rawURL)
	if err != nil {
		return err
	}
	switch u.Scheme {
	case "s3":
		return s3.CheckURL(u)
	case "file":
		return nil // fs.Open checks the rest, and the directory
	}
	return unsupported(u, rawURL)
}

func parse(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the raw URL, which may hold a secret.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("parse archive-url %q: %w", redact.URL(rawURL), err)
	}
	return u, nil
}

func unsupported(u *url.URL, rawURL string) error {
	if u.Scheme == "" && strings.HasPrefix(rawURL, "/") {
		return fmt.Errorf("archive-url %q has no scheme: use file://%s", redact.URL(rawURL), redact.URL(rawURL))
	}
	return fmt.Errorf("unsupported archive-url scheme %q: use %s", u.Scheme, examples())
}

// Open returns the backend for rawURL, chosen by its scheme (see Schemes),
// for reading and writing: a backend that can check on opening that it may
// write (the file backend) does. An unknown or missing scheme is an error
// that lists the supported ones. Errors never contain a secret: URLs in
// them go through redact.URL. ctx bounds any network work a backend does
// while opening.
func Open(ctx context.Context, rawURL string) (storage.Backend, error) {
	return open(ctx, rawURL, false)
}

// OpenReadOnly is Open for a caller that only reads the archive (restore,
// wal-fetch, list-backups, ...): it checks nothing that needs write
// access, so a user who may only read the archive can open it.
func OpenReadOnly(ctx context.Context, rawURL string) (storage.Backend, error) {
	return open(ctx, rawURL, true)
}

func open(ctx context.Context, rawURL string, readOnly bool) (storage.Backend, error) {
	u, err := parse(rawURL)
	if err != nil {
		return nil, err
	}
	for _, s := range schemes {
		if u.Scheme == s.name {
			b, err := s.open(ctx, u, readOnly)
			if err != nil {
				return nil, fmt.Errorf("open archive-url: %w", err)
			}
			return b, nil
		}
	}
	return nil, unsupported(u, rawURL)
}

func examples() string {
	ex := make([]string, len(schemes))
	for i, s := range schemes {
		ex[i] = s.example
	}
	return strings.Join(ex, " or ")
}
