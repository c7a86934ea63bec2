package wal

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

func TestValidSegmentSize(t *testing.T) {
	for _, size := range []uint64{mib, 2 * mib, DefaultSegmentSize, 64 * mib, gib} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			assert.NoError(t, ValidSegmentSize(size))
		})
	}
	for _, size := range []uint64{0, 1, 512 << 10, mib - 1, mib + 1, 3 * mib, 2 * gib, 1 << 63} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			err := ValidSegmentSize(size)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "power of two from 1 MiB to 1 GiB")
			assert.Contains(t, err.Error(), fmt.Sprint(size))
		})
	}
}

func TestSegmentArithmetic(t *testing.T) {
	tests := []struct {
		name    string
		tli     Timeline
		lsn     LSN
		segSize uint64
		seg     SegmentNo
		offset  uint64
		file    string
	}{
		{"16MiB first", 1, 0, DefaultSegmentSize, 0, 0, "000000010000000000000000"},
		{"16MiB 0/5039A28", 1, 0x5039A28, DefaultSegmentSize, 5, 0x39A28, "000000010000000000000005"},
		{"16MiB 1/0", 1, 1 << 32, DefaultSegmentSize, 256, 0, "000000010000000100000000"},
		{"16MiB last of xlogid 0", 1, 0xFFFFFFFF, DefaultSegmentSize, 255, 0xFFFFFF, "0000000100000000000000FF"},
		{"16MiB 16/B374D848 tli 3", 3, 0x16B374D848, DefaultSegmentSize, 0x16B3, 0x74D848, "0000000300000016000000B3"},
		{"16MiB switch point 0/8000060 tli 2", 2, 0x8000060, DefaultSegmentSize, 8, 0x60, "000000020000000000000008"},
		{"16MiB max", 0xFFFFFFFF, ^LSN(0), DefaultSegmentSize, 1<<40 - 1, 0xFFFFFF, "FFFFFFFFFFFFFFFF000000FF"},
		{"1MiB 0/5039A28", 1, 0x5039A28, mib, 0x50, 0x39A28, "000000010000000000000050"},
		{"1MiB 1/0", 1, 1 << 32, mib, 4096, 0, "000000010000000100000000"},
		{"1MiB 1/FFFFF", 1, 1<<32 + 0xFFFFF, mib, 4096, 0xFFFFF, "000000010000000100000000"},
		{"1MiB 0/FFF00000", 1, 0xFFF00000, mib, 4095, 0, "000000010000000000000FFF"},
		{"1GiB 0/5039A28", 1, 0x5039A28, gib, 0, 0x5039A28, "000000010000000000000000"},
		{"1GiB 1/C0000000", 1, 0x1C0000000, gib, 7, 0, "000000010000000100000003"},
		{"1GiB 1/0", 1, 1 << 32, gib, 4, 0, "000000010000000100000000"},
		{"64MiB A/4000000", 0x1A, 0xA04000000, 64 * mib, 0xA*64 + 1, 0, "0000001A0000000A00000001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seg := SegmentOf(tt.lsn, tt.segSize)
			assert.Equal(t, tt.seg, seg, "SegmentOf")
			assert.Equal(t, tt.offset, SegmentOffset(tt.lsn, tt.segSize), "SegmentOffset")
			assert.Equal(t, tt.lsn-LSN(tt.offset), SegmentStart(seg, tt.segSize), "SegmentStart")
			name := SegmentFileName(tt.tli, seg, tt.segSize)
			assert.Equal(t, tt.file, name, "SegmentFileName")

			tli, back, err := ParseSegmentFileName(name, tt.segSize)
			require.NoError(t, err)
			assert.Equal(t, tt.tli, tli)
			assert.Equal(t, seg, back)
		})
	}
}

func TestParseSegmentFileName(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		segSize uint64
		tli     Timeline
		seg     SegmentNo
		wantErr string
	}{
		{name: "16MiB", in: "000000020000000000000008", segSize: DefaultSegmentSize, tli: 2, seg: 8},
		{name: "16MiB high part", in: "0000000100000016000000B3", segSize: DefaultSegmentSize, tli: 1, seg: 0x16B3},
		{name: "1MiB low FFF", in: "000000010000000000000FFF", segSize: mib, tli: 1, seg: 0xFFF},
		{name: "1GiB low 3", in: "000000010000000100000003", segSize: gib, tli: 1, seg: 7},
		{name: "16MiB low 100 out of range", in: "000000010000000000000100", segSize: DefaultSegmentSize, wantErr: "low part 00000100 is out of range"},
		{name: "1MiB low 100 ok", in: "000000010000000000000100", segSize: mib, tli: 1, seg: 0x100},
		{name: "1MiB low 1000 out of range", in: "000000010000000000001000", segSize: mib, wantErr: "out of range"},
		{name: "1GiB low 4 out of range", in: "000000010000000000000004", segSize: gib, wantErr: "out of range"},
		{name: "lower case", in: "0000000100000000000000ff", segSize: DefaultSegmentSize, wantErr: "24 upper-case hex digits"},
		{name: "short", in: "00000001000000000000000", segSize: DefaultSegmentSize, wantErr: "24 upper-case hex digits"},
		{name: "long", in: "0000000100000000000000001", segSize: DefaultSegmentSize, wantErr: "24 upper-case hex digits"},
		{name: "partial suffix", in: "000000010000000000000001.partial", segSize: DefaultSegmentSize, wantErr: "24 upper-case hex digits"},
		{name: "history", in: "00000002.history", segSize: DefaultSegmentSize, wantErr: "24 upper-case hex digits"},
		{name: "timeline 0", in: "000000000000000000000001", segSize: DefaultSegmentSize, wantErr: "timeline 0 is invalid"},
		{name: "bad segment size", in: "000000010000000000000001", segSize: 3 * mib, wantErr: "power of two"},
		{name: "zero segment size", in: "000000010000000000000001", segSize: 0, wantErr: "power of two"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tli, seg, err := ParseSegmentFileName(tt.in, tt.segSize)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Contains(t, err.Error(), tt.in)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.tli, tli)
			assert.Equal(t, tt.seg, seg)
		})
	}
}

func TestHistoryFileName(t *testing.T) {
	assert.Equal(t, "00000002.history", HistoryFileName(2))
	assert.Equal(t, "0000001A.history", HistoryFileName(26))
	assert.Equal(t, "FFFFFFFF.history", HistoryFileName(0xFFFFFFFF))

	tests := []struct {
		in      string
		want    Timeline
		wantErr string
	}{
		{in: "00000002.history", want: 2},
		{in: "0000001A.history", want: 26},
		{in: "00000001.history", want: 1},
		{in: "0000001a.history", wantErr: "upper-case"},
		{in: "00000000.history", wantErr: "timeline 0"},
		{in: "0000002.history", wantErr: "upper-case"},
		{in: "00000002.history.zst", wantErr: "upper-case"},
		{in: "00000002.HISTORY", wantErr: "upper-case"},
		{in: "000000020000000000000001", wantErr: "upper-case"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseHistoryFileName(tt.in)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			assert.Equal(t, tt.in, HistoryFileName(got))
		})
	}
}

func TestSplitFileName(t *testing.T) {
	tests := []struct {
		in          string
		base        string
		partial     bool
		compression string
		isSegment   bool
		isPartial   bool
		isHistory   bool
	}{
		{in: "000000010000000000000005", base: "000000010000000000000005", isSegment: true},
		{in: "000000010000000000000005.zst", base: "000000010000000000000005", compression: CompressionZstd},
		{in: "000000010000000000000005.lz4", base: "000000010000000000000005", compression: CompressionLZ4},
		{in: "000000010000000000000005.partial", base: "000000010000000000000005", partial: true, isPartial: true},
		{in: "000000010000000000000005.partial.zst", base: "000000010000000000000005", partial: true, compression: CompressionZstd, isPartial: true},
		{in: "000000010000000000000005.lz4.partial", base: "000000010000000000000005", partial: true, compression: CompressionLZ4, isPartial: true},
		{in: "000000010000000000000005.gz", base: "000000010000000000000005.gz"},
		{in: "000000010000000000000005.zst.zst", base: "000000010000000000000005.zst", compression: CompressionZstd},
		{in: "00000002.history", base: "00000002.history", isHistory: true},
		{in: "00000002.history.zst", base: "00000002.history", compression: CompressionZstd},
		{in: ".partial", base: ".partial"},
		{in: ".zst", base: ".zst"},
		{in: "", base: ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			base, partial, compression := SplitFileName(tt.in)
			assert.Equal(t, tt.base, base)
			assert.Equal(t, tt.partial, partial)
			assert.Equal(t, tt.compression, compression)
			assert.Equal(t, tt.isSegment, IsSegmentFileName(tt.in), "IsSegmentFileName")
			assert.Equal(t, tt.isPartial, IsPartialFileName(tt.in), "IsPartialFileName")
			assert.Equal(t, tt.isHistory, IsHistoryFileName(tt.in), "IsHistoryFileName")
		})
	}
}

func FuzzParseSegmentFileName(f *testing.F) {
	for _, s := range []string{"000000010000000000000005", "0000000100000016000000B3", "000000010000000000000FFF", "000000010000000100000003", "0000000100000000000000ff", "000000000000000000000001", "FFFFFFFFFFFFFFFFFFFFFFFF"} {
		for _, shift := range []uint8{20, 24, 30} {
			f.Add(s, shift)
		}
	}
	f.Fuzz(func(t *testing.T, name string, shift uint8) {
		// Any shift is allowed so invalid sizes are exercised too.
		segSize := uint64(1) << (shift % 64)
		tli, seg, err := ParseSegmentFileName(name, segSize)
		if err != nil {
			return
		}
		if ValidSegmentSize(segSize) != nil {
			t.Fatalf("accepted %q with invalid segment size %d", name, segSize)
		}
		if got := SegmentFileName(tli, seg, segSize); got != name {
			t.Fatalf("SegmentFileName(ParseSegmentFileName(%q)) = %q", name, got)
		}
		start := SegmentStart(seg, segSize)
		if SegmentOf(start, segSize) != seg || SegmentOffset(start, segSize) != 0 {
			t.Fatalf("segment %d of %q: start %v does not map back", seg, name, start)
		}
		last := start + LSN(segSize-1)
		if SegmentOf(last, segSize) != seg || SegmentOffset(last, segSize) != segSize-1 {
			t.Fatalf("segment %d of %q: last byte %v does not map back", seg, name, last)
		}
	})
}
