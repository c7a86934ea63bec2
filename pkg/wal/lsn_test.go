package wal

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLSNString(t *testing.T) {
	tests := []struct {
		lsn  LSN
		want string
	}{
		{0, "0/0"},
		{0x5039A28, "0/5039A28"},
		{0x16B374D848, "16/B374D848"},
		{1 << 32, "1/0"},
		{^LSN(0), "FFFFFFFF/FFFFFFFF"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			assert.Equal(t, tt.want, tt.lsn.String())
		})
	}
}

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in      string
		want    LSN
		wantErr string
	}{
		{in: "0/0", want: 0},
		{in: "16/B374D848", want: 0x16B374D848},
		{in: "16/b374d848", want: 0x16B374D848},
		{in: "0/05039A28", want: 0x5039A28}, // PostgreSQL 19 pads the low part
		{in: "00000000/00000001", want: 1},
		{in: "FFFFFFFF/FFFFFFFF", want: ^LSN(0)},
		{in: "", wantErr: "missing '/'"},
		{in: "5039A28", wantErr: "missing '/'"},
		{in: "/0", wantErr: "high part"},
		{in: "0/", wantErr: "low part"},
		{in: "100000000/0", wantErr: "1 to 8 hex digits"},
		{in: "0/100000000", wantErr: "1 to 8 hex digits"},
		{in: "0/G", wantErr: "not hexadecimal"},
		{in: "0/0/0", wantErr: "low part"},
		{in: " 0/0", wantErr: "high part"},
		{in: "0/0 ", wantErr: "low part"},
		{in: "+1/0", wantErr: "not hexadecimal"},
		{in: "0x1/0", wantErr: "not hexadecimal"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseLSN(tt.in)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Contains(t, err.Error(), "parse lsn")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"0/0", "16/B374D848", "16/b374d848", "0/05039A28", "FFFFFFFF/FFFFFFFF", "", "/", "1/", "123456789/0", "0x1/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lsn, err := ParseLSN(s)
		if err != nil {
			return
		}
		back, err := ParseLSN(lsn.String())
		if err != nil {
			t.Fatalf("ParseLSN(%q) = %v, but ParseLSN(%q) failed: %v", s, lsn, lsn.String(), err)
		}
		if back != lsn {
			t.Fatalf("round trip of %q: %v != %v", s, back, lsn)
		}
	})
}

func TestLSNText(t *testing.T) {
	// Every input ParseLSN accepts reads the same through UnmarshalText,
	// and every one it refuses is refused, except "" (InvalidLSN).
	for _, in := range []string{"0/0", "16/B374D848", "16/b374d848", "0/05039A28", "FFFFFFFF/FFFFFFFF", "5039A28", "/0", "0/", "0/G", " 0/0", "0x1/0"} {
		want, wantErr := ParseLSN(in)
		var got LSN
		err := got.UnmarshalText([]byte(in))
		if wantErr != nil {
			assert.EqualError(t, err, wantErr.Error(), in)
			continue
		}
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	var empty LSN = 7
	require.NoError(t, empty.UnmarshalText(nil))
	assert.Equal(t, InvalidLSN, empty)

	for l, want := range map[LSN]string{InvalidLSN: "", 0x3000060: "0/3000060", 0x16B374D848: "16/B374D848"} {
		got, err := l.MarshalText()
		require.NoError(t, err)
		assert.Equal(t, want, string(got))
	}
}

func TestLSNJSON(t *testing.T) {
	type doc struct {
		Start LSN `json:"startLSN"`
		Stop  LSN `json:"stopLSN,omitempty"`
	}
	b, err := json.Marshal(doc{Start: 0x3000060})
	require.NoError(t, err)
	assert.Equal(t, `{"startLSN":"0/3000060"}`, string(b))
	b, err = json.Marshal(doc{})
	require.NoError(t, err)
	assert.Equal(t, `{"startLSN":""}`, string(b))

	var d doc
	require.NoError(t, json.Unmarshal([]byte(`{"startLSN":"16/b374d848","stopLSN":null}`), &d))
	assert.Equal(t, doc{Start: 0x16B374D848}, d)

	// A bad position names its field.
	for in, want := range map[string]string{
		`{"startLSN":"0/3000060","stopLSN":"3000060"}`: `Go struct field doc.stopLSN of type wal.LSN`,
		`{"startLSN":"0/G"}`:                           `string "0/G" (parse lsn "0/G": low part`,
		`{"startLSN":50331744}`:                        `non-string 50331744 into Go struct field doc.startLSN`,
	} {
		err := json.Unmarshal([]byte(in), &d)
		require.Error(t, err, in)
		assert.Contains(t, err.Error(), want, in)
	}
}
