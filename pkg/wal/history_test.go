package wal

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pg15History3 is 00000003.history as PostgreSQL 15 wrote it in the Stolon
// fixtures' cluster (switch points from clusterdata-with-barman-slot: 84120672
// and 134217824): the parent's file copied, then "\n" and the new line.
const pg15History3 = "1\t0/5039460\tno recovery target specified\n\n2\t0/8000060\tno recovery target specified\n"

func TestParseHistory(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []HistoryEntry
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{name: "only comments", in: "# comment\n\n   \n\t# indented comment\n", want: nil},
		{
			name: "postgres 15 timeline 2",
			in:   "1\t0/5039A60\tno recovery target specified\n",
			want: []HistoryEntry{{1, 0x5039A60, "no recovery target specified"}},
		},
		{
			name: "postgres 15 timeline 3",
			in:   pg15History3,
			want: []HistoryEntry{
				{1, 84120672, "no recovery target specified"},
				{2, 134217824, "no recovery target specified"},
			},
		},
		{
			name: "postgres 19 zero padding and recovery target reason",
			in:   "1\t0/05039A60\tno recovery target specified\n\n4\t1/0A000000\tat restore point \"before upgrade\"\n",
			want: []HistoryEntry{
				{1, 0x5039A60, "no recovery target specified"},
				{4, 0x10A000000, "at restore point \"before upgrade\""},
			},
		},
		{
			name: "no trailing newline, CRLF, spaces, empty reason",
			in:   "1 0/10\r\n  2\t0/20\t  before 2026-11-24 17:55:13.569+00  \r\n3\t0/20",
			want: []HistoryEntry{
				{1, 0x10, ""},
				{2, 0x20, "before 2026-11-24 17:55:13.569+00"},
				{3, 0x20, ""},
			},
		},
		{name: "timeline not numeric", in: "x\t0/1\treason\n", wantErr: "line 1: timeline \"x\" is not a decimal number"},
		{name: "signed timeline", in: "+1\t0/1\treason\n", wantErr: "not a decimal number"},
		{name: "timeline too big", in: "4294967296\t0/1\n", wantErr: "not a decimal number"},
		{name: "timeline zero", in: "0\t0/1\n", wantErr: "line 1: timeline 0 is invalid"},
		{name: "missing switch point", in: "# c\n1\n", wantErr: "line 2: missing switch point"},
		{name: "bad switch point", in: "1\t0-1\treason\n", wantErr: "line 1: switch point: parse lsn"},
		{name: "timelines not increasing", in: "1\t0/1\n\n1\t0/2\n", wantErr: "line 3: timeline 1 does not follow 1"},
		{name: "timelines decreasing", in: "3\t0/1\n2\t0/2\n", wantErr: "line 2: timeline 2 does not follow 3"},
		{name: "switch points decreasing", in: "1\t0/20\n2\t0/10\n", wantErr: "line 2: switch point 0/10 is before the previous one 0/20"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHistory([]byte(tt.in))
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestFormatHistory(t *testing.T) {
	assert.Empty(t, FormatHistory(nil))
	assert.Equal(t, "1\t0/5039A60\tno recovery target specified\n",
		string(FormatHistory([]HistoryEntry{{1, 0x5039A60, "no recovery target specified"}})))

	entries, err := ParseHistory([]byte(pg15History3))
	require.NoError(t, err)
	assert.Equal(t, pg15History3, string(FormatHistory(entries)), "byte-identical to what PostgreSQL 15 wrote")
}

func TestTimelineOf(t *testing.T) {
	history := []HistoryEntry{
		{1, 84120672, "no recovery target specified"},
		{2, 134217824, "no recovery target specified"},
	}
	tests := []struct {
		name    string
		history []HistoryEntry
		current Timeline
		lsn     LSN
		want    Timeline
	}{
		{"no history", nil, 1, 0x123456789, 1},
		{"start", history, 3, 0, 1},
		{"last byte of tli 1", history, 3, 84120671, 1},
		{"switch point belongs to child", history, 3, 84120672, 2},
		{"inside tli 2", history, 3, 100000000, 2},
		{"tli 2 switch point", history, 3, 134217824, 3},
		{"far ahead", history, 3, 184549472, 3},
		{"gap in timeline ids", []HistoryEntry{{1, 0x100, ""}, {4, 0x200, ""}}, 7, 0x150, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, TimelineOf(tt.history, tt.current, tt.lsn))
		})
	}
}

func TestSwitchPoint(t *testing.T) {
	history := []HistoryEntry{{1, 84120672, ""}, {2, 134217824, ""}}
	tests := []struct {
		tli    Timeline
		want   LSN
		wantOK bool
	}{
		{1, 84120672, true},
		{2, 134217824, true},
		{3, 0, false},
		{0, 0, false},
	}
	for _, tt := range tests {
		t.Run(HistoryFileName(tt.tli), func(t *testing.T) {
			got, ok := SwitchPoint(history, tt.tli)
			assert.Equal(t, tt.wantOK, ok)
			assert.Equal(t, tt.want, got)
		})
	}
	_, ok := SwitchPoint(nil, 1)
	assert.False(t, ok)
}

func FuzzParseHistory(f *testing.F) {
	for _, s := range []string{
		"",
		pg15History3,
		"1\t0/5039A60\tno recovery target specified\n",
		"1\t0/05039A60\tno recovery target specified\n\n4\t1/0A000000\tat restore point \"x\"\n",
		"# comment\n\n1 0/10\r\n  2\t0/20\t  reason  \r\n3\t0/20",
		"1\t0/20\n2\t0/10\n",
		"0\t0/1\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := ParseHistory(data)
		if err != nil {
			return
		}
		formatted := FormatHistory(entries)
		again, err := ParseHistory(formatted)
		if err != nil {
			t.Fatalf("ParseHistory(FormatHistory(%q)) failed: %v\nformatted: %q", data, err, formatted)
		}
		if len(again) != len(entries) {
			t.Fatalf("round trip changed %d entries to %d", len(entries), len(again))
		}
		for i := range entries {
			if again[i] != entries[i] {
				t.Fatalf("round trip changed entry %d: %+v -> %+v", i, entries[i], again[i])
			}
		}
		if string(FormatHistory(again)) != string(formatted) {
			t.Fatalf("FormatHistory is not stable for %q", data)
		}
		if n := len(entries); n > 0 {
			current := entries[n-1].Timeline + 1
			if current == 0 {
				return // last timeline is the maximum; no child possible
			}
			for _, e := range entries {
				if got := TimelineOf(entries, current, e.SwitchPoint); got <= e.Timeline {
					t.Fatalf("TimelineOf(switch point of %d) = %d, want a later timeline", e.Timeline, got)
				}
			}
		}
	})
}
