package drill

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// includeRE matches an include directive of postgresql.conf's syntax
// (include, include_if_exists, include_dir; "=" optional; the name in
// single quotes with ” or \ escapes, or unquoted).
var includeRE = regexp.MustCompile(`(?i)^\s*(include_dir|include_if_exists|include)\b\s*=?\s*(?:'((?:[^'\\]|\\.|'')*)'|([A-Za-z0-9_.:/-]+))`)

// dropOutsideIncludes comments out every include directive of the restored
// configuration (postgresql.conf, postgresql.auto.conf and the files they
// include from inside dataDir) that names a file or directory outside
// dataDir: a path of the source host (include '/etc/postgresql/…') would
// make the server refuse to start on a drill host without it, and on one
// that has it, it would read the drill host's settings, which the backup
// never had. Includes inside dataDir came with the backup and stay. It
// returns the directives it commented out, "file: line".
func dropOutsideIncludes(dataDir string) ([]string, error) {
	var dropped []string
	seen := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		if seen[name] {
			return nil
		}
		seen[name] = true
		data, err := os.ReadFile(name)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("drill: read %s: %w", name, err)
		}
		lines := bytes.SplitAfter(data, []byte("\n"))
		changed := false
		var next []string
		for i, line := range lines {
			m := includeRE.FindSubmatch(line)
			if m == nil {
				continue
			}
			target := string(m[3])
			if m[2] != nil {
				target = strings.NewReplacer(`''`, `'`, `\\`, `\`, `\'`, `'`).Replace(string(m[2]))
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(name), target)
			}
			target = filepath.Clean(target)
			if inside(dataDir, target) {
				if strings.EqualFold(string(m[1]), "include_dir") {
					files, _ := filepath.Glob(filepath.Join(target, "*.conf"))
					sort.Strings(files)
					next = append(next, files...)
				} else {
					next = append(next, target)
				}
				continue
			}
			dropped = append(dropped, filepath.Base(name)+": "+strings.TrimSpace(string(line)))
			lines[i] = append([]byte("# barnacle drill: names a path outside the restored data directory: "), line...)
			changed = true
		}
		if changed {
			st, err := os.Stat(name)
			if err != nil {
				return fmt.Errorf("drill: %w", err)
			}
			// Writing in place keeps the file's owner (the server's user).
			if err := os.WriteFile(name, bytes.Join(lines, nil), st.Mode().Perm()); err != nil {
				return fmt.Errorf("drill: rewrite %s: %w", name, err)
			}
		}
		for _, n := range next {
			if err := visit(n); err != nil {
				return err
			}
		}
		return nil
	}
	for _, name := range []string{"postgresql.conf", "postgresql.auto.conf"} {
		if err := visit(filepath.Join(dataDir, name)); err != nil {
			return dropped, err
		}
	}
	return dropped, nil
}

// inside reports whether path (clean, absolute) is dir or below it.
func inside(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
