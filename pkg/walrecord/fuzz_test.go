package walrecord_test

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"testing"

	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walrecord"
)

// synthSegment builds the start of segment 1 (1 MB segments): a long page
// header and one restore point record per name, linked by xl_prev, with
// valid CRCs. The rest is what PostgreSQL leaves after its last write:
// nothing (the caller may pad with zeros).
func synthSegment(names ...string) []byte {
	start := wal.SegmentStart(1, segSize)
	b := make([]byte, 40)
	binary.LittleEndian.PutUint16(b[0:], walrecord.PageMagic)
	binary.LittleEndian.PutUint16(b[2:], 0x02) // XLP_LONG_HEADER
	binary.LittleEndian.PutUint32(b[4:], 1)
	binary.LittleEndian.PutUint64(b[8:], uint64(start))
	binary.LittleEndian.PutUint64(b[24:], 7)
	binary.LittleEndian.PutUint32(b[32:], segSize)
	binary.LittleEndian.PutUint32(b[36:], walrecord.PageSize)
	prev := wal.LSN(0)
	for _, name := range names {
		main := make([]byte, 72)
		binary.LittleEndian.PutUint64(main, 123456)
		copy(main[8:], name)
		rec := make([]byte, 24, 24+2+len(main))
		rec = append(rec, 255, byte(len(main)))
		rec = append(rec, main...)
		binary.LittleEndian.PutUint32(rec[0:], uint32(len(rec)))
		binary.LittleEndian.PutUint64(rec[8:], uint64(prev))
		rec[16] = walrecord.XLOGRestorePoint
		rec[17] = walrecord.RMXLOG
		tab := crc32.MakeTable(crc32.Castagnoli)
		crc := crc32.Update(crc32.Update(0, tab, rec[24:]), tab, rec[:20])
		binary.LittleEndian.PutUint32(rec[20:], crc)
		prev = start + wal.LSN(len(b))
		b = append(b, rec...)
		for len(b)%8 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

func readAll(data []byte, limit int) (names []string, err error) {
	r, err := walrecord.NewReader(walrecord.Options{SegmentSize: segSize, Open: opener(map[wal.SegmentNo][]byte{1: data})},
		wal.SegmentStart(1, segSize))
	if err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		if i > limit {
			return names, errors.New("the reader does not stop")
		}
		rec, err := r.Next()
		if err != nil {
			return names, err
		}
		if n, _, ok := rec.RestorePoint(); ok {
			names = append(names, n)
		}
	}
}

// TestReaderSynthetic reads hand-built WAL: the records, then the end at
// the zeros after them, also when the segment is a .partial.
func TestReaderSynthetic(t *testing.T) {
	seg := synthSegment("one", "two")
	for _, data := range [][]byte{seg, append(seg, make([]byte, 4096)...)} {
		names, err := readAll(data, 10)
		if !errors.Is(err, io.EOF) || len(names) != 2 || names[0] != "one" || names[1] != "two" {
			t.Fatalf("got %q, %v; want [one two] and io.EOF", names, err)
		}
	}
	bad := append([]byte(nil), seg...)
	bad[60] ^= 0x80
	var ce *walrecord.CorruptError
	if _, err := readAll(bad, 10); !errors.As(err, &ce) || ce.LSN != wal.SegmentStart(1, segSize)+40 {
		t.Fatalf("got %v, want a corruption at the first record", err)
	}
}

// FuzzReader checks that arbitrary bytes as a segment never make the
// reader panic or loop: each record takes at least 24 bytes, so it must
// stop within len(data)/24 records and a few ends.
func FuzzReader(f *testing.F) {
	f.Add(synthSegment("a"))
	f.Add(synthSegment("a", "b")[:100])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > segSize {
			data = data[:segSize]
		}
		_, err := readAll(data, len(data)/24+2)
		if err != nil && err.Error() == "the reader does not stop" {
			t.Fatal(err)
		}
	})
}
