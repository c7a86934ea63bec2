package walstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/compress"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Options.Compression values, as configuration spells them.
const (
	// CompressionNone stores segments as PostgreSQL wrote them.
	CompressionNone = compress.None
	// CompressionZstd stores complete segments zstd-compressed, as
	// "<segment>.zst".
	CompressionZstd = compress.Zstd
	// CompressionLZ4 stores complete segments in the LZ4 frame format, as
	// "<segment>.lz4".
	CompressionLZ4 = compress.LZ4
)

// segmentSuffixes are the name suffixes (wal.Compression*, "" for none)
// under which a complete segment may be archived; a segment is archived
// under one of them only.
var segmentSuffixes = []string{"", wal.CompressionZstd, wal.CompressionLZ4}

// algorithmOf maps an Options.Compression value or a wal.Compression*
// name suffix to a compress algorithm.
func algorithmOf(compression string) (string, error) {
	switch compression {
	case "", CompressionNone:
		return compress.None, nil
	case CompressionZstd, wal.CompressionZstd:
		return compress.Zstd, nil
	case CompressionLZ4: // also wal.CompressionLZ4
		return compress.LZ4, nil
	}
	return "", fmt.Errorf("walstream: unknown compression %q", compression)
}

// suffixOf returns the name suffix, with its dot, for a compress algorithm.
func suffixOf(algorithm string) string {
	switch algorithm {
	case compress.Zstd:
		return "." + wal.CompressionZstd
	case compress.LZ4:
		return "." + wal.CompressionLZ4
	}
	return ""
}

// FindSegment returns the object that holds the complete segment file (a
// segment file name such as "000000010000000000000005") under prefix,
// whatever its compression: "<prefix><file>", ".zst" or ".lz4", tried in
// that order with Stat. The receiver never archives a segment under two of
// these names. It returns an error wrapping storage.ErrNotExist when none
// exists. Open the result with catalog.OpenSegment.
func FindSegment(ctx context.Context, b storage.Backend, prefix, file string) (storage.ObjectInfo, error) {
	copies, err := segmentCopies(ctx, b, prefix, file)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	if len(copies) == 0 {
		return storage.ObjectInfo{}, fmt.Errorf("find segment %s%s: %w", prefix, file, storage.ErrNotExist)
	}
	return copies[0], nil
}

// segmentCopies returns the objects that hold the complete segment file
// under prefix, in segmentSuffixes order: normally none or one.
func segmentCopies(ctx context.Context, b storage.Backend, prefix, file string) ([]storage.ObjectInfo, error) {
	var copies []storage.ObjectInfo
	for _, suffix := range segmentSuffixes {
		name := prefix + file
		if suffix != "" {
			name += "." + suffix
		}
		info, err := b.Stat(ctx, name)
		if errors.Is(err, storage.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("stat %s: %w", name, err)
		}
		copies = append(copies, info)
	}
	return copies, nil
}

// compareChunk is how much of an archived segment sameSegment reads at a
// time: it compares as it reads, so that checking an archived copy costs no
// second segment-sized buffer.
const compareChunk = 256 << 10

// sameSegment reports whether the archived object name holds want once
// decompressed. An object that cannot be read whole because its bytes are
// damaged, that has no stored checksum or whose compressed data is corrupt
// is not the same; other storage errors are returned.
func sameSegment(ctx context.Context, b storage.Backend, name string, want []byte) (bool, error) {
	sr, err := catalog.OpenSegment(ctx, b, name)
	if errors.Is(err, storage.ErrNoChecksum) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer sr.Close()
	buf := make([]byte, compareChunk)
	off := 0
	for {
		n, err := io.ReadFull(sr, buf)
		if n > 0 {
			if off+n > len(want) || !bytes.Equal(buf[:n], want[off:off+n]) {
				return false, nil
			}
			off += n
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return off == len(want), nil
		}
		if err != nil {
			if raw := sr.StorageErr(); raw != nil && !errors.Is(raw, storage.ErrChecksum) {
				return false, err // the backend failed: try again later
			}
			return false, nil
		}
	}
}

// storeSegment archives the full in-memory segment, compressed as
// configured, under its name for that compression. If the archive already
// holds the segment under any of its names (written before a crash, or by
// a run with another compression) nothing is written, so that a segment
// never has two copies, and existed is true. The check compares content,
// not compressed bytes: a compressor of another version may compress the
// same WAL differently. A copy with other content is a conflict: the new
// bytes are stored aside by storage.PutOnce and the error is a
// *storage.ConflictError.
func (s *stream) storeSegment(ctx context.Context, file string) (existed bool, err error) {
	b, prefix := s.r.opts.Backend, s.r.opts.Prefix
	data, err := s.r.encoder.Compress(s.buf)
	if err != nil {
		return false, err
	}
	name := s.r.segmentObject(file)
	copies, err := segmentCopies(ctx, b, prefix, file)
	if err != nil {
		return false, err
	}
	if len(copies) == 0 {
		return storage.PutOnce(ctx, b, name, data)
	}
	for _, c := range copies {
		if c.Name == name && c.Size == int64(len(data)) && storage.Matches(c.Checksum, data) {
			continue
		}
		same, err := sameSegment(ctx, b, c.Name, s.buf)
		if err != nil {
			return true, fmt.Errorf("compare with archived %s: %w", c.Name, err)
		}
		if !same {
			return true, s.conflict(ctx, c.Name)
		}
	}
	s.log.Debug("segment already archived", "segment", file, "objects", len(copies))
	return true, nil
}

// conflict stores the in-memory segment aside next to name, an archived
// copy of it with other content, compressed like name, and returns
// PutOnce's *storage.ConflictError; for a damaged copy it returns an error
// wrapping storage.ErrConflict.
func (s *stream) conflict(ctx context.Context, name string) error {
	_, _, comp := wal.SplitFileName(path.Base(name))
	alg, err := algorithmOf(comp)
	if err != nil {
		return err
	}
	enc := s.r.encoder
	if alg != enc.Algorithm() {
		if enc, err = compress.NewEncoder(alg); err != nil {
			return err
		}
	}
	data, err := enc.Compress(s.buf)
	if err != nil {
		return err
	}
	if _, err := storage.PutOnce(ctx, s.r.opts.Backend, name, data); err != nil {
		return err
	}
	// PutOnce found name stored with the checksum of exactly these bytes,
	// yet it did not read back as them: the stored bytes are damaged (or
	// were replaced while we compared). An operator must look; the WAL is
	// still on the server, which has not been told it is archived.
	return fmt.Errorf("archived %s does not read back as the bytes its stored checksum names: %w", name, storage.ErrConflict)
}
