package storage

import (
	"errors"
	"fmt"
	"io"
)

// NewVerifyingReader returns a reader over rc that hashes the bytes as they
// pass and, at the end, returns a *ChecksumError for name instead of io.EOF
// when their checksum is not want (normalized, see NormalizeChecksum), of
// want's algorithm; a want that is not well formed fails the first Read
// with an error wrapping ErrInvalidChecksum. Once it has reported an error
// it keeps returning the same error. Close closes rc. Backends use
// it to implement Get's verification.
//
// The hash runs inline, in the caller's Read. A version that copied large
// reads into buffers hashed by another goroutine was measured and dropped:
// on the project's 2-core machine an uncompressed 3 GB restore took
// 3.1-3.6 s with it against 3.0 s inline, and 1.1 s more CPU, since both
// cores are busy anyway and the copy and the hand-off cost more than the
// overlap gained.
func NewVerifyingReader(name string, rc io.ReadCloser, want string) io.ReadCloser {
	h, err := HashFor(want)
	if err != nil {
		return &verifyingReader{name: name, rc: rc, err: fmt.Errorf("%s: %w", name, err)}
	}
	return &verifyingReader{name: name, rc: rc, want: want, h: h}
}

type verifyingReader struct {
	name string
	rc   io.ReadCloser
	want string
	h    *Hash
	err  error // sticky: the first terminal error (checksum or EOF)
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	if errors.Is(err, io.EOF) {
		if got := v.h.Checksum(); got != v.want {
			v.err = &ChecksumError{Name: v.name, Want: v.want, Got: got}
		} else {
			v.err = io.EOF
		}
		return n, v.err
	}
	return n, err
}

func (v *verifyingReader) Close() error { return v.rc.Close() }
