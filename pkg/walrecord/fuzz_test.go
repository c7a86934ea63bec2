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
		rec.XactEnd() // must not panic on any main data
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

// walWriter lays records out in the pages of segment 1 (1 MB segments) as
// PostgreSQL does: page headers, continuation flags and lengths, MAXALIGN.
type walWriter struct {
	b    []byte
	prev wal.LSN
}

func (w *walWriter) lsn() wal.LSN { return wal.SegmentStart(1, segSize) + wal.LSN(len(w.b)) }

// header writes the page header at a page boundary; rem is what is left
// of a record continued onto the page.
func (w *walWriter) header(info uint16, rem uint32) {
	size := 24
	if len(w.b) == 0 {
		info |= 0x02
		size = 40
	}
	h := make([]byte, size)
	binary.LittleEndian.PutUint16(h[0:], walrecord.PageMagic)
	binary.LittleEndian.PutUint16(h[2:], info)
	binary.LittleEndian.PutUint32(h[4:], 1)
	binary.LittleEndian.PutUint64(h[8:], uint64(w.lsn()))
	binary.LittleEndian.PutUint32(h[16:], rem)
	if size == 40 {
		binary.LittleEndian.PutUint64(h[24:], 7)
		binary.LittleEndian.PutUint32(h[32:], segSize)
		binary.LittleEndian.PutUint32(h[36:], walrecord.PageSize)
	}
	w.b = append(w.b, h...)
}

// record builds a record of rmid and info with main data, linked to the
// previous one, with its CRC.
func (w *walWriter) record(rmid, info uint8, main []byte) []byte {
	rec := make([]byte, 24)
	if len(main) < 256 {
		rec = append(rec, 255, byte(len(main)))
	} else {
		rec = append(rec, 254, 0, 0, 0, 0)
		binary.LittleEndian.PutUint32(rec[25:], uint32(len(main)))
	}
	rec = append(rec, main...)
	binary.LittleEndian.PutUint32(rec[0:], uint32(len(rec)))
	binary.LittleEndian.PutUint64(rec[8:], uint64(w.prev))
	rec[16], rec[17] = info, rmid
	tab := crc32.MakeTable(crc32.Castagnoli)
	binary.LittleEndian.PutUint32(rec[20:], crc32.Update(crc32.Update(0, tab, rec[24:]), tab, rec[:20]))
	return rec
}

// write lays rec out from the current position and returns its start;
// with cut, it stops at the first page boundary inside it (a record
// broken off by a crash).
func (w *walWriter) write(rec []byte, cut bool) wal.LSN {
	if len(w.b)%walrecord.PageSize == 0 {
		w.header(0, 0)
	}
	start := w.lsn()
	for len(rec) > 0 {
		if len(w.b)%walrecord.PageSize == 0 {
			if cut {
				return start
			}
			w.header(0x01, uint32(len(rec)))
		}
		n := min(len(rec), walrecord.PageSize-len(w.b)%walrecord.PageSize)
		w.b = append(w.b, rec[:n]...)
		rec = rec[n:]
	}
	for len(w.b)%8 != 0 {
		w.b = append(w.b, 0)
	}
	w.prev = start
	return start
}

func restorePointData(name string) []byte {
	main := make([]byte, 72)
	copy(main[8:], name)
	return main
}

// TestReaderPageLayout reads records whose header is cut by a page end,
// records across several pages, and a record broken off by a crash and
// overwritten (XLP_FIRST_IS_OVERWRITE_CONTRECORD).
func TestReaderPageLayout(t *testing.T) {
	w := &walWriter{}
	// 40 + 8144 = 8184: the next record has 8 bytes of its header on the
	// first page.
	filler := w.write(w.record(21, 0, make([]byte, 8144-29)), false)
	split := w.write(w.record(walrecord.RMXLOG, walrecord.XLOGRestorePoint, restorePointData("split")), false)
	if wal.SegmentOffset(split, segSize) != walrecord.PageSize-8 {
		t.Fatalf("the split record starts at offset %d", wal.SegmentOffset(split, segSize))
	}
	long := w.write(w.record(21, 0, make([]byte, 3*walrecord.PageSize)), false)
	before := w.lsn()
	w.write(w.record(21, 0, make([]byte, walrecord.PageSize)), true)
	for len(w.b)%walrecord.PageSize != 0 {
		w.b = append(w.b, 0)
	}
	w.header(0x08, 0) // XLP_FIRST_IS_OVERWRITE_CONTRECORD
	w.prev = before
	over := w.write(w.record(walrecord.RMXLOG, walrecord.XLOGRestorePoint, restorePointData("after-overwrite")), false)

	r, err := walrecord.NewReader(walrecord.Options{SegmentSize: segSize, Open: opener(map[wal.SegmentNo][]byte{1: w.b})}, wal.SegmentStart(1, segSize))
	if err != nil {
		t.Fatal(err)
	}
	var got []wal.LSN
	var names []string
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		got = append(got, rec.LSN)
		if n, _, ok := rec.RestorePoint(); ok {
			names = append(names, n)
		}
	}
	want := []wal.LSN{filler, split, long, over}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Fatalf("records at %v, want %v", got, want)
	}
	if len(names) != 2 || names[0] != "split" || names[1] != "after-overwrite" {
		t.Fatalf("restore points %q", names)
	}
}

// FuzzRecordData checks that the main-data parsers never panic: a
// record's CRC only says PostgreSQL wrote it, not that barnacle's reading
// of a resource manager's format is right.
func FuzzRecordData(f *testing.F) {
	f.Add(uint8(0xB0), []byte("\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x07\x00\x00\x00"))
	f.Add(uint8(walrecord.XLOGRestorePoint), restorePointData("a"))
	f.Fuzz(func(t *testing.T, info uint8, main []byte) {
		for _, rmid := range []uint8{walrecord.RMXLOG, walrecord.RMXact} {
			rec := walrecord.Record{RMID: rmid, Info: info, MainData: main}
			rec.XactEnd()
			rec.RestorePoint()
		}
	})
}
