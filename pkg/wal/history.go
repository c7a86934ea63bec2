package wal

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// HistoryEntry is one line of a timeline history file: timeline Timeline (a
// parent of the file's timeline) ended at SwitchPoint, and the next timeline
// of the history began there. Reason is PostgreSQL's human-readable
// explanation, for example "no recovery target specified".
type HistoryEntry struct {
	Timeline    Timeline
	SwitchPoint LSN
	Reason      string
}

// ParseHistory parses the contents of a "<tli>.history" file in the format
// PostgreSQL's readTimeLineHistory reads: one "parentTLI<TAB>X/X<TAB>reason"
// line per ancestor timeline, oldest first. Blank lines and lines whose first
// non-space character is '#' are ignored (PostgreSQL itself writes a blank line
// between entries). Fields may be separated by any run of spaces or tabs;
// the reason is the rest of the line with surrounding white space removed and
// may be empty.
//
// It is stricter than PostgreSQL in two ways that only reject corrupt files:
// timeline 0 is refused, and switch points must not decrease (besides
// timelines having to increase strictly, which PostgreSQL also checks).
// Errors name the 1-based line number. An empty file yields no entries and
// no error.
func ParseHistory(data []byte) ([]HistoryEntry, error) {
	var entries []HistoryEntry
	lineNo := 0
	for len(data) > 0 {
		lineNo++
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		s := strings.TrimLeft(string(line), historySpace)
		if s == "" || s[0] == '#' {
			continue
		}
		e, err := parseHistoryLine(s)
		if err != nil {
			return nil, fmt.Errorf("parse history line %d: %w", lineNo, err)
		}
		if n := len(entries); n > 0 {
			prev := entries[n-1]
			if e.Timeline <= prev.Timeline {
				return nil, fmt.Errorf("parse history line %d: timeline %d does not follow %d: timelines must increase", lineNo, e.Timeline, prev.Timeline)
			}
			if e.SwitchPoint < prev.SwitchPoint {
				return nil, fmt.Errorf("parse history line %d: switch point %s is before the previous one %s", lineNo, e.SwitchPoint, prev.SwitchPoint)
			}
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// historySpace is the white space that separates fields: C isspace without
// '\n', which ends a line.
const historySpace = " \t\r\v\f"

func parseHistoryLine(s string) (HistoryEntry, error) {
	tliField, rest := splitField(s)
	tli, err := strconv.ParseUint(tliField, 10, 32)
	if err != nil || !isDecimal(tliField) {
		return HistoryEntry{}, fmt.Errorf("timeline %q is not a decimal number", tliField)
	}
	if tli == 0 {
		return HistoryEntry{}, fmt.Errorf("timeline 0 is invalid")
	}
	lsnField, rest := splitField(rest)
	if lsnField == "" {
		return HistoryEntry{}, fmt.Errorf("missing switch point after timeline %d", tli)
	}
	lsn, err := ParseLSN(lsnField)
	if err != nil {
		return HistoryEntry{}, fmt.Errorf("switch point: %w", err)
	}
	return HistoryEntry{
		Timeline:    Timeline(tli),
		SwitchPoint: lsn,
		Reason:      strings.Trim(rest, historySpace),
	}, nil
}

// splitField returns s up to the first white space, and what follows that run
// of white space.
func splitField(s string) (field, rest string) {
	i := strings.IndexAny(s, historySpace)
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimLeft(s[i:], historySpace)
}

func isDecimal(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// FormatHistory renders entries as PostgreSQL's writeTimeLineHistory writes a
// history file: "%u\t%X/%X\t%s\n" per entry, each entry after the first
// preceded by an empty line (PostgreSQL copies the parent's file and adds
// "\n" before the new line). ParseHistory(FormatHistory(e)) returns e for any
// e that ParseHistory produced. Reasons must not contain a newline.
func FormatHistory(entries []HistoryEntry) []byte {
	var b bytes.Buffer
	for i, e := range entries {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%d\t%s\t%s\n", uint32(e.Timeline), e.SwitchPoint, e.Reason)
	}
	return b.Bytes()
}

// TimelineOf returns the timeline that lsn belongs to on a server now on
// timeline current whose history file holds history (PostgreSQL's
// tliOfPointInHistory). A switch point belongs to the child timeline: the
// parent's WAL ends just before it. history must be as ParseHistory returns
// it for current's history file (oldest first, every timeline below current);
// with no history, every LSN is on current.
func TimelineOf(history []HistoryEntry, current Timeline, lsn LSN) Timeline {
	for _, e := range history {
		if lsn < e.SwitchPoint {
			return e.Timeline
		}
	}
	return current
}

// SwitchPoint returns the LSN where timeline tli ended according to history.
// ok is false when tli is not in history: it is the current timeline, or not
// an ancestor of it.
func SwitchPoint(history []HistoryEntry, tli Timeline) (lsn LSN, ok bool) {
	for _, e := range history {
		if e.Timeline == tli {
			return e.SwitchPoint, true
		}
	}
	return 0, false
}
