// Package retention turns a retention policy and the catalog into a
// deletion plan, and applies the plan to the archive.
//
// MakePlan is pure: it sees the backups and the WAL listing as values and
// decides, with a reason for each backup, what goes and what stays. Apply
// does the I/O, re-checking every backup just before deleting it.
//
// Semantics (Barman's, with the differences noted):
//
//   - Only done backups count. Running backups are never touched, and the
//     WAL from their start is kept so they can finish.
//   - REDUNDANCY N keeps the N newest done backups.
//   - RECOVERY WINDOW keeps every done backup that ended at or after the
//     window's start, and the newest done backup that ended before it: that
//     one is the base needed to recover to the window's first moment.
//     Ending, not starting, is what counts (as in Barman): a backup that
//     straddles the window's start is consistent only after it, so it cannot
//     be the base and the next older one is kept too.
//   - minimum-redundancy: never fewer done backups than that; the newest ones
//     the policy would delete are kept instead.
//   - A backup marked keep (barnacle keep) is never deleted, and it counts
//     toward REDUNDANCY and minimum-redundancy like any other done backup, as
//     in Barman: REDUNDANCY 3 keeps the three newest done backups, kept or
//     not, plus every older kept one. Its WAL is kept as well and, because
//     WAL is only cut below the oldest kept backup, so is all the WAL after
//     it (Barman's keep:full).
//   - A failed backup older than the oldest done backup the policy keeps is
//     deleted; newer failed backups stay for inspection.
//   - WAL: a segment is deleted only when no kept done backup and no running
//     backup can need it: for each of them, the segment lies on that
//     backup's start timeline or one of its ancestors (per the timeline's
//     history file), ends at or before the backup's start LSN, and, on an
//     ancestor, ends at or before the point where that ancestor ended.
//     Recovery from a backup never reads WAL before its start, so such a
//     segment is dead. Segments of any other timeline (a dead branch, a
//     timeline no kept backup descends from, an ancestor whose history file
//     is missing) are kept. Every .history file, every .partial and every
//     conflict copy (<name>.conflict-<time>) is kept; names that are none of
//     these are kept and reported. Without a done backup nothing is deleted.
//
// Other modules may import this package, but its API is not stable: barnacle
// makes no compatibility promise for it.
package retention

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Policy is what to keep. The zero value (no policy) keeps everything.
type Policy struct {
	// Redundancy is N of REDUNDANCY N; 0 for a recovery window.
	Redundancy int
	// WindowStart is the oldest moment a RECOVERY WINDOW policy keeps
	// recoverable (now minus the window); zero for a redundancy policy.
	WindowStart time.Time
	// MinimumRedundancy is the fewest done backups retention leaves.
	MinimumRedundancy int
	// Text is the policy as the user wrote it, for messages.
	Text string
}

// IsZero reports whether p sets no policy, so that nothing is deleted.
func (p Policy) IsZero() bool { return p.Redundancy <= 0 && p.WindowStart.IsZero() }

// WALFile is an object of the cluster's WAL prefix.
type WALFile struct {
	// Name is the object's name relative to catalog.WALPrefix.
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// Input is everything MakePlan looks at.
type Input struct {
	Policy Policy
	// Backups are the cluster's backups, any status, any order (as
	// catalog.ListBackups returns them, unreadable ones included).
	Backups []catalog.Backup
	// WAL lists the WAL prefix.
	WAL []WALFile
	// Histories holds the parsed history file of each timeline found in
	// the archive. A missing one only makes MakePlan keep more WAL.
	Histories map[wal.Timeline][]wal.HistoryEntry
	// WALSegmentSize is the archive's segment size; 0 (unknown) keeps all
	// WAL.
	WALSegmentSize uint64
	// Notes are problems met while gathering the input (an unreadable
	// history file); MakePlan copies them into the plan.
	Notes []string
}

// Rule says which rule decided a backup's fate; Reason says it in words.
type Rule string

// Rules for kept and deleted backups.
const (
	RuleNoPolicy          Rule = "no-policy"          // kept: no retention policy is set
	RuleRedundancy        Rule = "redundancy"         // kept: one of the N newest done backups
	RuleWindow            Rule = "window"             // kept: ended within the recovery window
	RuleWindowBase        Rule = "window-base"        // kept: the base needed for the window's start
	RuleMinimumRedundancy Rule = "minimum-redundancy" // kept: minimum-redundancy overrides the policy
	RuleKeep              Rule = "keep"               // kept: marked keep
	RuleRunning           Rule = "running"            // kept: still running
	RuleFailedRecent      Rule = "failed-recent"      // kept: failed, but not older than the oldest backup the policy keeps
	RuleNotBackupID       Rule = "not-a-backup-id"    // kept: the directory name is not a backup ID
	RuleBeyondRedundancy  Rule = "beyond-redundancy"  // deleted
	RuleOutsideWindow     Rule = "outside-window"     // deleted
	RuleFailedOld         Rule = "failed-old"         // deleted
)

// Decision is one backup's fate.
type Decision struct {
	ID            string               `json:"id"`
	Status        catalog.BackupStatus `json:"status"`
	Keep          bool                 `json:"keep,omitempty"`
	StartTime     time.Time            `json:"startTime"`
	StopTime      time.Time            `json:"stopTime"`
	StartLSN      wal.LSN              `json:"startLSN"`
	StartTimeline wal.Timeline         `json:"startTimeline"`
	StoredBytes   int64                `json:"storedBytes"`
	Rule          Rule                 `json:"rule"`
	Reason        string               `json:"reason"`
}

// WALPlan is what happens to the WAL prefix.
type WALPlan struct {
	// Delete lists the segments to delete, oldest first (by end LSN, then
	// timeline).
	Delete      []WALFile `json:"delete"`
	DeleteBytes int64     `json:"deleteBytes"`
	// KeptSegments counts the segments kept (complete ones, any
	// compression), KeptBytes the bytes of everything kept.
	KeptSegments int   `json:"keptSegments"`
	KeptBytes    int64 `json:"keptBytes"`
	// Histories, Partials, Conflicts and Unknown are kept always.
	Histories []string `json:"histories"`
	Partials  []string `json:"partials"`
	Conflicts []string `json:"conflicts"`
	Unknown   []string `json:"unknown"`
	// Floor is the lowest start LSN among the backups that protect WAL (kept
	// done and running ones), and FloorBackup that backup; empty when none.
	Floor       string `json:"floor,omitempty"`
	FloorBackup string `json:"floorBackup,omitempty"`
	// KeptAll says why no segment at all may be deleted; empty otherwise.
	KeptAll string `json:"keptAll,omitempty"`
}

// Plan is MakePlan's answer.
type Plan struct {
	Policy Policy `json:"-"`
	// PolicyText, WindowStart and MinimumRedundancy repeat the policy for
	// output.
	PolicyText        string    `json:"policy"`
	WindowStart       time.Time `json:"windowStart,omitzero"`
	MinimumRedundancy int       `json:"minimumRedundancy"`
	// Delete lists the backups to delete, oldest first; Keep the others,
	// newest first.
	Delete []Decision `json:"delete"`
	Keep   []Decision `json:"keep"`
	WAL    WALPlan    `json:"wal"`
	Notes  []string   `json:"notes,omitempty"`
}

// MakePlan decides what retention deletes; see the package doc for the
// rules. It is pure and never fails: what it cannot judge it keeps, with a
// note.
func MakePlan(in Input) Plan {
	p := Plan{Policy: in.Policy, PolicyText: in.Policy.Text, WindowStart: in.Policy.WindowStart, MinimumRedundancy: in.Policy.MinimumRedundancy,
		Delete: []Decision{}, Keep: []Decision{}, Notes: slices.Clone(in.Notes)}

	// Newest first, as the catalog lists them; names that are not backup
	// IDs have no known age and are set aside.
	var valid []catalog.Backup
	for _, b := range in.Backups {
		if _, _, err := catalog.ParseBackupID(b.ID); err != nil {
			p.Keep = append(p.Keep, decision(b, RuleNotBackupID, "the name is not a backup ID, so its age is unknown: inspect it and delete it by hand"))
			continue
		}
		valid = append(valid, b)
	}
	slices.SortStableFunc(valid, func(a, b catalog.Backup) int { return catalog.CompareBackupIDs(b.ID, a.ID) })

	keep, del := decideDone(in.Policy, valid)

	// The oldest done backup kept by the policy (not merely by its keep
	// mark) bounds failed ones: an old kept backup must not pin every failed
	// attempt made since.
	oldestPolicyKept := ""
	for _, b := range valid {
		if d, ok := keep[b.ID]; ok && d.Rule != RuleKeep {
			oldestPolicyKept = b.ID // valid is newest first
		}
	}
	var out []Decision
	for _, b := range valid {
		if d, ok := keep[b.ID]; ok {
			out = append(out, d)
			continue
		}
		if d, ok := del[b.ID]; ok {
			out = append(out, d)
			continue
		}
		switch {
		case b.Status == catalog.StatusRunning:
			out = append(out, decision(b, RuleRunning, "running"))
		case b.Keep:
			out = append(out, decision(b, RuleKeep, "marked keep (barnacle keep ID --release undoes it)"))
		case in.Policy.IsZero():
			out = append(out, decision(b, RuleFailedRecent, "failed; no retention policy is set"))
		case oldestPolicyKept != "" && catalog.CompareBackupIDs(b.ID, oldestPolicyKept) < 0:
			out = append(out, decision(b, RuleFailedOld, "failed and older than "+oldestPolicyKept+", the oldest backup the policy keeps (backups marked keep aside)"))
		case oldestPolicyKept == "":
			out = append(out, decision(b, RuleFailedRecent, "failed; kept while no done backup is kept"))
		default:
			out = append(out, decision(b, RuleFailedRecent, "failed, but newer than "+oldestPolicyKept+", the oldest backup the policy keeps; kept for inspection"))
		}
	}
	for _, d := range out {
		if d.Rule.deletes() {
			p.Delete = append(p.Delete, d)
		} else {
			p.Keep = append(p.Keep, d)
		}
	}
	// Keep newest first with the unnamed ones last; Delete oldest first.
	slices.SortStableFunc(p.Keep, func(a, b Decision) int {
		if (a.Rule == RuleNotBackupID) != (b.Rule == RuleNotBackupID) {
			if a.Rule == RuleNotBackupID {
				return 1
			}
			return -1
		}
		return catalog.CompareBackupIDs(b.ID, a.ID)
	})
	slices.Reverse(p.Delete)

	p.WAL = planWAL(in, valid, keep, &p.Notes)
	return p
}

func (r Rule) deletes() bool {
	return r == RuleBeyondRedundancy || r == RuleOutsideWindow || r == RuleFailedOld
}

func decision(b catalog.Backup, r Rule, reason string) Decision {
	return Decision{ID: b.ID, Status: b.Status, Keep: b.Keep, StartTime: b.StartTime, StopTime: b.StopTime,
		StartLSN: b.StartLSN, StartTimeline: b.StartTimeline, StoredBytes: b.StoredBytes, Rule: r, Reason: reason}
}

// decideDone applies the policy to the done backups, given newest first.
// A backup's keep mark saves it but does not change the count: every kept
// done backup counts toward the policy and minimum-redundancy, as in
// Barman.
func decideDone(pol Policy, newestFirst []catalog.Backup) (keep, del map[string]Decision) {
	keep, del = map[string]Decision{}, map[string]Decision{}
	kept := 0
	windowBaseFound := false
	for _, b := range newestFirst {
		if b.Status != catalog.StatusDone {
			continue
		}
		var rule Rule
		var reason string
		switch {
		case pol.IsZero():
			rule, reason = RuleNoPolicy, "no retention policy is set"
		case pol.Redundancy > 0 && kept < pol.Redundancy:
			rule, reason = RuleRedundancy, fmt.Sprintf("one of the %d newest done backups (%s)", pol.Redundancy, pol.Text)
		case pol.Redundancy == 0 && !windowBaseFound:
			// A backup without a stop time is malformed; its start is the
			// best guess of when it became usable.
			end := cmp.Or(b.StopTime, b.StartTime)
			if end.Before(pol.WindowStart) {
				windowBaseFound = true
				rule, reason = RuleWindowBase, fmt.Sprintf("newest done backup that ended before the recovery window's start %s: needed to recover to it",
					pol.WindowStart.UTC().Format(time.RFC3339))
			} else {
				rule, reason = RuleWindow, fmt.Sprintf("ended within the recovery window (%s)", pol.Text)
			}
		case kept < pol.MinimumRedundancy:
			rule, reason = RuleMinimumRedundancy, fmt.Sprintf("minimum-redundancy %d keeps it although the policy would not", pol.MinimumRedundancy)
		case b.Keep:
			rule, reason = RuleKeep, "marked keep (barnacle keep ID --release undoes it)"
		case pol.Redundancy > 0:
			rule, reason = RuleBeyondRedundancy, fmt.Sprintf("beyond REDUNDANCY %d", pol.Redundancy)
		default:
			rule, reason = RuleOutsideWindow, fmt.Sprintf("older than the recovery window (it starts %s) and not its base",
				pol.WindowStart.UTC().Format(time.RFC3339))
		}
		d := decision(b, rule, reason)
		if rule.deletes() {
			del[b.ID] = d
			continue
		}
		if b.Keep && rule != RuleKeep {
			d.Reason += "; also marked keep"
		}
		keep[b.ID] = d
		kept++
	}
	return keep, del
}

// protector is a backup whose WAL from its start must stay.
type protector struct {
	id       string
	start    wal.LSN
	timeline wal.Timeline
	history  []wal.HistoryEntry // of timeline; nil for timeline 1 or when missing
}

// releases reports whether recovery from p can never read the segment of
// timeline tli that ends at end (exclusive).
func (p protector) releases(tli wal.Timeline, end wal.LSN) bool {
	if tli == p.timeline {
		return end <= p.start
	}
	sp, ok := wal.SwitchPoint(p.history, tli)
	return ok && end <= min(p.start, sp)
}

func planWAL(in Input, newestFirst []catalog.Backup, keep map[string]Decision, notes *[]string) WALPlan {
	wp := WALPlan{Delete: []WALFile{}, Histories: []string{}, Partials: []string{}, Conflicts: []string{}, Unknown: []string{}}
	var prots []protector
	var floor wal.LSN
	doneKept := 0
	for _, b := range newestFirst {
		_, kept := keep[b.ID]
		running := b.Status == catalog.StatusRunning
		if !(kept && b.Status == catalog.StatusDone) && !running {
			continue
		}
		start := b.StartLSN
		if start == wal.InvalidLSN || b.StartTimeline == 0 {
			if running {
				// Not started streaming yet: its start will be at the
				// server's current position, above every done backup's.
				continue
			}
			wp.KeptAll = fmt.Sprintf("kept backup %s has no valid start (LSN %s, timeline %d)", b.ID, b.StartLSN, b.StartTimeline)
			break
		}
		if running && start == 0 {
			continue
		}
		if b.Status == catalog.StatusDone {
			doneKept++
		}
		pr := protector{id: b.ID, start: start, timeline: b.StartTimeline}
		if b.StartTimeline > 1 {
			h, ok := in.Histories[b.StartTimeline]
			if !ok {
				*notes = append(*notes, fmt.Sprintf("history file %s is missing: WAL of the timelines before %d is kept (backup %s starts on %d)",
					wal.HistoryFileName(b.StartTimeline), b.StartTimeline, b.ID, b.StartTimeline))
			}
			pr.history = h
		}
		prots = append(prots, pr)
		if wp.Floor == "" || start < floor {
			floor = start
			wp.Floor, wp.FloorBackup = start.String(), b.ID
		}
	}
	switch {
	case wp.KeptAll != "":
	case in.Policy.IsZero():
		wp.KeptAll = "no retention policy is set"
	case doneKept == 0:
		wp.KeptAll = "no done backup is kept, so every WAL file may be needed"
	case wal.ValidSegmentSize(in.WALSegmentSize) != nil:
		wp.KeptAll = fmt.Sprintf("the archive's WAL segment size is unknown or invalid (%d)", in.WALSegmentSize)
	}

	type seg struct {
		f   WALFile
		tli wal.Timeline
		end wal.LSN
	}
	var deletable []seg
	objs := make([]storage.ObjectInfo, len(in.WAL))
	for i, f := range in.WAL {
		objs[i] = storage.ObjectInfo{Name: f.Name, Size: f.Size}
	}
	ix := catalog.IndexWAL(objs, "", in.WALSegmentSize)
	kept := func(list *[]string, objs []catalog.WALObject) {
		for _, o := range objs {
			*list = append(*list, o.Name)
			wp.KeptBytes += o.Size
		}
	}
	kept(&wp.Histories, ix.Histories())
	kept(&wp.Conflicts, ix.Conflicts())
	kept(&wp.Unknown, ix.Unknown())
	for _, o := range ix.Segments() {
		f := WALFile{Name: o.Name, Size: o.Size}
		switch {
		case o.Partial:
			wp.Partials = append(wp.Partials, f.Name)
		case wp.KeptAll != "":
			wp.KeptSegments++
		default:
			end := wal.SegmentStart(o.Segment+1, in.WALSegmentSize)
			if slices.ContainsFunc(prots, func(p protector) bool { return !p.releases(o.Timeline, end) }) {
				wp.KeptSegments++
				break
			}
			deletable = append(deletable, seg{f: f, tli: o.Timeline, end: end})
			continue
		}
		wp.KeptBytes += f.Size
	}
	slices.SortFunc(deletable, func(a, b seg) int {
		return cmp.Or(cmp.Compare(a.end, b.end), cmp.Compare(a.tli, b.tli), strings.Compare(a.f.Name, b.f.Name))
	})
	for _, s := range deletable {
		wp.Delete = append(wp.Delete, s.f)
		wp.DeleteBytes += s.f.Size
	}
	return wp
}
