package testenv

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Gate drops the bytes of its connections while it is cut, and closes
// the connections that lived through a cut when it is restored (their
// streams lost bytes). While open it may hold every byte for a delay in
// each direction, as a slow network or a busy machine does.
type Gate struct {
	mu     sync.Mutex
	down   bool
	delay  time.Duration
	doomed []net.Conn
}

// NewGate returns an open gate.
func NewGate() *Gate { return &Gate{} }

// Set cuts the gate (down) or restores it.
func (g *Gate) Set(down bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.down = down
	if !down {
		for _, c := range g.doomed {
			c.Close()
		}
		g.doomed = nil
	}
}

// SetDelay holds the bytes that pass from now on for d in each direction.
func (g *Gate) SetDelay(d time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.delay = d
}

func (g *Gate) currentDelay() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.delay
}

func (g *Gate) isDown(c ...net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.down {
		g.doomed = append(g.doomed, c...)
	}
	return g.down
}

// ServeGated forwards the connections ln accepts to what dial returns,
// through g, until ln is closed.
func ServeGated(ln net.Listener, g *Gate, dial func() (net.Conn, error)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			if g.isDown(c) {
				// Hold the connection without a byte until the link is back.
				_, _ = io.Copy(io.Discard, c)
				c.Close()
				return
			}
			u, err := dial()
			if err != nil {
				c.Close()
				return
			}
			go pipeGated(u, c, g)
			pipeGated(c, u, g)
		}()
	}
}

// pipeGated copies src to dst, dropping what it reads while g is cut and
// holding what it passes for g's delay, in order.
func pipeGated(dst, src net.Conn, g *Gate) {
	type held struct {
		due   time.Time
		bytes []byte
	}
	line := make(chan held, 256)
	written := make(chan struct{})
	go func() {
		defer close(written)
		for h := range line {
			time.Sleep(time.Until(h.due))
			if _, err := dst.Write(h.bytes); err != nil {
				src.Close() // ends the reader below
				for range line {
				}
				return
			}
		}
	}()
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 && !g.isDown(src, dst) {
			line <- held{due: time.Now().Add(g.currentDelay()), bytes: buf[:n]}
		}
		if err != nil {
			break
		}
	}
	close(line)
	<-written
	dst.Close()
	src.Close()
}

// GatedClient returns a client of the server whose connections pass
// through the returned gate, to cut it off from etcd (and restore it)
// while the server and other clients go on. Both are closed in t.Cleanup.
func (e *Etcd) GatedClient(t testing.TB) (*clientv3.Client, *Gate) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("gate listener: %v", err)
	}
	g := NewGate()
	target := e.clientURL.Host
	go ServeGated(ln, g, func() (net.Conn, error) { return net.DialTimeout("tcp", target, time.Second) })
	t.Cleanup(func() {
		g.Set(false)
		_ = ln.Close()
	})
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"http://" + ln.Addr().String()},
		DialTimeout: 5 * time.Second,
		Logger:      NopZapLogger(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli, g
}
