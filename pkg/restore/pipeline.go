package restore

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// Large files are copied through two goroutines: the unpacker's reads the
// next buffer out of the archive (decompressed, through tar) while another
// writes the previous one into the file. Copied in one goroutine, reading
// and writing take turns, and on a 2-core machine the unpacker's goroutine
// is the one that bounds a restore: the read-ahead has already decompressed
// and verified the bytes. Small files, thousands of them in a data
// directory, are not worth a goroutine each.
const (
	pipelineMinSize = 4 << 20
	pipelineBuffers = 3
)

// pipelineSets pools sets of pipelineBuffers buffers of copyBufferSize, one
// set per file being copied, so that a restore allocates them once per
// archive it unpacks at the same time.
var pipelineSets = sync.Pool{New: func() any {
	set := make([][]byte, pipelineBuffers)
	for i := range set {
		set[i] = make([]byte, copyBufferSize)
	}
	return &set
}}

// copyPipelined copies r to w like io.Copy, reading on the calling
// goroutine and writing on another, with up to pipelineBuffers buffers in
// between. It returns the bytes written and the first error of either side
// (a read error first); after an error it stops reading and writes nothing
// more.
func copyPipelined(w io.Writer, r io.Reader) (int64, error) {
	set := pipelineSets.Get().(*[][]byte) //nolint:forcetypeassert // the pool holds nothing else
	defer pipelineSets.Put(set)
	free := make(chan []byte, len(*set))
	full := make(chan []byte, len(*set))
	for _, b := range *set {
		free <- b
	}

	var (
		written  int64
		writeErr atomic.Pointer[error]
		done     = make(chan struct{})
	)
	go func() {
		defer close(done)
		for b := range full {
			if writeErr.Load() == nil {
				n, err := w.Write(b)
				written += int64(n)
				if err == nil && n < len(b) {
					err = io.ErrShortWrite
				}
				if err != nil {
					writeErr.Store(&err)
				}
			}
			free <- b[:cap(b)]
		}
	}()

	var readErr error
	for writeErr.Load() == nil {
		b := <-free
		n, err := fill(r, b)
		if n > 0 {
			full <- b[:n]
		} else {
			free <- b
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			readErr = err
			break
		}
	}
	close(full)
	<-done // every buffer is back in free, none in use
	if readErr != nil {
		return written, readErr
	}
	if p := writeErr.Load(); p != nil {
		return written, *p
	}
	return written, nil
}

// fill reads into b until it is full or r fails. Unlike io.ReadFull it
// passes io.EOF on as it is and never turns it into io.ErrUnexpectedEOF,
// so that a tar stream that ends inside a file (which tar reports as
// io.ErrUnexpectedEOF) stays an error.
func fill(r io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := r.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
