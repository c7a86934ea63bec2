package wal

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL log sequence number: a byte position in the WAL stream.
// The zero value is PostgreSQL's InvalidXLogRecPtr.
type LSN uint64

// InvalidLSN is PostgreSQL's InvalidXLogRecPtr; no WAL record starts there.
const InvalidLSN LSN = 0

// String formats l the way PostgreSQL prints pg_lsn values up to version 18:
// "%X/%X", upper-case hex, no padding (for example "16/B374D848").
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// ParseLSN parses the textual form accepted by PostgreSQL's pg_lsn input:
// two groups of 1 to 8 hex digits (either case) separated by '/'. It accepts
// the zero-padded low part printed by newer PostgreSQL versions ("0/05039A28")
// and rejects signs, spaces, "0x" prefixes and anything else.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("parse lsn %q: missing '/' (want X/X in hex)", s)
	}
	h, err := parseLSNHalf(hi)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: high part: %w", s, err)
	}
	l, err := parseLSNHalf(lo)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: low part: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

func parseLSNHalf(s string) (uint64, error) {
	if len(s) < 1 || len(s) > 8 {
		return 0, fmt.Errorf("want 1 to 8 hex digits, got %d characters", len(s))
	}
	if !isHex(s, false) {
		return 0, fmt.Errorf("%q is not hexadecimal", s)
	}
	// Cannot fail: at most 8 validated hex digits.
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return 0, err
	}
	return v, nil
}

// isHex reports whether s is non-empty and made only of hex digits; with
// upperOnly, lower-case letters are refused (PostgreSQL's file names are
// upper-case, and IsXLogFileName rejects lower case).
func isHex(s string, upperOnly bool) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9', c >= 'A' && c <= 'F':
		case !upperOnly && c >= 'a' && c <= 'f':
		default:
			return false
		}
	}
	return true
}

// MarshalText writes l in String's form, so that documents keep PostgreSQL's
// "0/3000060". InvalidLSN is written as "": in barnacle's documents an empty
// position means "not known yet" (a running backup has no stop LSN), and no
// WAL record starts at 0/0.
func (l LSN) MarshalText() ([]byte, error) {
	if l == InvalidLSN {
		return []byte{}, nil
	}
	return []byte(l.String()), nil
}

// UnmarshalText reads what ParseLSN accepts, and "" as InvalidLSN (see
// MarshalText).
func (l *LSN) UnmarshalText(text []byte) error {
	if len(text) == 0 {
		*l = InvalidLSN
		return nil
	}
	v, err := ParseLSN(string(text))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// UnmarshalJSON reads a JSON string the way UnmarshalText does. It exists so
// that a bad position comes back as a *json.UnmarshalTypeError, to which
// encoding/json adds the name of the field that held it.
func (l *LSN) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return &json.UnmarshalTypeError{Value: "non-string " + string(data), Type: reflect.TypeFor[LSN]()}
	}
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return &json.UnmarshalTypeError{Value: fmt.Sprintf("string %q (%v)", s, err), Type: reflect.TypeFor[LSN]()}
	}
	return nil
}
