// Package check holds `barnacle check` as data: the names of the checks,
// the pure functions that turn gathered facts into an OK or FAILED result
// with a hint saying what to do, the WAL continuity computation over an
// archive listing, and the renderers (Barman-style text, Nagios, JSON).
// Gathering the facts (etcd, PostgreSQL, the archive) is the caller's job.
//
// Other modules may import this package, but its API is not stable.
package check

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Names of the checks, in the order `barnacle check` prints them. They are
// part of the output contract: Nagios and scripts match on them.
const (
	NameEtcd              = "etcd"
	NameClusterData       = "clusterdata"
	NameAgents            = "agents beside keepers"
	NamePostgreSQL        = "PostgreSQL"
	NameReplicationRole   = "replication role"
	NameWALLevel          = "wal_level"
	NameWALSenders        = "wal senders headroom"
	NameSlotsHeadroom     = "replication slots headroom"
	NameSlot              = "replication slot"
	NameStandbySlots      = "standby slots"
	NameStreaming         = "streaming"
	NameArchive           = "archive writable"
	NameIdentity          = "archive identity"
	NameWALContinuity     = "WAL continuity"
	NameBackupMaximumAge  = "backup maximum age"
	NameMinimumRedundancy = "minimum redundancy requirements"
	NameFailedBackups     = "failed backups"
	NameRestoreDrill      = "restore drill"
	NameRetention         = "retention policy settings"
	NameFreeSpace         = "archive free space"
)

// Result is the outcome of one check. Hint is set when OK is false and
// says what to do; Detail is optional context for an OK result (shown in
// JSON only, so that the text output stays one `name: OK` line).
type Result struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Hint   string `json:"hint,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Pass returns an OK result.
func Pass(name, detail string) Result { return Result{Name: name, OK: true, Detail: detail} }

// Fail returns a FAILED result with a hint.
func Fail(name, hint string) Result { return Result{Name: name, Hint: hint} }

// Failf is Fail with a formatted hint.
func Failf(name, format string, args ...any) Result {
	return Fail(name, fmt.Sprintf(format, args...))
}

// line renders one result as `name: OK` or `name: FAILED (hint)`.
func (r Result) line() string {
	if r.OK {
		return r.Name + ": OK"
	}
	if r.Hint == "" {
		return r.Name + ": FAILED"
	}
	return r.Name + ": FAILED (" + oneLine(r.Hint) + ")"
}

// oneLine keeps a hint (often an error message) on one output line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// WriteText writes Barman's console format: a header naming the cluster,
// then one tab-indented `name: OK|FAILED (hint)` line per result.
func WriteText(w io.Writer, cluster string, results []Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Cluster %s:\n", cluster)
	for _, r := range results {
		b.WriteString("\t" + r.line() + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Nagios exit codes (the Nagios plugin API); barnacle, like Barman, uses
// only OK and CRITICAL.
const (
	NagiosOK       = 0
	NagiosCritical = 2
)

// WriteNagios writes Nagios plugin output in the shape of Barman's
// ("<TOOL> <STATUS> - <text>", so that what parses Barman's parses it) and
// returns the plugin exit code. All OK: "BARNACLE OK - cluster <cluster>:
// all <n> checks passed" (barnacle's own words, not Barman's).
// Otherwise the first line is "BARNACLE CRITICAL - server <cluster> has
// issues * <cluster> FAILED: <check>, <check>" and each failed check
// follows on its own line as "<cluster>.<check>: FAILED (hint)", Nagios's
// long service output.
func WriteNagios(w io.Writer, cluster string, results []Result) (int, error) {
	var failed []Result
	for _, r := range results {
		if !r.OK {
			failed = append(failed, r)
		}
	}
	var b strings.Builder
	code := NagiosOK
	if len(failed) == 0 {
		fmt.Fprintf(&b, "BARNACLE OK - cluster %s: all %d checks passed\n", cluster, len(results))
	} else {
		code = NagiosCritical
		names := make([]string, len(failed))
		for i, r := range failed {
			names[i] = r.Name
		}
		fmt.Fprintf(&b, "BARNACLE CRITICAL - server %s has issues * %s FAILED: %s\n", cluster, cluster, strings.Join(names, ", "))
		for _, r := range failed {
			b.WriteString(cluster + "." + r.line() + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return code, err
}

// WriteJSON writes the results as a JSON list of {name, ok, hint, detail}.
func WriteJSON(w io.Writer, results []Result) error {
	if results == nil {
		results = []Result{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(results)
}
