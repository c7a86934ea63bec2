package main

import (
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

// designSection returns section n ("## n. …" up to the next "## ") of
// docs/design.md, the contracts the code must keep.
func designSection(t *testing.T, n string) string {
	t.Helper()
	data, err := os.ReadFile("../../docs/design.md")
	require.NoError(t, err)
	var out []string
	in := false
	for line := range strings.SplitSeq(string(data), "\n") {
		if strings.HasPrefix(line, "## ") {
			in = strings.HasPrefix(line, "## "+n+".")
		}
		if in {
			out = append(out, line)
		}
	}
	require.NotEmpty(t, out, "docs/design.md has no section %s", n)
	return strings.Join(out, "\n")
}

var (
	backticked = regexp.MustCompile("`([^`]*)`")
	kebabName  = regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)+$`)
	flagName   = regexp.MustCompile(`--([a-z][a-z0-9-]*)(\*?)`)
)

// TestDesignConfigKeys: §6 of docs/design.md names every configuration key
// of pkg/config, and every key it names exists.
func TestDesignConfigKeys(t *testing.T) {
	doc := designSection(t, "6")
	keys := map[string]bool{}
	for _, k := range config.Keys() {
		keys[k.Name] = true
		if !strings.Contains(doc, "`"+k.Name+"`") {
			t.Errorf("docs/design.md §6 does not name the configuration key %s", k.Name)
		}
	}
	// Values and archive-url parameters that §6 spells like keys.
	notKeys := []string{"follow-master", "path-style", "part-size", "sse-kms-key-id", "ca-file"}
	for _, m := range backticked.FindAllStringSubmatch(doc, -1) {
		name := m[1]
		if kebabName.MatchString(name) && !keys[name] && !slices.Contains(notKeys, name) {
			t.Errorf("docs/design.md §6 names %q, which is no configuration key of pkg/config", name)
		}
	}
}

// TestDesignCLI: §4 of docs/design.md names every command and every flag
// of a command, and every flag it names exists.
func TestDesignCLI(t *testing.T) {
	doc := designSection(t, "4")
	root := newRootCommand(io.Discard, io.Discard)
	all := map[string]bool{}
	root.PersistentFlags().VisitAll(func(f *pflag.Flag) { all[f.Name] = true })
	for _, c := range root.Commands() {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			continue
		}
		if !strings.Contains(doc, "`barnacle "+c.Name()) && !strings.Contains(doc, "`"+c.Name()+"`") {
			t.Errorf("docs/design.md §4 does not name the command %s", c.Name())
		}
		c.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) {
			all[f.Name] = true
			if f.Hidden || f.Name == "help" {
				return
			}
			if !strings.Contains(doc, "--"+f.Name) {
				t.Errorf("docs/design.md §4 does not name %s's flag --%s", c.Name(), f.Name)
			}
		})
	}
	all["version"] = true // cobra's, from root.Version
	for _, m := range flagName.FindAllStringSubmatch(doc, -1) {
		name, wildcard := m[1], m[2] == "*"
		if wildcard {
			if !anyHasPrefix(all, name) {
				t.Errorf("docs/design.md §4 names --%s*, but no flag starts with --%s", name, name)
			}
			continue
		}
		if !all[name] {
			t.Errorf("docs/design.md §4 names --%s, which no command has", name)
		}
	}
}

func anyHasPrefix(set map[string]bool, prefix string) bool {
	for k := range set {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

// TestDesignEtcdKeys: the key table of §3 of docs/design.md lists the keys
// that coordinator and pkg/request write, and no others.
func TestDesignEtcdKeys(t *testing.T) {
	doc := designSection(t, "3")
	ck := coordinator.NewKeys("barnacle", "c")
	rk := request.Keys{Prefix: ck.Prefix}
	rel := func(key string) string { return strings.TrimPrefix(key, ck.Prefix) }
	// What the code writes, in the doc's notation.
	want := []string{
		rel(ck.Election()) + "/…",
		rel(ck.Agent("<agent-name>")),
	}
	// Every request kind has its three keys in the table.
	for _, kind := range request.Kinds {
		want = append(want,
			rel(rk.Request(kind, "<id>")),
			rel(rk.Status(kind, "<id>")),
			rel(rk.Claim(kind, "<id>")))
	}
	// The table's first column.
	var listed []string
	for line := range strings.SplitSeq(doc, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 3 || !strings.HasPrefix(line, "| `") {
			continue
		}
		for _, m := range backticked.FindAllStringSubmatch(cells[1], -1) {
			listed = append(listed, m[1])
		}
	}
	for _, k := range want {
		if !slices.Contains(listed, k) {
			t.Errorf("the key table of docs/design.md §3 does not list %s", k)
		}
	}
	for _, k := range listed {
		if !slices.Contains(want, k) {
			t.Errorf("the key table of docs/design.md §3 lists %s, which barnacle does not write (a new request kind? add it to request.Kinds)", k)
		}
	}
}
