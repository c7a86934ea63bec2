// Package request is barnacle's etcd request protocol (DESIGN.md §3, §5):
// the keys of backup, restore and drill requests, of their statuses and of
// their claim markers, the request types with the one parser each, the status
// document, and the queue operations on them: watch (by revision), claim,
// progress, finish, withdraw, the sweep of requests whose agent died and
// the expiry of finished ones. The agent daemon serves requests through
// it; the CLI, the schedule and the leader after a WAL gap write and
// follow them through it. It knows nothing about leadership: a write that
// only the leader may make takes the leader's fence as a comparison.
//
// Queue.Claim (queue.go) is the one place a request is claimed: one etcd
// transaction per claim, so that a request is claimed exactly once.
//
// Other modules may import this package, but its API is not stable.
package request

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/restore"
)

// Kind is the kind of a request: the middle part of its keys.
type Kind string

// The kinds of request.
const (
	KindBackup  Kind = "backup"
	KindRestore Kind = "restore"
	KindDrill   Kind = "drill"
)

// Kinds lists every kind of request, for whoever must cover them all.
var Kinds = []Kind{KindBackup, KindRestore, KindDrill}

// Keys lays out the request keys of one cluster.
type Keys struct {
	// Prefix is "<barnacle-prefix>/<cluster>/", with the trailing slash:
	// coordinator.Keys's Prefix, under which the agents' records and the
	// election live too.
	Prefix string
}

// Requests is the prefix of the requests of kind: requests/<kind>/.
func (k Keys) Requests(kind Kind) string { return k.Prefix + "requests/" + string(kind) + "/" }

// Request is the key of request id of kind.
func (k Keys) Request(kind Kind, id string) string { return k.Requests(kind) + id }

// Statuses is the prefix of the statuses of kind: status/<kind>/.
func (k Keys) Statuses(kind Kind) string { return k.Prefix + "status/" + string(kind) + "/" }

// Status is the status key of request id of kind.
func (k Keys) Status(kind Kind, id string) string { return k.Statuses(kind) + id }

// Claims is the prefix of the claim markers of kind: claimed/<kind>/.
func (k Keys) Claims(kind Kind) string { return k.Prefix + "claimed/" + string(kind) + "/" }

// Claim is the key that records that request id of kind was claimed. It
// lives as long as the request, so that deleting the status key never runs
// the request again.
func (k Keys) Claim(kind Kind, id string) string { return k.Claims(kind) + id }

// Backup is the value of requests/backup/<id>, for every writer
// (barnacle backup, the schedule, the leader after a WAL gap) and the one
// reader, ParseBackup, which refuses unknown fields.
type Backup struct {
	// From is "master", "standby" or "any"; "" is "master".
	From  string `json:"from"`
	Label string `json:"label"`
	// RequestedBy and RequestedAt say which agent asked and when, for
	// requests an agent writes on its own (after a WAL gap).
	RequestedBy string    `json:"requestedBy,omitempty"`
	RequestedAt time.Time `json:"requestedAt,omitzero"`
}

// Kind is KindBackup.
func (Backup) Kind() Kind { return KindBackup }

// Where a backup is taken from.
const (
	FromMaster  = "master"
	FromStandby = "standby"
	FromAny     = "any"
)

// ParseBackup reads a backup request, refusing unknown fields and anything
// after the one JSON object, and says what to change when it cannot run.
// From comes back as "master" or "standby": "" and "any" run on the master.
func ParseBackup(value []byte) (Backup, error) {
	var req Backup
	if err := decodeStrict(value, &req, `{"from":"master","label":"nightly"}`); err != nil {
		return req, err
	}
	if err := req.validate(); err != nil {
		return req, err
	}
	if req.From != FromStandby {
		req.From = FromMaster
	}
	return req, nil
}

// validate checks From.
func (r Backup) validate() error {
	switch r.From {
	case "", FromMaster, FromAny, FromStandby:
		return nil
	}
	return fmt.Errorf(`unknown from %q: use "master", "standby" or "any"`, r.From)
}

// GapBackup is the request the leader writes after recording a WAL gap:
// from any server, since any backup after the gap ends it.
func GapBackup(agent, label string, now time.Time) Backup {
	return Backup{From: FromAny, Label: label, RequestedBy: agent, RequestedAt: now}
}

// GapID names the request GapBackup makes: gap-<UTC time>-<4 random hex
// digits>.
func GapID(now time.Time) string {
	return fmt.Sprintf("gap-%s-%04x", now.UTC().Format("20060102T150405"), rand.N(1<<16))
}

// Drill is the value of requests/drill/<id>: run a restore drill
// (package drill) on an agent that may (DrillEligible), and record it in
// the archive. barnacle drill and the leader's restore-drill-schedule
// write it; ParseDrill is its one reader.
type Drill struct {
	// Agent, when set, names the agent that must run the drill; "" lets
	// any eligible agent claim it.
	Agent string `json:"agent,omitempty"`
	// RequestedBy and RequestedAt say who asked (a user's host, or the
	// leader for a scheduled drill) and when.
	RequestedBy string    `json:"requestedBy,omitempty"`
	RequestedAt time.Time `json:"requestedAt,omitzero"`
}

// Kind is KindDrill.
func (Drill) Kind() Kind { return KindDrill }

// ParseDrill reads a drill request, refusing unknown fields and anything
// after the one JSON object, and checks its fields, naming the one at
// fault.
func ParseDrill(value []byte) (Drill, error) {
	var req Drill
	if err := decodeStrict(value, &req, `{"agent":"keeper1","requestedBy":"ops"}`); err != nil {
		return req, err
	}
	return req, req.Validate()
}

// Validate checks the fields of a drill request.
func (r Drill) Validate() error {
	if r.Agent != "" && (strings.TrimSpace(r.Agent) != r.Agent || strings.ContainsAny(r.Agent, "/\x00")) {
		return fmt.Errorf(`agent %q: name an agent as barnacle status lists it, or leave it out to let any eligible agent run the drill`, r.Agent)
	}
	if len(r.RequestedBy) > 256 {
		return fmt.Errorf("requestedBy is %d bytes long: use at most 256", len(r.RequestedBy))
	}
	return nil
}

// Restore is the value of requests/restore/<id> (DESIGN.md §5).
type Restore struct {
	// Keeper is the Stolon keeper UID whose agent restores, on its host.
	Keeper string `json:"keeper"`
	// Backup is an ID, "latest" or "" (the newest before the target).
	Backup    string `json:"backup,omitempty"`
	TargetDir string `json:"targetDir"`
	// Target holds at most one of its fields; none is the end of WAL.
	Target RestoreTarget `json:"target,omitzero"`
	// TargetExclusive stops just before a time, LSN or xid target
	// (recovery_target_inclusive = off).
	TargetExclusive bool   `json:"targetExclusive,omitempty"`
	TargetTimeline  string `json:"targetTimeline,omitempty"`
	TargetAction    string `json:"targetAction,omitempty"`
	Force           bool   `json:"force,omitempty"`
	// DataOnly restores without recovery.signal and settings.
	DataOnly bool `json:"dataOnly,omitempty"`
	// TablespaceMap maps tablespace OIDs (as strings) to directories,
	// which must lie under restore-root too.
	TablespaceMap map[string]string `json:"tablespaceMap,omitempty"`
}

// Kind is KindRestore.
func (Restore) Kind() Kind { return KindRestore }

// RestoreTarget is where recovery stops.
type RestoreTarget struct {
	Time      string `json:"time,omitempty"`
	LSN       string `json:"lsn,omitempty"`
	XID       string `json:"xid,omitempty"`
	Name      string `json:"name,omitempty"`
	Immediate bool   `json:"immediate,omitempty"`
}

// ParseRestore reads a restore request, refusing unknown fields and
// anything after the one JSON object. Its fields are checked by Validate;
// its directories only by the agent that runs it, against its
// restore-root.
func ParseRestore(value []byte) (Restore, error) {
	var req Restore
	err := decodeStrict(value, &req, `{"keeper":"keeper1","targetDir":"/restore/pitr","target":{"time":"2026-11-25T10:00:00Z"}}`)
	return req, err
}

// RestoreSpec is what Validate makes of a restore request's fields that
// need no host to check.
type RestoreSpec struct {
	Target    restore.Target
	Inclusive *bool
	Timeline  restore.TimelineTarget
	// Tablespaces maps the OIDs of TablespaceMap to its directories, as
	// given (not yet checked against restore-root).
	Tablespaces map[uint32]string
}

// Validate checks the tablespace OIDs, the recovery target and the
// timeline, naming the request's field at fault.
func (r Restore) Validate() (RestoreSpec, error) {
	var s RestoreSpec
	for oid, dir := range r.TablespaceMap {
		n, err := strconv.ParseUint(oid, 10, 32)
		if err != nil || n == 0 {
			return s, fmt.Errorf("tablespaceMap key %q: use the tablespace OID, as show-backup lists it", oid)
		}
		if s.Tablespaces == nil {
			s.Tablespaces = map[uint32]string{}
		}
		s.Tablespaces[uint32(n)] = dir
	}
	t := r.Target
	spec := restore.TargetSpec{Time: t.Time, LSN: t.LSN, XID: t.XID, Name: t.Name, Immediate: t.Immediate, Exclusive: r.TargetExclusive}
	var err error
	if s.Target, s.Inclusive, err = spec.Parse(restoreField); err != nil {
		return s, err
	}
	if s.Timeline, err = restore.ParseTimelineTarget(r.TargetTimeline); err != nil {
		return s, err
	}
	return s, nil
}

// restoreField names a target field as a restore request spells it.
func restoreField(field string) string {
	if field == "exclusive" {
		return "targetExclusive"
	}
	return "target." + field
}

// decodeStrict reads one JSON object into v, refusing unknown fields and
// trailing data; example shows what to write instead.
func decodeStrict(value []byte, v any, example string) error {
	dec := json.NewDecoder(strings.NewReader(string(value)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf(`malformed request: %v; write JSON such as %s`, err, example)
	}
	// `{...} {"x":1}` is not one request.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf(`malformed request: trailing data after the JSON object; write one JSON object such as %s`, example)
	}
	return nil
}
