package restore

import (
	"bytes"
	"strings"
)

// manifestFile is what restore needs of one entry of a backup manifest's
// "Files" array.
type manifestFile struct {
	Path        string `json:"Path"`
	EncodedPath string `json:"Encoded-Path"`
	Size        int64  `json:"Size"`
}

// scanManifest reads the "Files" array of a backup manifest the way
// json.Unmarshal into a struct of manifestFile would, about ten times
// faster: on a manifest of 121,000 files (17 MB) json.Unmarshal took
// 0.2 s, all of it before the first archive member could be written
// (issue 21). It checks the whole document's JSON syntax, but understands
// only the plain form PostgreSQL writes: ok is false, and the caller
// must use encoding/json, as soon as anything could make its reading
// differ from encoding/json's (an escape or a non-ASCII byte in a key or
// in a path, a key that matches one it reads only case-insensitively, a
// repeated key, a size that is not a plain integer, null for an array or
// object, deep nesting). So whatever it returns with ok is what
// encoding/json returns; invalid JSON is never ok.
func scanManifest(data []byte) (files []manifestFile, ok bool) {
	s := &jsonScan{b: data}
	s.space()
	if !s.byte('{') {
		return nil, false
	}
	seenFiles := false
	more, ok := s.objectStart()
	for ok && more {
		var key []byte
		if key, ok = s.key(); !ok {
			return nil, false
		}
		switch {
		case string(key) == "Files":
			if seenFiles {
				return nil, false
			}
			seenFiles = true
			if files, ok = s.files(); !ok {
				return nil, false
			}
		case bytes.EqualFold(key, []byte("Files")):
			return nil, false
		default:
			if !s.value(1) {
				return nil, false
			}
		}
		more, ok = s.objectNext()
	}
	if !ok {
		return nil, false
	}
	s.space()
	return files, s.i == len(s.b)
}

// maxScanDepth bounds the nesting scanManifest follows; deeper documents
// go to encoding/json. A manifest nests three levels.
const maxScanDepth = 32

// jsonScan is a cursor over a JSON document.
type jsonScan struct {
	b []byte
	i int
}

func (s *jsonScan) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// byte consumes c, after white space, if it comes next.
func (s *jsonScan) byte(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// objectStart is called after '{' and objectNext after a member's value:
// more says whether a member follows (its key next), ok whether the
// syntax holds.
func (s *jsonScan) objectStart() (more, ok bool) {
	if s.byte('}') {
		return false, true
	}
	return true, true
}

func (s *jsonScan) objectNext() (more, ok bool) {
	if s.byte(',') {
		return true, true
	}
	return false, s.byte('}')
}

// key reads a member's key and its colon. Keys with escapes or bytes
// outside ASCII are not ok: encoding/json would unescape or case-fold
// them before matching.
func (s *jsonScan) key() ([]byte, bool) {
	k, ok := s.plainString()
	if !ok || !s.byte(':') {
		return nil, false
	}
	return k, true
}

// plainString reads a string of printable ASCII without escapes, and
// returns its content.
func (s *jsonScan) plainString() ([]byte, bool) {
	if !s.byte('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return s.b[start : s.i-1], true
		case c < 0x20 || c >= 0x80 || c == '\\':
			return nil, false
		}
		s.i++
	}
	return nil, false
}

// files reads the array of file entries.
func (s *jsonScan) files() ([]manifestFile, bool) {
	if !s.byte('[') {
		return nil, false // null or anything else: encoding/json decides
	}
	// PostgreSQL writes one entry a line, of about 140 bytes.
	files := make([]manifestFile, 0, len(s.b)/128)
	if s.byte(']') {
		return files, true
	}
	for {
		f, ok := s.file()
		if !ok {
			return nil, false
		}
		files = append(files, f)
		if s.byte(',') {
			continue
		}
		if s.byte(']') {
			return files, true
		}
		return nil, false
	}
}

// file reads one entry of the Files array.
func (s *jsonScan) file() (f manifestFile, ok bool) {
	if !s.byte('{') {
		return f, false
	}
	var seenPath, seenEncoded, seenSize bool
	more, ok := s.objectStart()
	for ok && more {
		var key []byte
		if key, ok = s.key(); !ok {
			return f, false
		}
		switch string(key) {
		case "Path", "Encoded-Path":
			v, ok := s.plainString()
			if !ok {
				return f, false
			}
			if key[0] == 'P' {
				if seenPath {
					return f, false
				}
				seenPath, f.Path = true, string(v)
			} else {
				if seenEncoded {
					return f, false
				}
				seenEncoded, f.EncodedPath = true, string(v)
			}
		case "Size":
			if seenSize {
				return f, false
			}
			seenSize = true
			if f.Size, ok = s.size(); !ok {
				return f, false
			}
		default:
			k := string(key)
			if strings.EqualFold(k, "Path") || strings.EqualFold(k, "Encoded-Path") || strings.EqualFold(k, "Size") {
				return f, false
			}
			if !s.value(3) {
				return f, false
			}
		}
		more, ok = s.objectNext()
	}
	return f, ok
}

// size reads a non-negative integer of at most 18 digits (no fraction,
// exponent or sign: encoding/json's int64 rules for those are left to it).
func (s *jsonScan) size() (int64, bool) {
	s.space()
	start := s.i
	var n int64
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		n = n*10 + int64(s.b[s.i]-'0')
		s.i++
	}
	digits := s.i - start
	if digits == 0 || digits > 18 || (digits > 1 && s.b[start] == '0') {
		return 0, false
	}
	if s.i < len(s.b) {
		switch s.b[s.i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	return n, true
}

// value checks any JSON value, at nesting depth.
func (s *jsonScan) value(depth int) bool {
	if depth > maxScanDepth {
		return false
	}
	s.space()
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '{':
		s.i++
		more, ok := s.objectStart()
		for ok && more {
			if !s.anyString() || !s.byte(':') || !s.value(depth+1) {
				return false
			}
			more, ok = s.objectNext()
		}
		return ok
	case c == '[':
		s.i++
		if s.byte(']') {
			return true
		}
		for {
			if !s.value(depth + 1) {
				return false
			}
			if s.byte(',') {
				continue
			}
			return s.byte(']')
		}
	case c == '"':
		return s.anyString()
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
				s.i += len(lit)
				return true
			}
		}
		return false
	}
}

// anyString checks a string with any valid escapes; bytes outside ASCII
// are accepted as encoding/json accepts them.
func (s *jsonScan) anyString() bool {
	if !s.byte('"') {
		return false
	}
	for s.i < len(s.b) {
		c := s.b[s.i]
		s.i++
		switch {
		case c == '"':
			return true
		case c < 0x20:
			return false
		case c == '\\':
			if s.i >= len(s.b) {
				return false
			}
			e := s.b[s.i]
			s.i++
			switch e {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if s.i+4 > len(s.b) {
					return false
				}
				for _, h := range s.b[s.i : s.i+4] {
					if !isHex(h) {
						return false
					}
				}
				s.i += 4
			default:
				return false
			}
		}
	}
	return false
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// number checks -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?.
func (s *jsonScan) number() bool {
	digits := func() int {
		start := s.i
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
		}
		return s.i - start
	}
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	start := s.i
	n := digits()
	if n == 0 || (n > 1 && s.b[start] == '0') {
		return false
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if digits() == 0 {
			return false
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}
