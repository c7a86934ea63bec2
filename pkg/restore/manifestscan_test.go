package restore

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// manifestSample is the shape PostgreSQL writes (pg_basebackup's
// backup_manifest), with the odd cases it can produce: an Encoded-Path
// for a name that is not UTF-8, a path with escapes, a large size.
const manifestSample = `{ "PostgreSQL-Backup-Manifest-Version": 2,
"System-Identifier": 7447158343584729216,
"Files": [
{ "Path": "backup_label", "Size": 226, "Last-Modified": "2026-12-06 18:22:04 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "2e9439f6" },
{ "Encoded-Path": "626173652f312fff", "Size": 0, "Last-Modified": "2026-12-06 18:21:20 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "00000000" },
{ "Path": "base/1/16384", "Size": 1073741824, "Last-Modified": "2026-12-06 18:21:21 GMT" },
{ "Path": "global/pg_control", "Size": 8192, "Last-Modified": "2026-12-06 18:22:04 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "43872087" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/25000028", "End-LSN": "0/25000100" }
],
"Manifest-Checksum": "eff57632401255ec5bf7f9b6441e6a8a0c4feebe765cc9ce1842a93ba960bfe0"}
`

// jsonFiles is what encoding/json makes of a manifest's Files, the
// reference scanManifest must agree with.
func jsonFiles(data []byte) ([]manifestFile, error) {
	var m struct {
		Files []manifestFile `json:"Files"`
	}
	err := json.Unmarshal(data, &m)
	return m.Files, err
}

func TestScanManifest(t *testing.T) {
	files, ok := scanManifest([]byte(manifestSample))
	if !ok {
		t.Fatal("PostgreSQL's manifest form is not scanned")
	}
	want, err := jsonFiles([]byte(manifestSample))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(files, want) {
		t.Fatalf("scanned %+v, encoding/json read %+v", files, want)
	}
	sizes, err := manifestSizes([]byte(manifestSample))
	if err != nil {
		t.Fatal(err)
	}
	next := 0
	for _, tc := range []struct {
		prefix, name string
		size         int64
		next         int
	}{
		{"", "backup_label", 226, 1},       // in order
		{"", "global/pg_control", 8192, 4}, // out of order
		{"base/", "1/16384", 1 << 30, 3},
		{"", "base/1/\xff", 0, 2},
	} {
		size, ok := sizes.size(tc.prefix, tc.name, &next)
		if !ok || size != tc.size || next != tc.next {
			t.Fatalf("size of %s%s: %d, %v, next %d; want %d, next %d", tc.prefix, tc.name, size, ok, next, tc.size, tc.next)
		}
	}
	if _, ok := sizes.size("", "base/1/1", &next); ok || sizes.files() != 4 {
		t.Fatalf("a file the manifest does not list has a size, or %d files", sizes.files())
	}
	// A path listed twice: the last listing counts, in order or not.
	dup, err := manifestSizes([]byte(`{"Files": [{"Path": "a", "Size": 1}, {"Path": "a", "Size": 2}]}`))
	if err != nil {
		t.Fatal(err)
	}
	next = 0
	if size, _ := dup.size("", "a", &next); size != 2 {
		t.Fatalf("a path listed twice has the size of its first listing, %d", size)
	}

	// What scanManifest leaves to encoding/json: the result must still
	// be encoding/json's, and invalid documents an error.
	for name, doc := range map[string]string{
		"escaped path":        `{"Files": [{"Path": "base/1/a\"b", "Size": 1}]}`,
		"case-folded key":     `{"Files": [{"path": "base/1/x", "Size": 1}]}`,
		"case-folded Files":   `{"files": [{"Path": "base/1/x", "Size": 1}]}`,
		"repeated key":        `{"Files": [{"Path": "a", "Path": "b", "Size": 1}]}`,
		"size with exponent":  `{"Files": [{"Path": "a", "Size": 1e3}]}`,
		"non-ASCII path":      `{"Files": [{"Path": "bäse", "Size": 1}]}`,
		"Files null":          `{"Files": null}`,
		"no Files":            `{"WAL-Ranges": []}`,
		"empty Files":         `{"Files": []}`,
		"negative size":       `{"Files": [{"Path": "a", "Size": -1}]}`,
		"trailing comma":      `{"Files": [{"Path": "a", "Size": 1},]}`,
		"trailing garbage":    `{"Files": []} x`,
		"bad literal":         `{"Files": [], "x": tru}`,
		"bad number":          `{"Files": [], "x": 01}`,
		"bad escape":          `{"Files": [], "x": "\q"}`,
		"control character":   "{\"Files\": [], \"x\": \"a\tb\"}",
		"size is a string":    `{"Files": [{"Path": "a", "Size": "1"}]}`,
		"deep":                `{"Files": [], "x": ` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`,
		"unterminated":        `{"Files": [{"Path": "a", "Size": 1}`,
		"not an object":       `[]`,
		"nested other values": `{"Files": [{"Path": "a", "Size": 1, "X": {"y": [1, -2.5e+3, true, false, null, "\u00e4"]}}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			checkScanAgrees(t, []byte(doc))
		})
	}
}

// checkScanAgrees fails when scanManifest accepts data and its reading
// differs from encoding/json's, or encoding/json rejects data.
func checkScanAgrees(t *testing.T, data []byte) {
	t.Helper()
	files, ok := scanManifest(data)
	want, err := jsonFiles(data)
	if !ok {
		return
	}
	if err != nil {
		t.Fatalf("scanManifest accepted %q, which encoding/json rejects: %v", data, err)
	}
	if len(files) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(files, want) {
		t.Fatalf("%q: scanned %+v, encoding/json read %+v", data, files, want)
	}
}

// FuzzScanManifest: scanManifest never accepts a document that
// encoding/json rejects or reads differently.
func FuzzScanManifest(f *testing.F) {
	f.Add([]byte(manifestSample))
	f.Add([]byte(`{"Files": [{"Path": "a", "Size": 1}], "x": [1, {"a": "\u0041"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkScanAgrees(t, data)
	})
}
