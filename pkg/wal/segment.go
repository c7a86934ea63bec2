package wal

import (
	"fmt"
	"strconv"
	"strings"
)

// Timeline is a PostgreSQL timeline ID. Valid timelines start at 1.
type Timeline uint32

// SegmentNo is PostgreSQL's XLogSegNo: the index of a WAL segment counted
// from LSN 0, for a given segment size.
type SegmentNo uint64

// DefaultSegmentSize is initdb's default --wal-segsize, 16 MiB.
const DefaultSegmentSize = 16 << 20

// Segment size bounds and file-name shapes from xlog_internal.h.
const (
	minSegmentSize = 1 << 20 // WalSegMinSize
	maxSegmentSize = 1 << 30 // WalSegMaxSize

	segmentNameLen = 24 // XLOG_FNAME_LEN
	historySuffix  = ".history"
	partialSuffix  = ".partial"
)

// Compression suffixes that SplitFileName recognises, without the dot.
const (
	CompressionZstd = "zst"
	CompressionLZ4  = "lz4"
)

// ValidSegmentSize reports whether size is a WAL segment size PostgreSQL
// accepts (IsValidWalSegSize): a power of two from 1 MiB to 1 GiB. The
// segment functions of this package assume a valid size; callers check it once
// where the size enters the program (server, archive.json, configuration).
func ValidSegmentSize(size uint64) error {
	if size < minSegmentSize || size > maxSegmentSize || size&(size-1) != 0 {
		return fmt.Errorf("wal segment size %d is invalid: must be a power of two from 1 MiB to 1 GiB", size)
	}
	return nil
}

// segmentsPerXLogID is PostgreSQL's XLogSegmentsPerXLogId: how many segments
// the low eight hex digits of a file name count before the middle part
// increments.
func segmentsPerXLogID(segSize uint64) uint64 {
	return 0x100000000 / segSize
}

// SegmentOf returns the segment that contains the byte at lsn
// (PostgreSQL's XLByteToSeg). segSize must be valid.
func SegmentOf(lsn LSN, segSize uint64) SegmentNo {
	return SegmentNo(uint64(lsn) / segSize)
}

// SegmentStart returns the LSN of the first byte of seg
// (PostgreSQL's XLogSegNoOffsetToRecPtr with offset 0). segSize must be valid.
func SegmentStart(seg SegmentNo, segSize uint64) LSN {
	return LSN(uint64(seg) * segSize)
}

// SegmentOffset returns lsn's byte offset inside its segment
// (PostgreSQL's XLogSegmentOffset). segSize must be valid.
func SegmentOffset(lsn LSN, segSize uint64) uint64 {
	return uint64(lsn) & (segSize - 1)
}

// SegmentFileName returns PostgreSQL's XLogFileName for seg on timeline tli:
// 24 upper-case hex digits, "%08X%08X%08X" of tli, seg / (2^32/segSize) and
// seg % (2^32/segSize). segSize must be valid; every segment of a real LSN
// fits the format.
func SegmentFileName(tli Timeline, seg SegmentNo, segSize uint64) string {
	per := segmentsPerXLogID(segSize)
	return fmt.Sprintf("%08X%08X%08X", uint32(tli), uint32(uint64(seg)/per), uint32(uint64(seg)%per))
}

// ParseSegmentFileName is the inverse of SegmentFileName. name must be a bare
// segment name (no ".partial" or compression suffix; see SplitFileName):
// exactly 24 upper-case hex digits, a timeline other than 0, and a low part
// below 2^32/segSize, since PostgreSQL never produces a larger one for that
// segment size. It fails on an invalid segSize.
func ParseSegmentFileName(name string, segSize uint64) (Timeline, SegmentNo, error) {
	if err := ValidSegmentSize(segSize); err != nil {
		return 0, 0, fmt.Errorf("parse segment file name %q: %w", name, err)
	}
	if !IsSegmentFileName(name) {
		return 0, 0, fmt.Errorf("parse segment file name %q: want 24 upper-case hex digits", name)
	}
	tli := mustHex32(name[0:8])
	hi := mustHex32(name[8:16])
	lo := mustHex32(name[16:24])
	if tli == 0 {
		return 0, 0, fmt.Errorf("parse segment file name %q: timeline 0 is invalid", name)
	}
	per := segmentsPerXLogID(segSize)
	if uint64(lo) >= per {
		return 0, 0, fmt.Errorf("parse segment file name %q: low part %08X is out of range for %d-byte segments (must be below %X)", name, lo, segSize, per)
	}
	return Timeline(tli), SegmentNo(uint64(hi)*per + uint64(lo)), nil
}

// mustHex32 parses 8 hex digits already validated by the caller.
func mustHex32(s string) uint32 {
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		panic(fmt.Sprintf("wal: unvalidated hex %q: %v", s, err))
	}
	return uint32(v)
}

// HistoryFileName returns the name of tli's history file ("%08X.history").
// Timeline 1 never has one; the name is still well-formed.
func HistoryFileName(tli Timeline) string {
	return fmt.Sprintf("%08X%s", uint32(tli), historySuffix)
}

// ParseHistoryFileName is the inverse of HistoryFileName: 8 upper-case hex
// digits followed by ".history", timeline other than 0.
func ParseHistoryFileName(name string) (Timeline, error) {
	if !IsHistoryFileName(name) {
		return 0, fmt.Errorf("parse history file name %q: want 8 upper-case hex digits and %q", name, historySuffix)
	}
	tli := mustHex32(name[:8])
	if tli == 0 {
		return 0, fmt.Errorf("parse history file name %q: timeline 0 is invalid", name)
	}
	return Timeline(tli), nil
}

// IsSegmentFileName reports whether name has the shape of a bare segment file
// name (PostgreSQL's IsXLogFileName): 24 upper-case hex digits. It does not
// check the name against a segment size; ParseSegmentFileName does.
func IsSegmentFileName(name string) bool {
	return len(name) == segmentNameLen && isHex(name, true)
}

// IsPartialFileName reports whether name is a segment name with a ".partial"
// suffix, with or without a compression suffix (see SplitFileName).
func IsPartialFileName(name string) bool {
	base, partial, _ := SplitFileName(name)
	return partial && IsSegmentFileName(base)
}

// IsHistoryFileName reports whether name has the shape of a timeline history
// file name (PostgreSQL's IsTLHistoryFileName): 8 upper-case hex digits and
// ".history".
func IsHistoryFileName(name string) bool {
	return len(name) == 8+len(historySuffix) && strings.HasSuffix(name, historySuffix) && isHex(name[:8], true)
}

// SplitFileName removes the suffixes an archived WAL file name may carry and
// reports them: ".partial" and one compression suffix (".zst" or ".lz4",
// returned without the dot as CompressionZstd or CompressionLZ4, or "" when
// uncompressed). Both orders are recognised: "X.partial.zst" (ours) and
// "X.zst.partial" (pg_receivewal's). base is what remains; SplitFileName does
// not validate it.
func SplitFileName(name string) (base string, partial bool, compression string) {
	base = name
	cut := func() bool {
		for _, c := range []string{CompressionZstd, CompressionLZ4} {
			if compression == "" {
				if b, ok := strings.CutSuffix(base, "."+c); ok && b != "" {
					base, compression = b, c
					return true
				}
			}
		}
		if !partial {
			if b, ok := strings.CutSuffix(base, partialSuffix); ok && b != "" {
				base, partial = b, true
				return true
			}
		}
		return false
	}
	for cut() {
	}
	return base, partial, compression
}
