package backup

import (
	"io"
	"sync"
)

// Buffering between the backup stream and Backend.Put. The server sends
// archives in CopyData messages of about 32 KiB; passing each through an
// io.Pipe makes the receiving goroutine wait, message by message, until Put
// has taken it, and Put write and hash 32 KiB at a time. On the project's
// 2-core machine, where the walsender needs one core, that lock-step cost
// about half the uncompressed rate of pg_basebackup. With a queue of a few
// large buffers the receiver copies a message and goes back to the socket
// while Put writes and hashes whole mebibytes. The memory is bounded:
// pipeBuffers * pipeBufferSize per object being stored (one at a time).
const (
	pipeBufferSize = 1 << 20
	pipeBuffers    = 4
)

// bufferedPipe is a pipe whose writer does not wait for the reader until
// pipeBuffers buffers are full. Like io.Pipe, the reader gets the bytes in
// order, then io.EOF after Close or the error given to the writer's
// CloseWithError, and writes fail once the reader has closed.
//
// Writes and Close must not be concurrent (a compressor may write from its
// own goroutine, one at a time); CloseWithError may come from any goroutine
// at any time and makes a blocked Write return. One goroutine reads and
// closes the reader side.
type bufferedPipe struct {
	full chan []byte // filled buffers, closed by the writer
	free chan []byte // drained buffers, back to the writer

	// Writer side, under mu.
	mu     sync.Mutex
	cur    []byte // the buffer being filled, nil if none
	closed bool
	// abort is closed by CloseWithError, after werr is set.
	abort     chan struct{}
	abortOnce sync.Once

	// Reader side.
	rcur []byte // the buffer being drained
	rbuf []byte // its unread part

	// werr is the writer's closing error (nil for io.EOF), set before full
	// is closed; rerr the reader's, set before done is closed.
	werr     error
	rerr     error
	done     chan struct{}
	doneOnce sync.Once
}

func newBufferedPipe() *bufferedPipe {
	p := &bufferedPipe{
		full:  make(chan []byte, pipeBuffers),
		free:  make(chan []byte, pipeBuffers),
		done:  make(chan struct{}),
		abort: make(chan struct{}),
	}
	for range pipeBuffers {
		p.free <- nil // allocated when first used: a small object needs one
	}
	return p
}

// Write copies b into the pipe's buffers, blocking only while all are full
// and the reader has not closed. It fails with the reader's error once the
// reader has closed.
func (p *bufferedPipe) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, io.ErrClosedPipe
	}
	n := 0
	for len(b) > 0 {
		if p.cur == nil {
			select {
			case buf := <-p.free:
				if buf == nil {
					buf = make([]byte, 0, pipeBufferSize)
				}
				p.cur = buf[:0]
			case <-p.done:
				return n, p.rerr
			case <-p.abort:
				return n, io.ErrClosedPipe
			}
		}
		k := copy(p.cur[len(p.cur):cap(p.cur)], b)
		p.cur = p.cur[:len(p.cur)+k]
		b, n = b[k:], n+k
		if len(p.cur) == cap(p.cur) {
			if err := p.send(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// send queues the buffer being filled; p.mu is held.
func (p *bufferedPipe) send() error {
	select {
	case p.full <- p.cur:
		p.cur = nil
		return nil
	case <-p.done:
		return p.rerr
	case <-p.abort:
		return io.ErrClosedPipe
	}
}

// Close queues what was written and ends the stream: the reader gets
// io.EOF after the last byte. It fails with the reader's error if the
// reader closed first.
func (p *bufferedPipe) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	var err error
	if len(p.cur) > 0 {
		err = p.send()
	}
	p.closed = true
	close(p.full)
	if err == nil {
		select {
		case <-p.done:
			err = p.rerr
		default:
		}
	}
	return err
}

// CloseWithError ends the stream with err: the reader gets err once it has
// read the buffers already queued; what was not queued yet is dropped, and
// a Write blocked meanwhile, or any later one, fails with io.ErrClosedPipe.
// It has no effect after Close or a first CloseWithError.
func (p *bufferedPipe) CloseWithError(err error) {
	if err == nil {
		err = io.EOF
	}
	p.abortOnce.Do(func() { close(p.abort) }) // releases a blocked Write, which holds mu
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.werr, p.closed, p.cur = err, true, nil
	close(p.full)
}

// Read implements io.Reader for the reader side.
func (p *bufferedPipe) Read(b []byte) (int, error) {
	if len(p.rbuf) == 0 {
		if p.rcur != nil {
			p.free <- p.rcur[:0] // never blocks: at most pipeBuffers exist
			p.rcur = nil
		}
		buf, ok := <-p.full
		if !ok {
			if p.werr != nil {
				return 0, p.werr
			}
			return 0, io.EOF
		}
		p.rcur, p.rbuf = buf, buf
	}
	k := copy(b, p.rbuf)
	p.rbuf = p.rbuf[k:]
	return k, nil
}

// CloseReader ends the reader side: the writer's pending and later writes
// fail with err (io.ErrClosedPipe when nil).
func (p *bufferedPipe) CloseReader(err error) {
	p.doneOnce.Do(func() {
		if err == nil {
			err = io.ErrClosedPipe
		}
		p.rerr = err
		close(p.done)
	})
}

// WriteTo implements io.WriterTo for the reader side: it hands each
// buffer to w as it is, without the copy into the caller's buffer that
// Read makes (a gigabyte-sized archive otherwise costs a second memmove of
// all its bytes), and returns nil at the writer's Close.
func (p *bufferedPipe) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if len(p.rbuf) > 0 {
			n, err := w.Write(p.rbuf)
			total += int64(n)
			p.rbuf = p.rbuf[n:]
			if err != nil {
				return total, err
			}
		}
		if p.rcur != nil {
			p.free <- p.rcur[:0] // never blocks: at most pipeBuffers exist
			p.rcur = nil
		}
		buf, ok := <-p.full
		if !ok {
			return total, p.werr
		}
		p.rcur, p.rbuf = buf, buf
	}
}

// pipeReader is the reader side as an io.Reader and io.WriterTo only, so
// that Put sees neither the writer's methods nor a Close.
type pipeReader struct{ p *bufferedPipe }

func (r pipeReader) Read(b []byte) (int, error) { return r.p.Read(b) }

func (r pipeReader) WriteTo(w io.Writer) (int64, error) { return r.p.WriteTo(w) }
