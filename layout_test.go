package barnacle_test

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/barnacle-pg/barnacle"

type goPackage struct {
	ImportPath  string
	Dir         string
	Name        string
	GoFiles     []string
	TestGoFiles []string
	Imports     []string
}

func listPackages(t *testing.T) []goPackage {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p goPackage
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// TestLayout enforces STYLE.md §1: imports point downwards only
// (cmd -> agent -> coordinator -> pkg/*), and the leaves import nothing of
// ours.
func TestLayout(t *testing.T) {
	leaves := []string{"pkg/wal", "pkg/stolon", "pkg/config", "pkg/metrics", "pkg/storage", "pkg/compress", "pkg/redact", "pkg/durable", "pkg/pgversion"}
	// Sideways edges between siblings above the catalog: what they shared
	// (the archive's WAL index, the recoverable windows, the verified
	// segment reader) lives in pkg/catalog.
	sideways := map[[2]string]string{
		{"pkg/walfetch", "pkg/walstream"}: "wal-fetch reads the archive through pkg/catalog (WALIndex, OpenSegment), not the receiver",
		{"pkg/restore", "pkg/retention"}:  "restore reads the archive through pkg/catalog (ReadArchive, RecoverableWindows), not retention",
	}
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			dep := strings.TrimPrefix(imp, module+"/")
			var why string
			switch {
			case strings.HasPrefix(rel, "pkg/") && (dep == "agent" || dep == "coordinator" || strings.HasPrefix(dep, "cmd/")):
				why = "pkg/ never imports agent, coordinator or cmd"
			case rel == "coordinator" && (dep == "agent" || strings.HasPrefix(dep, "cmd/")):
				why = "coordinator never imports agent or cmd"
			case rel == "agent" && strings.HasPrefix(dep, "cmd/"):
				why = "agent never imports cmd"
			case dep == "internal/testenv":
				why = "internal/testenv is for tests only"
			case sideways[[2]string{rel, dep}] != "":
				why = sideways[[2]string{rel, dep}]
			}
			if dep == "pkg/redact" {
				// Every printed URL goes through pkg/redact, itself a
				// leaf, so every package may import it.
				if why != "" {
					t.Errorf("%s imports %s: %s", rel, dep, why)
				}
				continue
			}
			for _, leaf := range leaves {
				// storage's own subpackages may import storage.
				if rel == leaf && !(leaf == "pkg/storage" && strings.HasPrefix(dep, "pkg/storage")) {
					why = leaf + " is a leaf and imports nothing of ours"
				}
				// The instrumenting wrapper also uses the metric namespace;
				// the fs backend makes its files durable with the leaf
				// pkg/durable.
				if strings.HasPrefix(rel, "pkg/storage/") && !strings.HasPrefix(dep, "pkg/storage") &&
					!(rel == "pkg/storage/instrument" && dep == "pkg/metrics") &&
					!(rel == "pkg/storage/fs" && dep == "pkg/durable") {
					why = "storage backends import only pkg/storage"
				}
			}
			if why != "" {
				t.Errorf("%s imports %s: %s", rel, dep, why)
			}
		}
	}
}

// TestCLIImportsNoDaemon: the CLI reaches the agents only through etcd
// (pkg/request, coordinator's read-only views); of cmd/barnacle, only the
// file that runs the daemon imports package agent.
func TestCLIImportsNoDaemon(t *testing.T) {
	const allowed = "agent.go"
	for _, p := range listPackages(t) {
		if p.ImportPath != module+"/cmd/barnacle" {
			continue
		}
		files := append(append([]string{}, p.GoFiles...), p.TestGoFiles...)
		if len(files) == 0 {
			t.Fatal("cmd/barnacle has no Go files")
		}
		for _, f := range files {
			fset := token.NewFileSet()
			af, err := parser.ParseFile(fset, filepath.Join(p.Dir, f), nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				if strings.Trim(imp.Path.Value, `"`) == module+"/agent" && f != allowed {
					t.Errorf("cmd/barnacle/%s imports agent: only %s, which runs the daemon, may; use pkg/request for requests", f, allowed)
				}
			}
		}
	}
}

// TestPackageDocs checks that every package has a doc comment (STYLE.md §13).
func TestPackageDocs(t *testing.T) {
	for _, p := range listPackages(t) {
		if len(p.GoFiles) == 0 {
			continue
		}
		fset := token.NewFileSet()
		found := false
		for _, f := range p.GoFiles {
			af, err := parser.ParseFile(fset, filepath.Join(p.Dir, f), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if af.Doc != nil && strings.TrimSpace(af.Doc.Text()) != "" {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
}
