package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"time"
)

// tarReader reads a tar stream as archive/tar's Reader does, member by
// member, with the same headers, contents and errors, but parses the
// plain ustar headers PostgreSQL's BASE_BACKUP writes itself: archive/tar
// spends most of its time on format detection a restore does not use (a
// scan of every header for non-ASCII bytes, for one), and on 121,000
// relation files its Next was a tenth of a restore's CPU, on the
// goroutine that creates the files (issue 21). A header it does not take
// to be plain (any other type or format, PAX or GNU extensions, binary
// numbers, a bad checksum, the end-of-archive blocks) is read, with its
// member, by an archive/tar Reader over that header and the rest of the
// stream, which reads no further than that member; the stream goes on
// with the next header after it.
type tarReader struct {
	r   io.Reader
	blk [blockSize]byte
	// nb is what is left of the current member's content, pad the
	// padding after it.
	nb, pad int64
	// slow, when not nil, is the archive/tar Reader reading the current
	// member; slowNB is the content that member has in the stream.
	slow   *tar.Reader
	slowNB int64
	// chunks, when not nil, is r lending its buffers: writeTo writes
	// content from them without a copy.
	chunks chunkReader
	// stuck is set after a member whose extent archive/tar alone knows
	// (a sparse one): reading on is refused.
	stuck bool
	err   error // sticky, as archive/tar's
}

const blockSize = 512

func newTarReader(r io.Reader) *tarReader {
	t := &tarReader{r: r}
	if c, ok := r.(interface{ chunks() chunkReader }); ok {
		t.chunks = c.chunks()
	}
	return t
}

// lends reports whether writeTo writes the current member's content
// without copying it.
func (t *tarReader) lends() bool { return t.chunks != nil && t.slow == nil && t.err == nil }

// writeTo writes the rest of the current member's content to w straight
// from the stream's buffers, checking ctx between pieces, with the
// result io.Copy(w, t) would have; only when lends.
func (t *tarReader) writeTo(ctx context.Context, w io.Writer) (int64, error) {
	var written int64
	for t.nb > 0 {
		if err := ctx.Err(); err != nil {
			return written, err
		}
		b, err := t.chunks.Next(int(min(t.nb, 1<<30)))
		t.nb -= int64(len(b))
		if len(b) > 0 {
			n, werr := w.Write(b)
			written += int64(n)
			if werr == nil && n < len(b) {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return written, werr
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // t.nb > 0: the stream ends inside the member
				if t.nb == 0 {
					err = nil
				}
			}
			if err != nil {
				t.err = err
				return written, err
			}
		}
	}
	return written, nil
}

// Next skips the rest of the current member and its padding, and reads
// the next member's header; io.EOF at the end of the archive.
func (t *tarReader) Next() (*tar.Header, error) {
	if t.err != nil {
		return nil, t.err
	}
	hdr, err := t.next()
	if err != nil {
		t.err = err
	}
	return hdr, err
}

func (t *tarReader) next() (*tar.Header, error) {
	if t.stuck {
		return nil, errors.New("archive/tar: cannot read past a sparse member")
	}
	if t.slow != nil {
		// The slow reader's member: its rest, then its padding, as
		// archive/tar's Next would skip them.
		if _, err := io.Copy(io.Discard, t.slow); err != nil {
			return nil, err
		}
		t.slow, t.pad = nil, blockPadding(t.slowNB)
	} else if err := discard(t.r, t.nb); err != nil {
		return nil, err
	}
	t.nb = 0
	if _, err := tryReadFull(t.r, t.blk[:t.pad]); err != nil {
		return nil, err
	}
	t.pad = 0
	if _, err := io.ReadFull(t.r, t.blk[:]); err != nil {
		return nil, err // io.EOF when exactly no byte was read, as archive/tar
	}
	if hdr, ok := parsePlainHeader(&t.blk); ok {
		if !headerOnly(hdr.Typeflag) {
			t.nb = hdr.Size
		}
		t.pad = blockPadding(t.nb)
		return hdr, nil
	}
	t.slow = tar.NewReader(io.MultiReader(bytes.NewReader(t.blk[:]), t.r))
	hdr, err := t.slow.Next()
	if err != nil {
		t.slow = nil
		return nil, err
	}
	t.slowNB = hdr.Size
	if headerOnly(hdr.Typeflag) {
		t.slowNB = 0
	}
	if isSparse(hdr) {
		t.stuck = true
	}
	return hdr, nil
}

// Read reads the current member's content, as tar.Reader's Read.
func (t *tarReader) Read(p []byte) (int, error) {
	if t.err != nil {
		return 0, t.err
	}
	if t.slow != nil {
		n, err := t.slow.Read(p)
		if err != nil && !errors.Is(err, io.EOF) {
			t.err = err
		}
		return n, err
	}
	if int64(len(p)) > t.nb {
		p = p[:t.nb]
	}
	var n int
	var err error
	if len(p) > 0 {
		n, err = t.r.Read(p)
		t.nb -= int64(n)
	}
	switch {
	case errors.Is(err, io.EOF) && t.nb > 0:
		err = io.ErrUnexpectedEOF
	case err == nil && t.nb == 0:
		err = io.EOF
	}
	if err != nil && !errors.Is(err, io.EOF) {
		t.err = err
	}
	return n, err
}

// headerOnly reports the types whose size archive/tar takes to be no
// content in the stream.
func headerOnly(typ byte) bool {
	switch typ {
	case tar.TypeLink, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
		return true
	}
	return false
}

func blockPadding(n int64) int64 { return -n & (blockSize - 1) }

// parsePlainHeader parses a POSIX ustar header of a regular file,
// directory, symbolic or hard link, with octal numbers and a right
// checksum, into what archive/tar's Reader would return for it (every
// field but Uname, Gname and Format). ok is false for any other block.
func parsePlainHeader(b *[blockSize]byte) (*tar.Header, bool) {
	switch b[156] {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
	default:
		return nil, false
	}
	// ustar magic (any version), and not star's trailer, which moves the
	// prefix field.
	if string(b[257:263]) != "ustar\x00" || string(b[508:512]) == "tar\x00" {
		return nil, false
	}
	sum, ok := plainOctal(b[148:156])
	if !ok {
		return nil, false
	}
	if unsigned, signed := headerChecksums(b); sum != unsigned && sum != signed {
		return nil, false
	}
	var nums [7]int64
	for i, f := range [7][2]int{{100, 108}, {108, 116}, {116, 124}, {124, 136}, {136, 148}, {329, 337}, {337, 345}} {
		if nums[i], ok = plainOctal(b[f[0]:f[1]]); !ok {
			return nil, false
		}
	}
	hdr := &tar.Header{
		Typeflag: b[156],
		Name:     cString(b[0:100]),
		Linkname: cString(b[157:257]),
		Mode:     nums[0],
		Uid:      int(nums[1]),
		Gid:      int(nums[2]),
		Size:     nums[3],
		ModTime:  time.Unix(nums[4], 0),
		// Uname and Gname are left empty: restore does not read them
		// (owners come from Options.Owner), and they were two strings
		// to allocate per file.
		Devmajor: nums[5],
		Devminor: nums[6],
	}
	if prefix := cString(b[345:500]); prefix != "" {
		hdr.Name = prefix + "/" + hdr.Name
	}
	return hdr, true
}

// headerChecksums returns the sums of b's bytes, unsigned and signed,
// with the checksum field counted as spaces, as archive/tar checks them.
// It adds eight bytes at a time, in lanes: byte by byte this was most of
// the time a header took.
func headerChecksums(b *[blockSize]byte) (unsigned, signed int64) {
	const lo16, lsb = 0x00ff00ff00ff00ff, 0x0101010101010101
	var pairs, high uint64
	for i := 0; i < blockSize; i += 8 {
		w := binary.LittleEndian.Uint64(b[i:])
		// Four 16-bit lanes of byte pairs (at most 64 * 510 each) and
		// eight 8-bit lanes counting the bytes >= 0x80 (at most 64).
		pairs += w&lo16 + w>>8&lo16
		high += w >> 7 & lsb
	}
	for range 4 {
		unsigned += int64(pairs & 0xffff)
		pairs >>= 16
	}
	var negative int64
	for range 8 {
		negative += int64(high & 0xff)
		high >>= 8
	}
	for _, c := range b[148:156] {
		unsigned += ' ' - int64(c)
		if c >= 0x80 {
			negative--
		}
	}
	return unsigned, unsigned - 256*negative
}

// cString is the bytes of b up to its first NUL, as archive/tar reads a
// string field.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// plainOctal reads a numeric field as archive/tar does (leading and
// trailing spaces and NULs ignored, then up to the first NUL; empty is
// 0) when it holds only octal digits; ok is false otherwise (binary
// numbers, garbage), for archive/tar to read or refuse.
func plainOctal(b []byte) (int64, bool) {
	for len(b) > 0 && (b[0] == ' ' || b[0] == 0) {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == 0) {
		b = b[:len(b)-1]
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	var x int64
	for _, c := range b {
		if c < '0' || c > '7' {
			return 0, false
		}
		x = x<<3 | int64(c-'0')
	}
	return x, true
}

// discard skips n bytes of r; a stream that ends sooner is
// io.ErrUnexpectedEOF, as in archive/tar.
func discard(r io.Reader, n int64) error {
	if n == 0 {
		return nil
	}
	k, err := io.CopyN(io.Discard, r, n)
	if errors.Is(err, io.EOF) && k < n {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// tryReadFull is archive/tar's: it reads len(b) bytes, and a stream that
// ends sooner returns io.EOF, however much was read.
func tryReadFull(r io.Reader, b []byte) (n int, err error) {
	for len(b) > n && err == nil {
		var nn int
		nn, err = r.Read(b[n:])
		n += nn
	}
	if len(b) == n && errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}
