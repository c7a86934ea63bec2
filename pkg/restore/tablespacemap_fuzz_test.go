package restore

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzRewriteTablespaceMap: whatever a backup's tablespace_map says, the
// rewritten file maps only the tablespaces the restore knows, each to the
// directory the restore chose (escaped as PostgreSQL reads it back), so a
// hostile map cannot send a tablespace anywhere else.
func FuzzRewriteTablespaceMap(f *testing.F) {
	for _, s := range []string{
		"16385 /a b\n16386 /x\\\\y\n", "16385 /srv/ts\n", "16387 /a\n", "junk\n", "\n\n16385 \n",
		"16385 /a\r\n", "4294967296 /a\n", "-1 /a\n", "16385\n", strings.Repeat("1", 5000) + " /a\n",
	} {
		f.Add([]byte(s))
	}
	dirs := map[uint32]string{16385: "/new dir", 16386: "/n\\m\nx", 1: "/r\rs"}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := rewriteTablespaceMap(data, dirs)
		if err != nil {
			return
		}
		for _, line := range splitTablespaceMap(string(out)) {
			oidStr, path, ok := strings.Cut(line, " ")
			if !ok {
				t.Fatalf("output line %q has no path", line)
			}
			oid, err := strconv.ParseUint(oidStr, 10, 32)
			if err != nil {
				t.Fatalf("output line %q: bad OID", line)
			}
			want, ok := dirs[uint32(oid)]
			if !ok {
				t.Fatalf("output maps unknown tablespace %d", oid)
			}
			if path != want {
				t.Fatalf("tablespace %d mapped to %q, want %q", oid, path, want)
			}
		}
	})
}

// splitTablespaceMap reads a tablespace_map as PostgreSQL's
// read_tablespace_map does: a backslash takes the next byte literally (an
// escaped newline stays in the path), an unescaped newline ends the line.
func splitTablespaceMap(s string) []string {
	var lines []string
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		case s[i] == '\n':
			if b.Len() > 0 {
				lines = append(lines, b.String())
			}
			b.Reset()
		default:
			b.WriteByte(s[i])
		}
	}
	if b.Len() > 0 {
		lines = append(lines, b.String())
	}
	return lines
}
