package backup

import (
	"fmt"
	"io"
	"strings"

	"github.com/pierrec/lz4/v4"

	"github.com/barnacle-pg/barnacle/pkg/compress"
)

// Streaming encoder settings. zstd archives are written by
// compress.FrameWriter: independent 4 MiB frames compressed on zstdWorkers
// goroutines (its comments give the measurements), with zstd SpeedFastest
// and literals stored without entropy (Huffman) coding: on table data the
// matches do nearly all the work (it costs about 0.5% in size on pgbench
// data), while on incompressible data, such as encrypted or already
// compressed columns, the encoder otherwise spends most of its time
// building Huffman tables it then throws away (about twice as fast with
// it on the base backup benchmark, test/bench). LZ4 follows pkg/compress:
// 1 MiB blocks compressed by 2 goroutines.
//
// Neither format carries a content checksum (zstd's XXH64, LZ4's XXH32),
// as pg_basebackup's client compression writes them: the stored object's
// checksum is verified on every read and every file inside against the
// server's backup_manifest, so a third checksum only cost CPU (2% of a
// zstd backup's samples).
const (
	zstdWorkers    = 2
	lz4Concurrency = 2
	lz4BlockSize   = lz4.Block1Mb
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
		zw, err := compress.NewFrameWriter(w, zstdWorkers)
		if err != nil {
			return nil, err
		}
		return zw, nil
	case compress.LZ4:
		lw := lz4.NewWriter(w)
		if err := lw.Apply(
			lz4.ConcurrencyOption(lz4Concurrency),
			lz4.BlockSizeOption(lz4BlockSize),
			lz4.ChecksumOption(false),
		); err != nil {
			return nil, fmt.Errorf("new lz4 encoder: %w", err)
		}
		return lw, nil
	}
	return nil, fmt.Errorf("unknown compression %q", algorithm)
}
