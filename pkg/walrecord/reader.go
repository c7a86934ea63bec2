package walrecord

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Sizes and flags of PostgreSQL 15's WAL pages (xlog_internal.h).
const (
	// PageSize is XLOG_BLCKSZ, the size of a WAL page.
	PageSize = 8192
	// BlockSize is BLCKSZ, the size of a relation block (and of a
	// full-page image with its hole restored).
	BlockSize = 8192
	// PageMagic is XLOG_PAGE_MAGIC of PostgreSQL 15.
	PageMagic = 0xD110

	shortPageHeaderSize = 24 // MAXALIGN(sizeof(XLogPageHeaderData))
	longPageHeaderSize  = 40 // MAXALIGN(sizeof(XLogLongPageHeaderData))
	recordHeaderSize    = 24 // SizeOfXLogRecord
	crcOffset           = 20 // offsetof(XLogRecord, xl_crc)
	// maxRecordLen is MaxAllocSize: xlogreader cannot hold a longer record.
	maxRecordLen = 1<<30 - 1

	xlpFirstIsContrecord          = 0x01
	xlpLongHeader                 = 0x02
	xlpFirstIsOverwriteContrecord = 0x08
	xlpAllFlags                   = 0x0F
)

// Resource managers and record kinds that barnacle looks at (rmgrlist.h,
// pg_control.h, xact.h).
const (
	RMXLOG = 0 // RM_XLOG_ID
	RMXact = 1 // RM_XACT_ID
	// rmMaxBuiltin is RM_MAX_BUILTIN_ID of PostgreSQL 15 (LogicalMessage);
	// rmMinCustom is RM_MIN_CUSTOM_ID: 22..127 are not valid.
	rmMaxBuiltin = 21
	rmMinCustom  = 128

	// InfoMask is XLR_INFO_MASK: the bits of xl_info the WAL machinery
	// uses; a resource manager owns the others.
	InfoMask = 0x0F
	// XLOGSwitch and XLOGRestorePoint are xl_info values (without
	// InfoMask) of RMXLOG records.
	XLOGSwitch       = 0x40
	XLOGRestorePoint = 0x70
)

// ErrNoSegment is what an Opener returns (possibly wrapped) for a segment
// that is not stored: where the WAL ends, the reader reports io.EOF.
var ErrNoSegment = errors.New("walrecord: segment not stored")

// Opener returns the bytes of segment seg (the whole segment, or the first
// part of it for a .partial), or an error matching ErrNoSegment when it is
// not stored. The reader reads it to io.EOF, so that a verifying reader
// (catalog.OpenSegment) checks it, and closes it.
type Opener func(seg wal.SegmentNo) (io.ReadCloser, error)

// Options configures a Reader.
type Options struct {
	// SegmentSize is the WAL segment size; every segment's long page
	// header must say the same.
	SegmentSize uint64
	Open        Opener
	// Name names a segment in messages, such as its file name on the
	// timeline the Opener serves it from; nil prints its number.
	Name func(wal.SegmentNo) string
}

// CorruptError says that the WAL at LSN cannot be read although it should
// hold a record: it is damaged, or the archive is inconsistent.
type CorruptError struct {
	LSN     wal.LSN
	Segment string
	Reason  string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("walrecord: corrupt WAL at %s in segment %s: %s", e.LSN, e.Segment, e.Reason)
}

// RelFileNode identifies a relation: tablespace, database and relfilenode
// OIDs.
type RelFileNode struct {
	Spc, DB, Rel uint32
}

// BlockRef is one block reference of a record (XLogRecordBlockHeader and
// what follows it).
type BlockRef struct {
	ID    uint8
	Rel   RelFileNode
	Fork  uint8 // MAIN_FORKNUM 0, FSM 1, VM 2, INIT 3
	Block uint32
	// Flags is fork_flags without the fork number (BKPBLOCK_*).
	Flags uint8
	// WillInit says that replay initialises the block (BKPBLOCK_WILL_INIT).
	WillInit bool
	// HasImage: Image is a full-page image, compressed when ImageInfo has
	// a BKPIMAGE_COMPRESS_* bit, with its hole (HoleOffset, HoleLength)
	// cut out.
	HasImage   bool
	ImageInfo  uint8
	HoleOffset uint16
	HoleLength uint16
	Image      []byte
	// Data is the block's data (BKPBLOCK_HAS_DATA), nil without.
	Data []byte

	imgLen, dataLen int
}

// Full-page image flags (bimg_info, xlogrecord.h of PostgreSQL 15).
const (
	ImageHasHole      = 0x01
	ImageApply        = 0x02
	ImageCompressPGLZ = 0x04
	ImageCompressLZ4  = 0x08
	ImageCompressZstd = 0x10
	imageCompressed   = ImageCompressPGLZ | ImageCompressLZ4 | ImageCompressZstd
)

// Record is one WAL record. Its slices (Blocks' Image and Data, MainData)
// point into the reader's buffer and are valid until the next call of Next.
type Record struct {
	// LSN is where the record starts; End is where the next one may start,
	// the MAXALIGNed end of its last byte (what XLogInsert returns, so
	// what pg_create_restore_point returns for a restore point record).
	LSN, End wal.LSN
	Prev     wal.LSN // xl_prev
	TotalLen uint32
	XID      uint32 // xl_xid
	Info     uint8  // xl_info
	RMID     uint8  // xl_rmid
	Blocks   []BlockRef
	// Origin is the replication origin (XLR_BLOCK_ID_ORIGIN), 0 without;
	// TopXID the top-level transaction (XLR_BLOCK_ID_TOPLEVEL_XID), 0
	// without.
	Origin   uint16
	TopXID   uint32
	MainData []byte
}

// Reader reads the records of consecutive segments. It is not safe for
// concurrent use.
type Reader struct {
	opt   Options
	start wal.LSN
	begun bool
	pos   wal.LSN // the next record's start, or the page boundary before its header
	prev  wal.LSN // start of the previous record, 0 while unknown

	segNo     wal.SegmentNo
	seg       []byte
	segStored bool
	segLoaded bool
	sysid     uint64

	buf    []byte
	blocks []BlockRef
	err    error
	end    wal.LSN
	why    string
}

// NewReader returns a reader of the records that start at or after start.
// It begins at the page holding start and skips the rest of a record
// continued from an earlier page, as PostgreSQL's XLogFindNextRecord does,
// so start need not be a record's start.
func NewReader(opt Options, start wal.LSN) (*Reader, error) {
	if err := wal.ValidSegmentSize(opt.SegmentSize); err != nil {
		return nil, fmt.Errorf("walrecord: %w", err)
	}
	if opt.Open == nil {
		return nil, errors.New("walrecord: no Opener")
	}
	return &Reader{opt: opt, start: start}, nil
}

// EndLSN returns where the valid WAL ended and why, once Next returned
// io.EOF.
func (r *Reader) EndLSN() (wal.LSN, string) { return r.end, r.why }

// Next returns the next record. At the end of valid WAL it returns io.EOF
// (EndLSN says where); damage is a *CorruptError; a failure of the Opener
// is returned wrapped. Errors are sticky.
func (r *Reader) Next() (Record, error) {
	if r.err != nil {
		return Record{}, r.err
	}
	for {
		rec, err := r.next()
		if err != nil {
			r.err = err
			return Record{}, err
		}
		if rec.LSN >= r.start {
			return rec, nil
		}
	}
}

func (r *Reader) name(seg wal.SegmentNo) string {
	if r.opt.Name != nil {
		return r.opt.Name(seg)
	}
	return fmt.Sprintf("number %d", seg)
}

func (r *Reader) corrupt(lsn wal.LSN, format string, args ...any) error {
	return &CorruptError{LSN: lsn, Segment: r.name(wal.SegmentOf(lsn, r.opt.SegmentSize)), Reason: fmt.Sprintf(format, args...)}
}

// endAt ends the WAL at lsn, unless the next segment is stored: then WAL
// that seems to end is followed by more, which is damage (or a hole), not
// the end.
func (r *Reader) endAt(lsn wal.LSN, why string) error {
	next := wal.SegmentOf(lsn, r.opt.SegmentSize) + 1
	rc, err := r.opt.Open(next)
	switch {
	case errors.Is(err, ErrNoSegment):
		r.end, r.why = lsn, why
		return io.EOF
	case err != nil:
		return fmt.Errorf("walrecord: open segment %s: %w", r.name(next), err)
	}
	_ = rc.Close()
	return r.corrupt(lsn, "the WAL ends here (%s) but segment %s follows", why, r.name(next))
}

// load makes seg the current segment.
func (r *Reader) load(seg wal.SegmentNo) error {
	if r.segLoaded && r.segNo == seg {
		return nil
	}
	r.segLoaded, r.segNo, r.segStored, r.seg = false, seg, false, r.seg[:0]
	rc, err := r.opt.Open(seg)
	switch {
	case errors.Is(err, ErrNoSegment):
		r.segLoaded = true
		return nil
	case err != nil:
		return fmt.Errorf("walrecord: open segment %s: %w", r.name(seg), err)
	}
	if cap(r.seg) < int(r.opt.SegmentSize)+1 {
		r.seg = make([]byte, 0, int(r.opt.SegmentSize)+1)
	}
	b := r.seg[:int(r.opt.SegmentSize)+1]
	n, err := io.ReadFull(rc, b)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = nil
	}
	cerr := rc.Close()
	if err == nil && n > int(r.opt.SegmentSize) {
		return r.corrupt(wal.SegmentStart(seg, r.opt.SegmentSize), "the segment holds more than %d bytes", r.opt.SegmentSize)
	}
	if err = errors.Join(err, cerr); err != nil {
		return fmt.Errorf("walrecord: read segment %s: %w", r.name(seg), err)
	}
	r.seg, r.segStored, r.segLoaded = b[:n], true, true
	return nil
}

type pageHeader struct {
	info   uint16
	remLen uint32
	size   int
}

// page reads and checks the header of the page at p. A non-empty why
// means the WAL ends there.
func (r *Reader) page(p wal.LSN) (h pageHeader, why string, err error) {
	seg := wal.SegmentOf(p, r.opt.SegmentSize)
	if err := r.load(seg); err != nil {
		return h, "", err
	}
	if !r.segStored {
		return h, fmt.Sprintf("segment %s is not stored", r.name(seg)), nil
	}
	off := int(wal.SegmentOffset(p, r.opt.SegmentSize))
	if off+shortPageHeaderSize > len(r.seg) {
		return h, fmt.Sprintf("the stored WAL ends (segment %s holds %d bytes)", r.name(seg), len(r.seg)), nil
	}
	b := r.seg[off : off+shortPageHeaderSize]
	if allZero(b) {
		return h, "zeroed page", nil
	}
	magic := binary.LittleEndian.Uint16(b[0:])
	h.info = binary.LittleEndian.Uint16(b[2:])
	pageaddr := wal.LSN(binary.LittleEndian.Uint64(b[8:]))
	h.remLen = binary.LittleEndian.Uint32(b[16:])
	h.size = shortPageHeaderSize
	if magic != PageMagic {
		return h, "", r.corrupt(p, "invalid page magic %04X (PostgreSQL 15 writes %04X)", magic, PageMagic)
	}
	if h.info&^xlpAllFlags != 0 {
		return h, "", r.corrupt(p, "invalid page info flags %04X", h.info)
	}
	if pageaddr != p {
		if pageaddr < p {
			// PostgreSQL recycles old segment files; what follows the
			// last write is an old page (xlogreader's "unexpected
			// pageaddr", which ends recovery too).
			return h, fmt.Sprintf("page of a recycled segment (pageaddr %s)", pageaddr), nil
		}
		return h, "", r.corrupt(p, "page address %s does not match", pageaddr)
	}
	if off == 0 {
		if h.info&xlpLongHeader == 0 {
			return h, "", r.corrupt(p, "the segment's first page has no long header")
		}
		if len(r.seg) < longPageHeaderSize {
			return h, fmt.Sprintf("the stored WAL ends (segment %s holds %d bytes)", r.name(seg), len(r.seg)), nil
		}
		l := r.seg[shortPageHeaderSize:longPageHeaderSize]
		sysid := binary.LittleEndian.Uint64(l[0:])
		segSize := binary.LittleEndian.Uint32(l[8:])
		blcksz := binary.LittleEndian.Uint32(l[12:])
		switch {
		case uint64(segSize) != r.opt.SegmentSize:
			return h, "", r.corrupt(p, "the long page header says segment size %d, not %d", segSize, r.opt.SegmentSize)
		case blcksz != PageSize:
			return h, "", r.corrupt(p, "the long page header says WAL page size %d, not %d", blcksz, PageSize)
		case r.sysid != 0 && sysid != r.sysid:
			return h, "", r.corrupt(p, "system identifier %d differs from %d of the earlier segments", sysid, r.sysid)
		}
		r.sysid = sysid
		h.size = longPageHeaderSize
	}
	return h, "", nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// stored returns the stored bytes of the current segment from p to at most
// the end of p's page.
func (r *Reader) stored(p wal.LSN) []byte {
	off := int(wal.SegmentOffset(p, r.opt.SegmentSize))
	pageEnd := (off/PageSize + 1) * PageSize
	if off >= len(r.seg) {
		return nil
	}
	return r.seg[off:min(pageEnd, len(r.seg))]
}

func maxAlign(l wal.LSN) wal.LSN { return (l + 7) &^ 7 }

// sync positions the reader at the first record that starts on start's
// page, skipping a continuation.
func (r *Reader) sync() error {
	p := r.start &^ (PageSize - 1)
	var rem uint64 // what is left of the continued record
	for first := true; ; first = false {
		h, why, err := r.page(p)
		if err != nil {
			return err
		}
		if why != "" {
			return r.endAt(p, why)
		}
		r.pos = p + wal.LSN(h.size)
		switch {
		case first && h.info&xlpFirstIsContrecord == 0:
			return nil
		case first:
			rem = uint64(h.remLen)
		case h.info&xlpFirstIsOverwriteContrecord != 0:
			return nil
		case h.info&xlpFirstIsContrecord == 0 || uint64(h.remLen) != rem:
			return r.corrupt(p, "the continued record does not continue here (remaining length %d, page says %d)", rem, h.remLen)
		}
		avail := uint64(PageSize) - wal.SegmentOffset(r.pos, r.opt.SegmentSize)%PageSize
		if rem <= avail {
			r.pos = maxAlign(r.pos + wal.LSN(rem))
			return nil
		}
		rem -= avail
		p += PageSize
	}
}

// next reads the record at r.pos.
func (r *Reader) next() (Record, error) {
	if !r.begun {
		r.begun = true
		if err := r.sync(); err != nil {
			return Record{}, err
		}
	}
	for {
		rec, aborted, err := r.read()
		if err != nil || !aborted {
			return rec, err
		}
	}
}

// read reads one record; aborted means a record broken off by a crash was
// overwritten (XLP_FIRST_IS_OVERWRITE_CONTRECORD) and reading goes on with
// the overwriting record.
func (r *Reader) read() (rec Record, aborted bool, err error) {
	if r.pos%PageSize == 0 {
		h, why, err := r.page(r.pos)
		if err != nil {
			return rec, false, err
		}
		if why != "" {
			return rec, false, r.endAt(r.pos, why)
		}
		if h.info&xlpFirstIsContrecord != 0 {
			return rec, false, r.corrupt(r.pos, "the page continues a record where a new record should start")
		}
		r.pos += wal.LSN(h.size)
	}
	start := r.pos
	if err := r.load(wal.SegmentOf(start, r.opt.SegmentSize)); err != nil {
		return rec, false, err
	}
	first := r.stored(start)
	if len(first) < 4 {
		if !r.segStored {
			return rec, false, r.endAt(start, fmt.Sprintf("segment %s is not stored", r.name(r.segNo)))
		}
		return rec, false, r.endAt(start, "the stored WAL ends")
	}
	tot := binary.LittleEndian.Uint32(first)
	switch {
	case tot == 0:
		return rec, false, r.endAt(start, "zeroed record header")
	case tot < recordHeaderSize:
		return rec, false, r.corrupt(start, "record length %d is below the header size %d", tot, recordHeaderSize)
	case tot > maxRecordLen:
		return rec, false, r.corrupt(start, "record length %d is above the maximum %d", tot, maxRecordLen)
	}
	// The header may be cut by the page end; check it before reading the
	// rest when it is not, so that garbage is not gathered page by page.
	checked := false
	if len(first) >= recordHeaderSize {
		if err := r.checkHeader(start, first[:recordHeaderSize]); err != nil {
			return rec, false, err
		}
		checked = true
	}
	buf := r.buf[:0]
	p := start
	for {
		chunk := r.stored(p)
		need := int(tot) - len(buf)
		pageLeft := PageSize - int(wal.SegmentOffset(p, r.opt.SegmentSize)%PageSize)
		if len(chunk) < min(need, pageLeft) {
			return rec, false, r.endAt(p+wal.LSN(len(chunk)), fmt.Sprintf("the stored WAL ends inside the record at %s", start))
		}
		take := min(need, len(chunk))
		buf = append(buf, chunk[:take]...)
		p += wal.LSN(take)
		if len(buf) == int(tot) {
			break
		}
		h, why, err := r.page(p)
		if err != nil {
			return rec, false, err
		}
		if why != "" {
			return rec, false, r.endAt(p, fmt.Sprintf("%s inside the record at %s", why, start))
		}
		if h.info&xlpFirstIsOverwriteContrecord != 0 {
			r.pos, r.prev = p, 0
			r.buf = buf
			return rec, true, nil
		}
		if h.info&xlpFirstIsContrecord == 0 {
			return rec, false, r.corrupt(p, "the record at %s continues on this page, which has no continuation flag", start)
		}
		if h.remLen != tot-uint32(len(buf)) {
			return rec, false, r.corrupt(p, "the record at %s has %d bytes left, the page says %d", start, tot-uint32(len(buf)), h.remLen)
		}
		p += wal.LSN(h.size)
	}
	r.buf = buf
	if !checked {
		if err := r.checkHeader(start, buf[:recordHeaderSize]); err != nil {
			return rec, false, err
		}
	}
	want := binary.LittleEndian.Uint32(buf[crcOffset:])
	crc := crc32.Update(0, castagnoli, buf[recordHeaderSize:])
	crc = crc32.Update(crc, castagnoli, buf[:crcOffset])
	if crc != want {
		return rec, false, r.corrupt(start, "record CRC %08X does not match the computed %08X", want, crc)
	}
	rec = Record{
		LSN:      start,
		End:      maxAlign(p),
		TotalLen: tot,
		XID:      binary.LittleEndian.Uint32(buf[4:]),
		Prev:     wal.LSN(binary.LittleEndian.Uint64(buf[8:])),
		Info:     buf[16],
		RMID:     buf[17],
	}
	if err := r.decode(&rec, buf); err != nil {
		return Record{}, false, r.corrupt(start, "%v", err)
	}
	r.prev = start
	r.pos = rec.End
	if rec.RMID == RMXLOG && rec.Info&^InfoMask == XLOGSwitch {
		// The rest of the segment is unused (XLogDecodeNextRecord).
		r.pos = wal.SegmentStart(wal.SegmentOf(rec.End-1, r.opt.SegmentSize)+1, r.opt.SegmentSize)
	}
	return rec, false, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checkHeader is ValidXLogRecordHeader.
func (r *Reader) checkHeader(start wal.LSN, h []byte) error {
	rmid := h[17]
	if rmid > rmMaxBuiltin && rmid < rmMinCustom {
		return r.corrupt(start, "invalid resource manager ID %d", rmid)
	}
	prev := wal.LSN(binary.LittleEndian.Uint64(h[8:]))
	if r.prev != 0 && prev != r.prev {
		return r.corrupt(start, "xl_prev %s does not point to the previous record at %s", prev, r.prev)
	}
	return nil
}

// Block IDs of the record's headers (xlogrecord.h).
const (
	maxBlockID       = 32
	blockIDDataShort = 255
	blockIDDataLong  = 254
	blockIDOrigin    = 253
	blockIDTopXID    = 252

	bkpForkMask = 0x0F
	bkpHasImage = 0x10
	bkpHasData  = 0x20
	bkpWillInit = 0x40
	bkpSameRel  = 0x80
)

// decode is DecodeXLogRecord: it splits the record after its header into
// block references and main data.
func (r *Reader) decode(rec *Record, b []byte) error {
	d := decoder{b: b[recordHeaderSize:]}
	datatotal := 0
	mainLen := 0
	blocks := r.blocks[:0]
	maxID := -1
	var lastRel *RelFileNode
	for len(d.b)-d.off > datatotal {
		id, ok := d.u8()
		if !ok {
			return errors.New("record header is cut short")
		}
		switch {
		case id == blockIDDataShort:
			l, ok := d.u8()
			if !ok {
				return errors.New("record header is cut short")
			}
			mainLen = int(l)
			datatotal += mainLen
		case id == blockIDDataLong:
			l, ok := d.u32()
			if !ok {
				return errors.New("record header is cut short")
			}
			if l > maxRecordLen {
				return fmt.Errorf("main data length %d is impossible", l)
			}
			mainLen = int(l)
			datatotal += mainLen
		case id == blockIDOrigin:
			if rec.Origin, ok = d.u16(); !ok {
				return errors.New("record header is cut short")
			}
			continue
		case id == blockIDTopXID:
			if rec.TopXID, ok = d.u32(); !ok {
				return errors.New("record header is cut short")
			}
			continue
		case id <= maxBlockID:
			if int(id) <= maxID {
				return fmt.Errorf("out-of-order block_id %d", id)
			}
			maxID = int(id)
			blk, err := d.block(id, &datatotal, &lastRel)
			if err != nil {
				return err
			}
			blocks = append(blocks, blk)
			continue
		default:
			return fmt.Errorf("invalid block_id %d", id)
		}
		break // main data header: the headers end
	}
	if d.off+datatotal != len(d.b) {
		return fmt.Errorf("record length %d does not match its headers and data (%d)", len(b), recordHeaderSize+d.off+datatotal)
	}
	for i := range blocks {
		blk := &blocks[i]
		if blk.HasImage {
			blk.Image = d.b[d.off : d.off+blk.imgLen]
			d.off += blk.imgLen
		}
		if blk.dataLen > 0 {
			blk.Data = d.b[d.off : d.off+blk.dataLen]
			d.off += blk.dataLen
		}
	}
	if mainLen > 0 {
		rec.MainData = d.b[d.off : d.off+mainLen]
	}
	r.blocks = blocks
	if len(blocks) > 0 {
		rec.Blocks = blocks
	}
	return nil
}

// decoder reads little-endian fields of a record's headers.
type decoder struct {
	b   []byte
	off int
}

func (d *decoder) u8() (uint8, bool) {
	if d.off+1 > len(d.b) {
		return 0, false
	}
	d.off++
	return d.b[d.off-1], true
}

func (d *decoder) u16() (uint16, bool) {
	if d.off+2 > len(d.b) {
		return 0, false
	}
	d.off += 2
	return binary.LittleEndian.Uint16(d.b[d.off-2:]), true
}

func (d *decoder) u32() (uint32, bool) {
	if d.off+4 > len(d.b) {
		return 0, false
	}
	d.off += 4
	return binary.LittleEndian.Uint32(d.b[d.off-4:]), true
}

// block reads an XLogRecordBlockHeader and what follows it, with the
// checks of DecodeXLogRecord.
func (d *decoder) block(id uint8, datatotal *int, lastRel **RelFileNode) (BlockRef, error) {
	short := errors.New("block header is cut short")
	blk := BlockRef{ID: id}
	ff, ok := d.u8()
	if !ok {
		return blk, short
	}
	blk.Fork = ff & bkpForkMask
	blk.Flags = ff &^ bkpForkMask
	blk.HasImage = ff&bkpHasImage != 0
	blk.WillInit = ff&bkpWillInit != 0
	dataLen, ok := d.u16()
	if !ok {
		return blk, short
	}
	hasData := ff&bkpHasData != 0
	switch {
	case hasData && dataLen == 0:
		return blk, fmt.Errorf("block %d: BKPBLOCK_HAS_DATA set, but no data", id)
	case !hasData && dataLen != 0:
		return blk, fmt.Errorf("block %d: BKPBLOCK_HAS_DATA not set, but data length is %d", id, dataLen)
	}
	blk.dataLen = int(dataLen)
	*datatotal += int(dataLen)
	if blk.HasImage {
		imgLen, ok1 := d.u16()
		holeOff, ok2 := d.u16()
		info, ok3 := d.u8()
		if !ok1 || !ok2 || !ok3 {
			return blk, short
		}
		blk.HoleOffset, blk.ImageInfo = holeOff, info
		compressed := info&imageCompressed != 0
		switch {
		case info&ImageHasHole != 0 && compressed:
			if blk.HoleLength, ok = d.u16(); !ok {
				return blk, short
			}
		case info&ImageHasHole != 0:
			blk.HoleLength = BlockSize - imgLen
		}
		*datatotal += int(imgLen)
		switch {
		case info&ImageHasHole != 0 && (holeOff == 0 || blk.HoleLength == 0 || imgLen == BlockSize):
			return blk, fmt.Errorf("block %d: BKPIMAGE_HAS_HOLE set, but hole offset %d length %d image length %d", id, holeOff, blk.HoleLength, imgLen)
		case info&ImageHasHole == 0 && (holeOff != 0 || blk.HoleLength != 0):
			return blk, fmt.Errorf("block %d: BKPIMAGE_HAS_HOLE not set, but hole offset %d length %d", id, holeOff, blk.HoleLength)
		case compressed && imgLen == BlockSize:
			return blk, fmt.Errorf("block %d: compressed image, but image length %d", id, imgLen)
		case info&ImageHasHole == 0 && !compressed && imgLen != BlockSize:
			return blk, fmt.Errorf("block %d: neither a hole nor compression, but image length %d", id, imgLen)
		}
		blk.imgLen = int(imgLen)
	}
	if ff&bkpSameRel == 0 {
		spc, ok1 := d.u32()
		db, ok2 := d.u32()
		rel, ok3 := d.u32()
		if !ok1 || !ok2 || !ok3 {
			return blk, short
		}
		blk.Rel = RelFileNode{Spc: spc, DB: db, Rel: rel}
		*lastRel = &RelFileNode{Spc: spc, DB: db, Rel: rel}
	} else {
		if *lastRel == nil {
			return blk, fmt.Errorf("block %d: BKPBLOCK_SAME_REL set, but no previous relation", id)
		}
		blk.Rel = **lastRel
	}
	if blk.Block, ok = d.u32(); !ok {
		return blk, short
	}
	return blk, nil
}
