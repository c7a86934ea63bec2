package main

import (
	"encoding"
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/barnacle-pg/barnacle/pkg/backup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/check"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/restore"
	"github.com/barnacle-pg/barnacle/pkg/walfetch"
)

// camelCase is the JSON key form of docs/design.md: a lower-case first
// letter, no separators (initialisms stay capitals: backupID).
var camelCase = regexp.MustCompile(`^[a-z][a-zA-Z0-9]*$`)

// TestJSONKeysAreCamelCase walks the Go type of every --json output and
// of every etcd document the CLI prints, and checks that each key a struct
// field produces is camelCase: a field without a json tag would print its
// Go name (BackupID), as verify-backup and restore did.
func TestJSONKeysAreCamelCase(t *testing.T) {
	outputs := map[string]any{
		"list-backups, backup --local": []catalog.Backup{},
		"show-backup":                  backupDetail{},
		"verify-backup":                backup.VerifyReport{},
		"verify-wal":                   walfetch.Report{},
		"restore":                      restore.Result{},
		"restore --via-etcd":           request.RestoreStatus{},
		"backup --wait":                request.BackupStatus{},
		"retention":                    retentionOutput{},
		"status":                       statusOutput{},
		"check":                        []check.Result{},
		"backup request (etcd)":        request.Backup{},
		"restore request (etcd)":       request.Restore{},
		"drill --wait":                 request.DrillStatus{},
		"list-drills":                  []catalog.Drill{},
		"drill request (etcd)":         request.Drill{},
	}
	for name, v := range outputs {
		t.Run(name, func(t *testing.T) {
			for _, bad := range nonCamelKeys(reflect.TypeOf(v), "", map[reflect.Type]bool{}) {
				t.Errorf("%s: key %s is not camelCase", name, bad)
			}
		})
	}
}

// nonCamelKeys returns the paths of the keys of t's JSON form that are not
// camelCase. Map keys are data (tablespace OIDs, directories), not names,
// and are not checked.
func nonCamelKeys(t reflect.Type, path string, seen map[reflect.Type]bool) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if seen[t] {
		return nil
	}
	// A type that marshals itself (time.Time, LSNs) has no keys of ours.
	if t.Implements(reflect.TypeFor[json.Marshaler]()) || reflect.PointerTo(t).Implements(reflect.TypeFor[json.Marshaler]()) ||
		t.Implements(reflect.TypeFor[encoding.TextMarshaler]()) || reflect.PointerTo(t).Implements(reflect.TypeFor[encoding.TextMarshaler]()) {
		return nil
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array, reflect.Map:
		return nonCamelKeys(t.Elem(), path+"[]", seen)
	case reflect.Struct:
	default:
		return nil
	}
	seen[t] = true
	defer delete(seen, t)
	var bad []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" && tag == "-" {
			continue
		}
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		if f.Anonymous && name == "" {
			// Embedded: its fields are promoted into this object.
			bad = append(bad, nonCamelKeys(f.Type, path, seen)...)
			continue
		}
		if name == "" {
			name = f.Name
		}
		if !camelCase.MatchString(name) {
			bad = append(bad, path+"."+name)
		}
		bad = append(bad, nonCamelKeys(f.Type, path+"."+name, seen)...)
	}
	return bad
}
