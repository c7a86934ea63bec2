// Package compress compresses whole buffers deterministically and
// decompresses streams, in the zstd and LZ4 frame formats the archive uses
// for WAL segments.
//
// Determinism matters because archived objects are written once
// (storage.PutOnce): compressing the same bytes again, after a crash or a
// retry, must give the same object, not a conflict. The output depends only
// on the input, the settings below and the versions of the compression
// libraries; a library upgrade may change it, which callers that rewrite an
// object must allow for (compare decompressed content, not compressed bytes).
//
// This package imports nothing else of barnacle. Its API is not stable:
// other modules may import it, but we make no compatibility promise.
package compress

import (
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// Algorithm names, as configuration spells them.
const (
	// None stores bytes as they are.
	None = "none"
	// Zstd is the Zstandard frame format (RFC 8878).
	Zstd = "zstd"
	// LZ4 is the LZ4 frame format
	// (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md).
	LZ4 = "lz4"
)

// Encoder settings, measured with BenchmarkCompressSegment (pkg/walstream)
// on real 16 MiB segments on the project's 2-core machine. The receiver
// compresses each segment in its receive loop, so compression must stay
// well ahead of ~50 MB/s of WAL while PostgreSQL, which makes that WAL, and
// the network use the same two cores.
//
//   - zstd SpeedFastest, not SpeedDefault. On pgbench WAL both run at
//     ~450-475 MB/s (ratio 10.4 against 11.5). On WAL of poorly
//     compressible rows (random text) SpeedDefault falls to ~140 MB/s on
//     an idle machine and ~80 MB/s on a busy one, too close to 50 MB/s;
//     SpeedFastest keeps ~270 MB/s (~150 busy) with a slightly better
//     ratio (2.30 against 2.26). Losing 10% of ratio on easy WAL is the
//     price of staying well ahead on hard WAL.
//   - zstd concurrency 2: the streaming encoder then entropy-codes one
//     block on the second core while it searches matches in the next,
//     1.5-1.7x faster than EncodeAll's single goroutine. Job-based
//     concurrency (WithConcurrentBlocks) gained nothing on 16 MiB inputs.
//   - zstd window 1 MiB: against the default 8 MiB it costs ~0.3% of ratio
//     on WAL and saves ~14 MiB of encoder memory; decoders need only a
//     1 MiB window too.
//   - LZ4 1 MiB blocks, compressed by 2 goroutines: about as fast as 4 MiB
//     blocks with less than half the buffer memory.
const (
	zstdLevel       = zstd.SpeedFastest
	zstdConcurrency = 2
	zstdWindow      = 1 << 20
	lz4Concurrency  = 2
	lz4BlockSize    = lz4.Block1Mb
)

// Encoder compresses whole buffers into one complete frame each. Its
// buffers are reused from call to call, so memory stays at one compressed
// output plus the compressor's own state. An Encoder is not safe for
// concurrent use.
type Encoder struct {
	algorithm string
	zstd      *zstd.Encoder
	lz4       *lz4.Writer
	out       bytes.Buffer
}

// NewEncoder returns an Encoder for algorithm (None, Zstd or LZ4).
func NewEncoder(algorithm string) (*Encoder, error) {
	e := &Encoder{algorithm: algorithm}
	switch algorithm {
	case None:
	case Zstd:
		zw, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstdLevel),
			zstd.WithEncoderConcurrency(zstdConcurrency),
			zstd.WithWindowSize(zstdWindow),
			zstd.WithEncoderCRC(true))
		if err != nil {
			return nil, fmt.Errorf("compress: new zstd encoder: %w", err)
		}
		e.zstd = zw
	case LZ4:
		lw := lz4.NewWriter(nil)
		if err := lw.Apply(
			lz4.ConcurrencyOption(lz4Concurrency),
			lz4.BlockSizeOption(lz4BlockSize),
			lz4.ChecksumOption(true),
		); err != nil {
			return nil, fmt.Errorf("compress: new lz4 encoder: %w", err)
		}
		e.lz4 = lw
	default:
		return nil, fmt.Errorf("compress: unknown algorithm %q (want %q, %q or %q)", algorithm, None, Zstd, LZ4)
	}
	return e, nil
}

// Algorithm returns the Encoder's algorithm.
func (e *Encoder) Algorithm() string { return e.algorithm }

// Compress returns src compressed as one complete frame (for None, src
// itself). The result is only valid until the next call to Compress: it
// lives in the Encoder's reused buffer. It is deterministic: the same src
// gives the same bytes (for the same library versions). It blocks while it
// compresses, using up to two goroutines that are done when it returns.
func (e *Encoder) Compress(src []byte) ([]byte, error) {
	e.out.Reset()
	switch e.algorithm {
	case None:
		return src, nil
	case Zstd:
		// The content size in the frame header lets a decoder check the
		// length and size its buffers.
		e.zstd.ResetContentSize(&e.out, int64(len(src)))
		_, err := e.zstd.Write(src)
		if cerr := e.zstd.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("compress: zstd: %w", err)
		}
	case LZ4:
		e.lz4.Reset(&e.out)
		_, err := e.lz4.Write(src)
		if cerr := e.lz4.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("compress: lz4: %w", err)
		}
	}
	return e.out.Bytes(), nil
}

// NewReader returns a reader of the bytes compressed in r with algorithm
// (None, Zstd or LZ4); concatenated frames are read one after the other.
// Corrupt input, including a frame whose checksum does not match, makes
// Read return an error. Close releases the decompressor; it does not close
// r. The reader decompresses in the calling goroutine and is not safe for
// concurrent use.
func NewReader(algorithm string, r io.Reader) (io.ReadCloser, error) {
	switch algorithm {
	case None:
		return io.NopCloser(r), nil
	case Zstd:
		// Concurrency 1 decodes in the caller's goroutine: restore reads
		// one segment at a time, and a reader abandoned without Close then
		// leaks nothing.
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("compress: new zstd decoder: %w", err)
		}
		return zstdReader{zr}, nil
	case LZ4:
		lr := lz4.NewReader(r)
		if err := lr.Apply(lz4.ConcurrencyOption(1)); err != nil {
			return nil, fmt.Errorf("compress: new lz4 decoder: %w", err)
		}
		return io.NopCloser(lz4Reader{lr}), nil
	default:
		return nil, fmt.Errorf("compress: unknown algorithm %q (want %q, %q or %q)", algorithm, None, Zstd, LZ4)
	}
}

type zstdReader struct{ d *zstd.Decoder }

func (z zstdReader) Read(p []byte) (int, error) {
	n, err := z.d.Read(p)
	if err != nil && err != io.EOF { //nolint:errorlint // io.EOF is returned unwrapped by contract
		err = fmt.Errorf("compress: zstd: %w", err)
	}
	return n, err
}

func (z zstdReader) Close() error {
	z.d.Close()
	return nil
}

type lz4Reader struct{ r *lz4.Reader }

func (l lz4Reader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if err != nil && err != io.EOF { //nolint:errorlint // io.EOF is returned unwrapped by contract
		err = fmt.Errorf("compress: lz4: %w", err)
	}
	return n, err
}
