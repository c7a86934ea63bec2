package storage

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
)

// NewVerifyingReader returns a reader over rc that hashes the bytes as they
// pass and, at the end, returns a *ChecksumError for name instead of io.EOF
// when their SHA-256 is not want (lower-case hex). Once it has reported the
// mismatch it keeps returning the same error. Close closes rc. Backends use
// it to implement Get's verification.
//
// The hash runs inline, in the caller's Read. A version that copied large
// reads into buffers hashed by another goroutine was measured and dropped:
// on the project's 2-core machine an uncompressed 3 GB restore took
// 3.1-3.6 s with it against 3.0 s inline, and 1.1 s more CPU, since both
// cores are busy anyway and the copy and the hand-off cost more than the
// overlap gained.
func NewVerifyingReader(name string, rc io.ReadCloser, want string) io.ReadCloser {
	return &verifyingReader{name: name, rc: rc, want: want, h: sha256.New()}
}

type verifyingReader struct {
	name string
	rc   io.ReadCloser
	want string
	h    hash.Hash
	err  error // sticky: the first terminal error (checksum or EOF)
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	if errors.Is(err, io.EOF) {
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want {
			v.err = &ChecksumError{Name: v.name, Want: v.want, Got: got}
		} else {
			v.err = io.EOF
		}
		return n, v.err
	}
	return n, err
}

func (v *verifyingReader) Close() error { return v.rc.Close() }
