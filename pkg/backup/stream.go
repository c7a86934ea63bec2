package backup

import (
	"fmt"
	"io"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/barnacle-pg/barnacle/pkg/compress"
)

// Streaming encoder settings. They follow pkg/compress, whose comments give
// the measurements (zstd SpeedFastest and LZ4 keep well ahead of what
// PostgreSQL sends on the project's 2-core machine, with the second core
// compressing while the first searches), except for the zstd window: an
// archive is one long stream, not a 16 MiB segment, and an 8 MiB window
// finds the repeats between table pages that a 1 MiB one misses, for 7 MiB
// more encoder memory per archive being written (one at a time).
//
// Literals are stored without entropy (Huffman) coding: on table data the
// matches do nearly all the work (it costs about 0.5% in size on pgbench
// data), while on incompressible data, such as encrypted or already
// compressed columns, the encoder otherwise spends most of its time building
// Huffman tables it then throws away. Measured on the base backup benchmark
// (test/bench), the encoder runs about twice as fast with it.
const (
	zstdLevel       = zstd.SpeedFastest
	zstdConcurrency = 2
	zstdWindow      = 8 << 20
	lz4Concurrency  = 2
	lz4BlockSize    = lz4.Block1Mb
)

// checkCompression validates an Options.Compression value and returns its
// compress algorithm ("" means none).
func checkCompression(c string) (string, error) {
	switch c {
	case "", compress.None:
		return compress.None, nil
	case compress.Zstd, compress.LZ4:
		return c, nil
	}
	return "", fmt.Errorf("compression %q is not supported (want %q, %q or %q)", c, compress.None, compress.Zstd, compress.LZ4)
}

// suffix returns the object name suffix of algorithm, with its dot.
func suffix(algorithm string) string {
	switch algorithm {
	case compress.Zstd:
		return ".zst"
	case compress.LZ4:
		return ".lz4"
	}
	return ""
}

// algorithmOfName returns the compression of a stored archive, from its
// name's suffix.
func algorithmOfName(name string) string {
	switch {
	case strings.HasSuffix(name, ".zst"):
		return compress.Zstd
	case strings.HasSuffix(name, ".lz4"):
		return compress.LZ4
	}
	return compress.None
}

// newEncoder returns a writer that compresses into w with algorithm, or
// nil for compress.None. Close flushes the last frame into w (it does not
// close w) and ends the encoder's goroutines; it must be called also when
// the stream is abandoned.
func newEncoder(algorithm string, w io.Writer) (io.WriteCloser, error) {
	switch algorithm {
	case compress.None:
		return nil, nil
	case compress.Zstd:
		zw, err := zstd.NewWriter(w,
			zstd.WithEncoderLevel(zstdLevel),
			zstd.WithEncoderConcurrency(zstdConcurrency),
			zstd.WithWindowSize(zstdWindow),
			zstd.WithNoEntropyCompression(true),
			zstd.WithEncoderCRC(true))
		if err != nil {
			return nil, fmt.Errorf("new zstd encoder: %w", err)
		}
		return zw, nil
	case compress.LZ4:
		lw := lz4.NewWriter(w)
		if err := lw.Apply(
			lz4.ConcurrencyOption(lz4Concurrency),
			lz4.BlockSizeOption(lz4BlockSize),
			lz4.ChecksumOption(true),
		); err != nil {
			return nil, fmt.Errorf("new lz4 encoder: %w", err)
		}
		return lw, nil
	}
	return nil, fmt.Errorf("unknown compression %q", algorithm)
}
