package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"

	"github.com/barnacle-pg/barnacle/pkg/compress"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// SegmentReader is OpenSegment's reader: the WAL of one archived segment
// or .partial, decompressed and verified.
type SegmentReader struct {
	name string
	raw  *recordingReader // the backend's verifying reader
	dec  io.ReadCloser    // decompressor over raw
	err  error            // sticky terminal error or io.EOF
}

// OpenSegment opens the archived object name (a full object name such as
// "c1/wals/000000010000000000000005.zst", also a .partial) for reading its
// WAL, decompressed according to the name's suffix (see wal.SplitFileName).
// The caller closes the reader.
//
// The reader verifies what the backend stores: at the end of the WAL it
// reads the object to its end, so that the backend checks the stored
// checksum, and fails on bytes after the compressed data. It returns
// io.EOF only once both checks passed; a caller that stops early gets no
// verification. Errors wrap storage.ErrNotExist when the object is missing
// and storage.ErrChecksum when its bytes are damaged.
func OpenSegment(ctx context.Context, b storage.Backend, name string) (*SegmentReader, error) {
	_, _, comp := wal.SplitFileName(path.Base(name))
	alg := CompressionAlgorithm(comp)
	rc, err := b.Get(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open segment %s: %w", name, err)
	}
	raw := &recordingReader{rc: rc}
	dec, err := compress.NewReader(alg, raw)
	if err != nil {
		_ = rc.Close()
		return nil, fmt.Errorf("open segment %s: %w", name, err)
	}
	return &SegmentReader{name: name, raw: raw, dec: dec}, nil
}

// CompressionAlgorithm maps a name suffix from wal.SplitFileName ("",
// wal.CompressionZstd, wal.CompressionLZ4) to the compress algorithm that
// reads it; any other suffix maps to compress.None.
func CompressionAlgorithm(suffix string) string {
	switch suffix {
	case wal.CompressionZstd:
		return compress.Zstd
	case wal.CompressionLZ4:
		return compress.LZ4
	}
	return compress.None
}

// Read reads decompressed WAL; see OpenSegment for when it verifies.
func (s *SegmentReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.dec.Read(p)
	switch {
	case err == io.EOF: //nolint:errorlint // io.EOF is returned unwrapped by contract
		// A decompressor may stop at the end of its last frame without
		// reading the object's end, where the backend checks the stored
		// checksum.
		extra, derr := io.Copy(io.Discard, s.raw)
		switch {
		case derr != nil:
			s.err = fmt.Errorf("read segment %s: %w", s.name, derr)
		case extra > 0:
			s.err = fmt.Errorf("read segment %s: %d bytes after the compressed data", s.name, extra)
		default:
			s.err = io.EOF
		}
		if n > 0 && s.err != io.EOF { //nolint:errorlint // see above
			return n, nil // the error comes with the next Read
		}
		return n, s.err
	case err != nil:
		s.err = fmt.Errorf("read segment %s: %w", s.name, err)
		return n, s.err
	}
	return n, nil
}

// Close releases the decompressor and closes the backend's reader.
func (s *SegmentReader) Close() error {
	derr := s.dec.Close()
	return errors.Join(derr, s.raw.rc.Close())
}

// StorageErr is the first error other than io.EOF that the backend's
// reader returned, or nil: it tells a storage failure (or damaged stored
// bytes, storage.ErrChecksum) from corrupt compressed data.
func (s *SegmentReader) StorageErr() error { return s.raw.err }

// recordingReader remembers the first error other than io.EOF that the
// backend's reader returned.
type recordingReader struct {
	rc  io.ReadCloser
	err error
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if err != nil && err != io.EOF && r.err == nil { //nolint:errorlint // io.EOF is returned unwrapped by contract
		r.err = err
	}
	return n, err
}
