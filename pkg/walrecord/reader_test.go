package walrecord_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/barnacle-pg/barnacle/internal/testenv"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walrecord"
)

const segSize = 1 << 20

// generated is WAL that a real PostgreSQL 15 wrote, with what the test
// knows about it.
type generated struct {
	segs             map[wal.SegmentNo][]byte
	start, switchEnd wal.LSN
	points           map[string]wal.LSN // restore point name -> pg_create_restore_point's LSN
	committed        uint32
	aborted          uint32
	prepCommitted    uint32 // COMMIT PREPARED
	prepAborted      uint32 // ROLLBACK PREPARED
	relfilenode      uint32
	bigStart         wal.LSN // insert position before the big message
}

// generateWAL makes a server write restore points, known transactions,
// records of several segments and full-page images, switches the segment
// and copies the complete segments from pg_wal.
func generateWAL(t *testing.T) generated {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := testenv.NewCluster(t, testenv.ClusterOptions{WALSegmentSizeMB: 1, Params: map[string]string{"max_prepared_transactions": "4"}})
	pg := c.Primary()
	conn, err := pg.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	lsn := func(sql string) wal.LSN {
		t.Helper()
		var s string
		if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		l, err := wal.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	xid := func() uint32 {
		t.Helper()
		var x int64
		if err := conn.QueryRow(ctx, "SELECT txid_current()").Scan(&x); err != nil {
			t.Fatal(err)
		}
		return uint32(x)
	}
	g := generated{segs: map[wal.SegmentNo][]byte{}, points: map[string]wal.LSN{}}
	g.start = lsn("SELECT pg_current_wal_insert_lsn()::text")
	exec("CREATE TABLE t (id int PRIMARY KEY, pad text)")
	exec("INSERT INTO t SELECT i, repeat('x', 500) FROM generate_series(1, 2000) i")
	g.points["a"] = lsn("SELECT pg_create_restore_point('a')::text")

	exec("BEGIN")
	g.committed = xid()
	exec("INSERT INTO t VALUES (-1, 'committed')")
	exec("COMMIT")
	exec("BEGIN")
	g.aborted = xid()
	exec("INSERT INTO t VALUES (-2, 'aborted')")
	exec("ROLLBACK")
	exec("BEGIN")
	g.prepCommitted = xid()
	exec("INSERT INTO t VALUES (-3, 'prepared, committed')")
	exec("PREPARE TRANSACTION 'p1'")
	exec("COMMIT PREPARED 'p1'")
	exec("BEGIN")
	g.prepAborted = xid()
	exec("INSERT INTO t VALUES (-4, 'prepared, rolled back')")
	exec("PREPARE TRANSACTION 'p2'")
	exec("ROLLBACK PREPARED 'p2'")

	// A record of 2.5 MB crosses pages and segments (1 MB segments).
	g.bigStart = lsn("SELECT pg_current_wal_insert_lsn()::text")
	exec("SELECT pg_logical_emit_message(false, 'barnacle', repeat('m', 2500000))")
	// After a checkpoint, the first change of each page logs its image.
	exec("CHECKPOINT")
	exec("UPDATE t SET pad = 'y' WHERE id % 50 = 0")
	if err := conn.QueryRow(ctx, "SELECT pg_relation_filenode('t')").Scan(&g.relfilenode); err != nil {
		t.Fatal(err)
	}
	g.points["b"] = lsn("SELECT pg_create_restore_point('b')::text")
	g.switchEnd = lsn("SELECT pg_switch_wal()::text")
	// pg_switch_wal returns the end of the switch record (XLogInsert's
	// result); the rest of that segment is unused.
	last := wal.SegmentOf(g.switchEnd-1, segSize)
	for seg := wal.SegmentOf(g.start, segSize); seg <= last; seg++ {
		b, err := os.ReadFile(filepath.Join(pg.DataDir, "pg_wal", wal.SegmentFileName(1, seg, segSize)))
		if err != nil {
			t.Fatal(err)
		}
		g.segs[seg] = b
	}
	return g
}

func opener(segs map[wal.SegmentNo][]byte) walrecord.Opener {
	return func(seg wal.SegmentNo) (io.ReadCloser, error) {
		b, ok := segs[seg]
		if !ok {
			return nil, walrecord.ErrNoSegment
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}

func newReader(t *testing.T, segs map[wal.SegmentNo][]byte, start wal.LSN) *walrecord.Reader {
	t.Helper()
	r, err := walrecord.NewReader(walrecord.Options{SegmentSize: segSize, Open: opener(segs),
		Name: func(s wal.SegmentNo) string { return wal.SegmentFileName(1, s, segSize) }}, start)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestReaderPostgresWAL reads WAL that PostgreSQL 15 wrote and finds what
// the server said it wrote.
func TestReaderPostgresWAL(t *testing.T) {
	g := generateWAL(t)
	r := newReader(t, g.segs, g.start)
	points := map[string]walrecord.Record{}
	var big *walrecord.Record
	ends := map[uint32][]bool{} // xid -> committed, per commit or abort record
	var prev wal.LSN
	var switchRec wal.LSN
	images, crossPage, n := 0, 0, 0
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %d records: %v", n, err)
		}
		n++
		if rec.LSN < g.start || rec.End <= rec.LSN || rec.End%8 != 0 {
			t.Fatalf("record at %s: end %s", rec.LSN, rec.End)
		}
		if prev != 0 && rec.Prev != prev {
			t.Fatalf("record at %s: xl_prev %s, previous record at %s", rec.LSN, rec.Prev, prev)
		}
		prev = rec.LSN
		if rec.RMID == walrecord.RMXLOG && rec.Info&^walrecord.InfoMask == walrecord.XLOGSwitch {
			switchRec = rec.End
		}
		if name, _, ok := rec.RestorePoint(); ok {
			points[name] = rec
		}
		if xid, committed, ok := rec.XactEnd(); ok {
			ends[xid] = append(ends[xid], committed)
		}
		if rec.LSN/walrecord.PageSize != (rec.End-1)/walrecord.PageSize {
			crossPage++
		}
		if wal.SegmentOf(rec.LSN, segSize) != wal.SegmentOf(rec.End-1, segSize) && rec.TotalLen > 2000000 {
			c := rec
			c.MainData, c.Blocks = nil, nil
			big = &c
		}
		for _, b := range rec.Blocks {
			if b.HasImage && b.Rel.Rel == g.relfilenode && b.Fork == 0 {
				images++
				if len(b.Image)+int(b.HoleLength) != walrecord.BlockSize && b.ImageInfo&(walrecord.ImageCompressPGLZ|walrecord.ImageCompressLZ4|walrecord.ImageCompressZstd) == 0 {
					t.Errorf("record at %s: block %d image of %d bytes with a hole of %d", rec.LSN, b.Block, len(b.Image), b.HoleLength)
				}
			}
		}
	}
	if switchRec != g.switchEnd {
		t.Errorf("the switch record ends at %s, pg_switch_wal returned %s", switchRec, g.switchEnd)
	}
	end, why := r.EndLSN()
	if want := wal.SegmentStart(wal.SegmentOf(g.switchEnd-1, segSize)+1, segSize); end != want {
		t.Errorf("the WAL ended at %s (%s), want %s: the start of the segment after the switch", end, why, want)
	}
	for name, want := range g.points {
		rec, ok := points[name]
		switch {
		case !ok:
			t.Errorf("restore point %q (pg_create_restore_point returned %s) not found", name, want)
		case rec.End != want:
			// pg_create_restore_point returns XLogInsert's result: the
			// end of the record, where the next record may start.
			t.Errorf("restore point %q: record %s..%s, pg_create_restore_point returned %s", name, rec.LSN, rec.End, want)
		}
	}
	if len(points) != len(g.points) {
		t.Errorf("restore points found: %v", points)
	}
	for _, c := range []struct {
		what   string
		xid    uint32
		commit bool
	}{
		{"commit", g.committed, true}, {"abort", g.aborted, false},
		{"commit prepared", g.prepCommitted, true}, {"rollback prepared", g.prepAborted, false},
	} {
		if got := ends[c.xid]; len(got) != 1 || got[0] != c.commit {
			t.Errorf("%s of xid %d: transaction end records %v, want one with committed=%v", c.what, c.xid, got, c.commit)
		}
	}
	if big == nil || big.LSN < g.bigStart {
		t.Errorf("no record of the 2.5 MB message across segments found after %s", g.bigStart)
	}
	if images == 0 {
		t.Errorf("no full-page image of relfilenode %d after the checkpoint", g.relfilenode)
	}
	if crossPage == 0 {
		t.Error("no record crosses a page")
	}
	t.Logf("%d records from %s to %s, %d full-page images of t, %d records across pages", n, g.start, end, images, crossPage)

	t.Run("start at a record", func(t *testing.T) {
		rp := points["b"]
		r := newReader(t, g.segs, rp.LSN)
		rec, err := r.Next()
		if err != nil || rec.LSN != rp.LSN {
			t.Fatalf("first record %s, %v; want %s", rec.LSN, err, rp.LSN)
		}
	})
	t.Run("start inside a continued record", func(t *testing.T) {
		// The reader starts on the page that continues the big record,
		// skips the rest of it and returns the record after it.
		r := newReader(t, g.segs, big.LSN+3*walrecord.PageSize)
		rec, err := r.Next()
		if err != nil || rec.LSN != big.End {
			t.Fatalf("first record %s, %v; want %s after the big record", rec.LSN, err, big.End)
		}
	})
	t.Run("flipped byte", func(t *testing.T) {
		for _, c := range []struct {
			what string
			rec  wal.LSN
			at   wal.LSN
		}{
			{"restore point", points["a"].LSN, points["a"].LSN + 40},
			{"second segment of the big record", big.LSN, wal.SegmentStart(wal.SegmentOf(big.LSN, segSize)+1, segSize) + 4096},
		} {
			segs := map[wal.SegmentNo][]byte{}
			for k, v := range g.segs {
				segs[k] = v
			}
			seg := wal.SegmentOf(c.at, segSize)
			b := bytes.Clone(segs[seg])
			b[wal.SegmentOffset(c.at, segSize)] ^= 0x01
			segs[seg] = b
			r := newReader(t, segs, g.start)
			var err error
			for err == nil {
				_, err = r.Next()
			}
			var ce *walrecord.CorruptError
			if !errors.As(err, &ce) || ce.LSN != c.rec {
				t.Fatalf("%s: got %v, want a corruption at %s", c.what, err, c.rec)
			}
			t.Logf("%s: %v", c.what, err)
		}
	})
	t.Run("missing segment in the middle", func(t *testing.T) {
		segs := map[wal.SegmentNo][]byte{}
		for k, v := range g.segs {
			segs[k] = v
		}
		delete(segs, wal.SegmentOf(big.LSN, segSize)+1)
		r := newReader(t, segs, g.start)
		var err error
		for err == nil {
			_, err = r.Next()
		}
		var ce *walrecord.CorruptError
		if !errors.As(err, &ce) {
			t.Fatalf("got %v, want a corruption error: the WAL ends where a later segment is stored", err)
		}
	})
	t.Run("opener fails", func(t *testing.T) {
		boom := errors.New("storage down")
		bad := wal.SegmentOf(big.LSN, segSize) + 1
		o := opener(g.segs)
		r, err := walrecord.NewReader(walrecord.Options{SegmentSize: segSize, Open: func(seg wal.SegmentNo) (io.ReadCloser, error) {
			if seg == bad {
				return nil, boom
			}
			return o(seg)
		}, Name: func(s wal.SegmentNo) string { return wal.SegmentFileName(1, s, segSize) }}, g.start)
		if err != nil {
			t.Fatal(err)
		}
		for err == nil {
			_, err = r.Next()
		}
		if !errors.Is(err, boom) || errors.Is(err, io.EOF) {
			t.Fatalf("got %v, want the opener's error", err)
		}
		if want := wal.SegmentFileName(1, bad, segSize); !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Fatalf("%v does not name segment %s", err, want)
		}
	})
}
