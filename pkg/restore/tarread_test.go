package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// tarStep is what one Next and the reads after it returned.
type tarStep struct {
	hdr       string // the header's fields restore reads, or the error
	content   []byte
	readErr   string
	nextErr   bool
	eof       bool
	stopEarly bool
}

// tarSteps reads data with next and read (a tar.Reader's or a
// tarReader's), member by member; of every member with an odd index it
// reads only the first partial bytes, so that skipping the rest is
// compared too.
func tarSteps(data []byte, partial int, open func(io.Reader) (func() (*tar.Header, error), io.Reader)) []tarStep {
	next, r := open(bytes.NewReader(data))
	var steps []tarStep
	for i := 0; i < 10000; i++ {
		hdr, err := next()
		if err != nil {
			return append(steps, tarStep{hdr: err.Error(), nextErr: true, eof: errors.Is(err, io.EOF)})
		}
		s := tarStep{hdr: fmt.Sprintf("%q %q %q mode=%o size=%d uid=%d gid=%d mtime=%d sparse=%v",
			hdr.Typeflag, hdr.Name, hdr.Linkname, hdr.Mode, hdr.Size, hdr.Uid, hdr.Gid, hdr.ModTime.Unix(), isSparse(hdr))}
		if isSparse(hdr) {
			// The restore stops at a sparse member; archive/tar would
			// expand its holes and read on through its sparse map.
			return append(steps, s)
		}
		var content []byte
		if tr, ok := r.(*tarReader); ok && tr.lends() && i%2 == 0 {
			var buf bytes.Buffer
			_, err = tr.writeTo(context.Background(), &buf)
			content = buf.Bytes()
		} else if i%2 == 1 {
			content, err = io.ReadAll(io.LimitReader(r, int64(partial)))
			s.stopEarly = true
		} else {
			content, err = io.ReadAll(r)
		}
		s.content = content
		if err != nil {
			s.readErr = err.Error()
		}
		steps = append(steps, s)
	}
	return steps
}

func stdTar(r io.Reader) (func() (*tar.Header, error), io.Reader) {
	tr := tar.NewReader(r)
	return tr.Next, tr
}

func ownTar(r io.Reader) (func() (*tar.Header, error), io.Reader) {
	tr := newTarReader(r)
	return tr.Next, tr
}

// lendingReader lends pieces of at most chunk bytes of its data, as
// compress.FrameReader lends its frames.
type lendingReader struct {
	rest  []byte
	chunk int
}

func (l *lendingReader) Read(p []byte) (int, error) {
	b, err := l.Next(len(p))
	return copy(p, b), err
}

func (l *lendingReader) Next(n int) ([]byte, error) {
	if len(l.rest) == 0 {
		return nil, io.EOF
	}
	k := min(n, l.chunk, len(l.rest))
	b := l.rest[:k:k]
	l.rest = l.rest[k:]
	return b, nil
}

func (l *lendingReader) chunks() chunkReader { return l }

// checkTarAgrees fails when tarReader reads data differently from
// archive/tar, from a plain reader or from one that lends its buffers.
func checkTarAgrees(t *testing.T, data []byte, partial int) {
	t.Helper()
	want := tarSteps(data, partial, stdTar)
	compareTarSteps(t, tarSteps(data, partial, ownTar), want)
	compareTarSteps(t, tarSteps(data, partial, func(r io.Reader) (func() (*tar.Header, error), io.Reader) {
		all, _ := io.ReadAll(r)
		tr := newTarReader(&lendingReader{rest: all, chunk: 1 + partial%700})
		if !tr.lends() {
			t.Fatal("a lending reader is not used as one")
		}
		return tr.Next, tr
	}), want)
}

func compareTarSteps(t *testing.T, got, want []tarStep) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("tarReader read %d steps, archive/tar %d:\n%+v\n%+v", len(got), len(want), got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.nextErr != w.nextErr || g.eof != w.eof || (!g.nextErr && g.hdr != w.hdr) ||
			!bytes.Equal(g.content, w.content) || (g.readErr == "") != (w.readErr == "") {
			t.Fatalf("step %d: tarReader %+v, archive/tar %+v", i, g, w)
		}
	}
}

// tarSamples are archives in the forms restore meets and the ones
// tarReader leaves to archive/tar.
func tarSamples(t testing.TB) map[string][]byte {
	long := strings.Repeat("d/", 60) + "file"
	write := func(format tar.Format, hdrs ...*tar.Header) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range hdrs {
			h.Format = format
			if h.ModTime.IsZero() {
				h.ModTime = tarTime
			}
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg {
				if _, err := tw.Write(bytes.Repeat([]byte{byte(len(h.Name))}, int(h.Size))); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	members := func(prefixed string) []*tar.Header {
		return []*tar.Header{
			{Name: "base/", Typeflag: tar.TypeDir, Mode: 0o700},
			{Name: "base/1/16384", Typeflag: tar.TypeReg, Mode: 0o600, Size: 8192, Uid: 26, Gid: 26},
			{Name: "PG_VERSION", Typeflag: tar.TypeReg, Mode: 0o600, Size: 3},
			{Name: "empty", Typeflag: tar.TypeReg, Mode: 0o600},
			{Name: "pg_tblspc/16385", Typeflag: tar.TypeSymlink, Linkname: "/srv/ts", Mode: 0o777},
			{Name: "hard", Typeflag: tar.TypeLink, Linkname: "PG_VERSION"},
			{Name: prefixed, Typeflag: tar.TypeReg, Mode: 0o640, Size: 700},
		}
	}
	samples := map[string][]byte{
		"ustar":    write(tar.FormatUSTAR, members(strings.Repeat("p/", 40)+"file")...),
		"pax":      write(tar.FormatPAX, members(long)...),
		"gnu":      write(tar.FormatGNU, members(long)...),
		"pax time": write(tar.FormatPAX, &tar.Header{Name: "f", Typeflag: tar.TypeReg, Size: 5, ModTime: time.Unix(1, 5e8)}),
		"sparse":   paxSparseTar(1 << 20),
		"empty":    write(tar.FormatUSTAR),
	}
	// PostgreSQL's own headers (rawHeader writes them the same way).
	var pg []byte
	pg = append(pg, rawHeader("global/", tar.TypeDir, 0)...)
	pg = append(pg, rawHeader("global/pg_control", tar.TypeReg, 9)...)
	pg = append(pg, pad512([]byte("123456789"))...)
	samples["postgres"] = append(pg, make([]byte, 1024)...)
	return samples
}

func TestTarReaderAgrees(t *testing.T) {
	for name, data := range tarSamples(t) {
		t.Run(name, func(t *testing.T) {
			for _, partial := range []int{0, 1, 511, 512, 513} {
				checkTarAgrees(t, data, partial)
				// Cut short anywhere, and damaged anywhere.
				for cut := 0; cut < len(data); cut += 97 {
					checkTarAgrees(t, data[:cut], partial)
					bad := bytes.Clone(data)
					bad[cut] ^= 0x41
					checkTarAgrees(t, bad, partial)
				}
			}
		})
	}
	// The plain headers are the ones tarReader parses itself.
	if _, ok := parsePlainHeader((*[blockSize]byte)(rawHeader("base/1/1", tar.TypeReg, 1))); !ok {
		t.Fatal("a plain ustar header is not parsed by tarReader")
	}
}

func TestHeaderChecksums(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var b [blockSize]byte
	for i := range 2000 {
		for j := range b {
			switch i % 3 {
			case 0:
				b[j] = byte(rng.Uint32())
			case 1:
				b[j] = 0xff
			default:
				b[j] = byte(rng.Uint32() & 0x7f)
			}
		}
		var unsigned, signed int64
		for j, c := range b {
			if 148 <= j && j < 156 {
				c = ' '
			}
			unsigned += int64(c)
			signed += int64(int8(c))
		}
		if u, s := headerChecksums(&b); u != unsigned || s != signed {
			t.Fatalf("block %d: sums %d, %d; want %d, %d", i, u, s, unsigned, signed)
		}
	}
}

// FuzzTarReader: tarReader reads any bytes as archive/tar does.
func FuzzTarReader(f *testing.F) {
	for _, data := range tarSamples(f) {
		f.Add(data, uint16(1))
	}
	f.Fuzz(func(t *testing.T, data []byte, partial uint16) {
		checkTarAgrees(t, data, int(partial))
	})
}
