package backup

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBufferedPipe(t *testing.T) {
	// More than all buffers hold, in writes of odd sizes, so that the
	// writer waits for the reader and writes straddle buffers.
	data := make([]byte, pipeBuffers*pipeBufferSize*2+12345)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.IntN(256))
	}
	writeAll := func(p *bufferedPipe) error {
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 1+r.IntN(70000))
			if _, err := p.Write(rest[:n]); err != nil {
				return err
			}
			rest = rest[n:]
		}
		return nil
	}
	boom := errors.New("boom")

	for _, tc := range []struct {
		name string
		run  func(t *testing.T, p *bufferedPipe)
	}{
		{name: "all bytes in order, then EOF", run: func(t *testing.T, p *bufferedPipe) {
			errc := make(chan error, 1)
			go func() {
				err := writeAll(p)
				errc <- errors.Join(err, p.Close())
			}()
			got, err := io.ReadAll(pipeReader{p})
			require.NoError(t, err)
			require.NoError(t, <-errc)
			assert.True(t, bytes.Equal(data, got), "the bytes read are the bytes written")
		}},
		{name: "empty", run: func(t *testing.T, p *bufferedPipe) {
			require.NoError(t, p.Close())
			got, err := io.ReadAll(pipeReader{p})
			require.NoError(t, err)
			assert.Empty(t, got)
		}},
		{name: "writer's error reaches the reader", run: func(t *testing.T, p *bufferedPipe) {
			go func() {
				_, _ = p.Write(data[:100])
				p.CloseWithError(boom)
			}()
			_, err := io.ReadAll(pipeReader{p})
			assert.ErrorIs(t, err, boom)
		}},
		{name: "reader's close fails a blocked writer", run: func(t *testing.T, p *bufferedPipe) {
			errc := make(chan error, 1)
			go func() { errc <- writeAll(p) }()
			buf := make([]byte, 1000)
			_, err := io.ReadFull(pipeReader{p}, buf)
			require.NoError(t, err)
			p.CloseReader(boom)
			assert.ErrorIs(t, <-errc, boom)
			assert.ErrorIs(t, p.Close(), boom, "the unsent rest cannot be queued")
		}},
		{name: "abort from another goroutine releases a blocked writer", run: func(t *testing.T, p *bufferedPipe) {
			errc := make(chan error, 1)
			go func() { errc <- writeAll(p) }() // blocks once every buffer is full
			p.CloseWithError(boom)
			assert.ErrorIs(t, <-errc, io.ErrClosedPipe)
			_, err := io.ReadAll(pipeReader{p})
			assert.ErrorIs(t, err, boom)
		}},
		{name: "WriteTo: all bytes in order, after a Read", run: func(t *testing.T, p *bufferedPipe) {
			errc := make(chan error, 1)
			go func() {
				err := writeAll(p)
				errc <- errors.Join(err, p.Close())
			}()
			head := make([]byte, 777)
			_, err := io.ReadFull(pipeReader{p}, head)
			require.NoError(t, err)
			var rest bytes.Buffer
			n, err := pipeReader{p}.WriteTo(&rest)
			require.NoError(t, err)
			require.NoError(t, <-errc)
			assert.Equal(t, int64(len(data)-len(head)), n)
			assert.True(t, bytes.Equal(data, append(head, rest.Bytes()...)), "the bytes read are the bytes written")
		}},
		{name: "WriteTo: writer's error reaches it", run: func(t *testing.T, p *bufferedPipe) {
			go func() {
				_, _ = p.Write(data[:100])
				p.CloseWithError(boom)
			}()
			_, err := pipeReader{p}.WriteTo(io.Discard)
			assert.ErrorIs(t, err, boom)
		}},
		{name: "WriteTo: destination's error ends it", run: func(t *testing.T, p *bufferedPipe) {
			errc := make(chan error, 1)
			go func() { errc <- writeAll(p) }()
			_, err := pipeReader{p}.WriteTo(failingDest{boom})
			assert.ErrorIs(t, err, boom)
			p.CloseReader(err) // as upload does when Put returns
			assert.ErrorIs(t, <-errc, boom)
		}},
		{name: "reader closed without error", run: func(t *testing.T, p *bufferedPipe) {
			p.CloseReader(nil)
			assert.ErrorIs(t, writeAll(p), io.ErrClosedPipe)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, newBufferedPipe()) })
	}
}

type failingDest struct{ err error }

func (f failingDest) Write([]byte) (int, error) { return 0, f.err }
