package retention

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

const segSize = 16 << 20

// lsn is the LSN off bytes into segment n.
func lsn(n, off uint64) wal.LSN { return wal.LSN(n*segSize + off) }

// segName names segment n of timeline tli.
func segName(tli wal.Timeline, n uint64) string {
	return wal.SegmentFileName(tli, wal.SegmentNo(n), segSize)
}

// segs lists segments first..last of tli, each segSize bytes.
func segs(tli wal.Timeline, first, last uint64) []WALFile {
	var out []WALFile
	for n := first; n <= last; n++ {
		out = append(out, WALFile{Name: segName(tli, n), Size: segSize})
	}
	return out
}

func names(fs []WALFile) []string {
	out := []string{}
	for _, f := range fs {
		out = append(out, f.Name)
	}
	return out
}

// bk is a backup whose ID is its start time, starting 40 bytes into
// segment startSeg on timeline 1 and ending an hour later.
func bk(id string, status catalog.BackupStatus, startSeg uint64) catalog.Backup {
	start, _, err := catalog.ParseBackupID(id)
	if err != nil {
		panic(err)
	}
	return catalog.Backup{ID: id, Status: status, StartLSN: lsn(startSeg, 40), StopLSN: lsn(startSeg+1, 0x100),
		StartTimeline: 1, StopTimeline: 1, StartTime: start, StopTime: start.Add(time.Hour), WALSegmentSize: segSize}
}

func done(id string, startSeg uint64) catalog.Backup { return bk(id, catalog.StatusDone, startSeg) }

func kept(b catalog.Backup) catalog.Backup { b.Keep = true; return b }

func onTimeline(b catalog.Backup, tli wal.Timeline) catalog.Backup {
	b.StartTimeline, b.StopTimeline = tli, tli
	return b
}

func endingAt(b catalog.Backup, stop string) catalog.Backup {
	t, err := time.Parse(time.RFC3339, stop)
	if err != nil {
		panic(err)
	}
	b.StopTime = t
	return b
}

func redundancy(n, minimum int) Policy {
	return Policy{Redundancy: n, MinimumRedundancy: minimum, Text: "REDUNDANCY"}
}

func window(start string, minimum int) Policy {
	t, err := time.Parse(time.RFC3339, start)
	if err != nil {
		panic(err)
	}
	return Policy{WindowStart: t, MinimumRedundancy: minimum, Text: "RECOVERY WINDOW OF 7 DAYS"}
}

func ruleOf(ds []Decision) map[string]Rule {
	out := map[string]Rule{}
	for _, d := range ds {
		out[d.ID] = d.Rule
	}
	return out
}

func TestMakePlan(t *testing.T) {
	// TL1 switched to TL2 at 0/6000100, inside segment 6.
	switchTo2 := []wal.HistoryEntry{{Timeline: 1, SwitchPoint: wal.LSN(6*segSize + 0x100), Reason: "no recovery target specified"}}
	timelineWAL := append(append(segs(1, 1, 7), WALFile{Name: "00000002.history", Size: 42}), segs(2, 6, 10)...)

	tests := []struct {
		name      string
		in        Input
		deleted   map[string]Rule // backups deleted, by rule
		keep      map[string]Rule // backups kept, by rule
		order     []string        // Delete's IDs in order, when it matters
		walGone   []string        // WAL names deleted, in order
		keptAll   string          // substring of WALPlan.KeptAll
		note      string          // substring of a note
		floor     string
		checkPlan func(t *testing.T, p Plan)
	}{
		{
			name: "redundancy keeps the N newest done backups",
			in: Input{Policy: redundancy(2, 0), WAL: segs(1, 1, 10), Backups: []catalog.Backup{
				done("20260101T000000", 1), done("20260102T000000", 3), done("20260103T000000", 5), done("20260104T000000", 7)}},
			deleted: map[string]Rule{"20260101T000000": RuleBeyondRedundancy, "20260102T000000": RuleBeyondRedundancy},
			keep:    map[string]Rule{"20260103T000000": RuleRedundancy, "20260104T000000": RuleRedundancy},
			order:   []string{"20260101T000000", "20260102T000000"},
			// Segment 5 holds the oldest kept backup's start.
			walGone: names(segs(1, 1, 4)),
			floor:   lsn(5, 40).String(),
			checkPlan: func(t *testing.T, p Plan) {
				assert.Equal(t, "beyond REDUNDANCY 2", p.Delete[0].Reason)
				assert.Equal(t, int64(4*segSize), p.WAL.DeleteBytes)
				assert.Equal(t, 6, p.WAL.KeptSegments)
				assert.Equal(t, "20260103T000000", p.WAL.FloorBackup)
			},
		},
		{
			name: "input order does not matter",
			in: Input{Policy: redundancy(1, 0), WAL: segs(1, 1, 4), Backups: []catalog.Backup{
				done("20260102T000000", 3), done("20260101T000000", 1), done("20260103T000000", 4)}},
			deleted: map[string]Rule{"20260101T000000": RuleBeyondRedundancy, "20260102T000000": RuleBeyondRedundancy},
			keep:    map[string]Rule{"20260103T000000": RuleRedundancy},
			order:   []string{"20260101T000000", "20260102T000000"},
			walGone: names(segs(1, 1, 3)),
		},
		{
			name: "minimum-redundancy overrides a smaller redundancy",
			in: Input{Policy: redundancy(1, 2), WAL: segs(1, 1, 6), Backups: []catalog.Backup{
				done("20260101T000000", 1), done("20260102T000000", 3), done("20260103T000000", 5)}},
			deleted: map[string]Rule{"20260101T000000": RuleBeyondRedundancy},
			keep:    map[string]Rule{"20260103T000000": RuleRedundancy, "20260102T000000": RuleMinimumRedundancy},
			walGone: names(segs(1, 1, 2)),
		},
		{
			name: "failed and running backups",
			in: Input{Policy: redundancy(2, 0), WAL: segs(1, 1, 12), Backups: []catalog.Backup{
				bk("20260101T000000", catalog.StatusFailed, 1),
				done("20260102T000000", 2),
				bk("20260103T000000", catalog.StatusFailed, 3),
				done("20260104T000000", 5),
				bk("20260105T000000", catalog.StatusFailed, 6),
				done("20260106T000000", 8),
				bk("20260107T000000", catalog.StatusFailed, 9),
				bk("20260108T000000", catalog.StatusRunning, 10),
			}},
			deleted: map[string]Rule{
				"20260101T000000": RuleFailedOld, "20260102T000000": RuleBeyondRedundancy, "20260103T000000": RuleFailedOld,
			},
			keep: map[string]Rule{
				"20260104T000000": RuleRedundancy, "20260105T000000": RuleFailedRecent, "20260106T000000": RuleRedundancy,
				"20260107T000000": RuleFailedRecent, "20260108T000000": RuleRunning,
			},
			order:   []string{"20260101T000000", "20260102T000000", "20260103T000000"},
			walGone: names(segs(1, 1, 4)),
			checkPlan: func(t *testing.T, p Plan) {
				assert.Equal(t, "failed and older than 20260104T000000, the oldest backup the policy keeps (backups marked keep aside)", p.Delete[0].Reason)
			},
		},
		{
			name: "a stale running backup keeps the WAL from its start",
			in: Input{Policy: redundancy(1, 0), WAL: segs(1, 1, 8), Backups: []catalog.Backup{
				done("20260101T000000", 1),
				bk("20260102T000000", catalog.StatusRunning, 3),
				done("20260103T000000", 6),
				{ID: "20260104T000000", Status: catalog.StatusRunning}, // no start LSN yet
			}},
			deleted: map[string]Rule{"20260101T000000": RuleBeyondRedundancy},
			keep: map[string]Rule{"20260102T000000": RuleRunning, "20260103T000000": RuleRedundancy,
				"20260104T000000": RuleRunning},
			walGone: names(segs(1, 1, 2)),
			floor:   lsn(3, 40).String(),
		},
		{
			name: "recovery window: the newest backup that ended before the start is the base",
			in: Input{Policy: window("2026-01-10T00:00:00Z", 0), WAL: segs(1, 1, 10), Backups: []catalog.Backup{
				done("20260101T000000", 1), done("20260105T000000", 3), done("20260108T000000", 5), done("20260112T000000", 7)}},
			deleted: map[string]Rule{"20260101T000000": RuleOutsideWindow, "20260105T000000": RuleOutsideWindow},
			keep:    map[string]Rule{"20260108T000000": RuleWindowBase, "20260112T000000": RuleWindow},
			walGone: names(segs(1, 1, 4)),
		},
		{
			name: "recovery window: a backup straddling the start is not the base",
			in: Input{Policy: window("2026-01-10T00:00:00Z", 0), WAL: segs(1, 1, 10), Backups: []catalog.Backup{
				done("20260101T000000", 1),
				done("20260105T000000", 3),
				endingAt(done("20260109T233000", 5), "2026-01-10T00:30:00Z"),
				done("20260112T000000", 7)}},
			deleted: map[string]Rule{"20260101T000000": RuleOutsideWindow},
			keep: map[string]Rule{"20260105T000000": RuleWindowBase, "20260109T233000": RuleWindow,
				"20260112T000000": RuleWindow},
			walGone: names(segs(1, 1, 2)),
			checkPlan: func(t *testing.T, p Plan) {
				assert.Contains(t, p.Delete[0].Reason, "older than the recovery window")
			},
		},
		{
			name: "recovery window: every backup inside it",
			in: Input{Policy: window("2026-01-01T00:00:00Z", 0), WAL: segs(1, 1, 4), Backups: []catalog.Backup{
				done("20260102T000000", 2), done("20260103T000000", 3)}},
			keep:    map[string]Rule{"20260102T000000": RuleWindow, "20260103T000000": RuleWindow},
			walGone: names(segs(1, 1, 1)),
		},
		{
			name: "recovery window: minimum-redundancy keeps old backups",
			in: Input{Policy: window("2026-02-01T00:00:00Z", 2), WAL: segs(1, 1, 6), Backups: []catalog.Backup{
				done("20260101T000000", 1), done("20260102T000000", 3), done("20260103T000000", 5)}},
			deleted: map[string]Rule{"20260101T000000": RuleOutsideWindow},
			keep:    map[string]Rule{"20260103T000000": RuleWindowBase, "20260102T000000": RuleMinimumRedundancy},
			walGone: names(segs(1, 1, 2)),
		},
		{
			name: "recovery window: minimum-redundancy above the number of backups deletes nothing",
			in: Input{Policy: window("2026-02-01T00:00:00Z", 5), WAL: segs(1, 1, 6), Backups: []catalog.Backup{
				done("20260101T000000", 1), done("20260102T000000", 3), done("20260103T000000", 5)}},
			keep: map[string]Rule{"20260103T000000": RuleWindowBase, "20260102T000000": RuleMinimumRedundancy,
				"20260101T000000": RuleMinimumRedundancy},
			walGone: []string{},
		},
		{
			name: "kept backups are never deleted and count toward redundancy",
			in: Input{Policy: redundancy(2, 0), WAL: segs(1, 1, 10), Backups: []catalog.Backup{
				kept(done("20260101T000000", 2)),
				bk("20260101T120000", catalog.StatusFailed, 3),
				done("20260102T000000", 4),
				done("20260103T000000", 6),
				kept(done("20260104T000000", 8)),
			}},
			deleted: map[string]Rule{"20260102T000000": RuleBeyondRedundancy, "20260101T120000": RuleFailedOld},
			keep: map[string]Rule{"20260104T000000": RuleRedundancy, "20260103T000000": RuleRedundancy,
				"20260101T000000": RuleKeep},
			// The old kept backup holds all WAL from its start.
			walGone: names(segs(1, 1, 1)),
			floor:   lsn(2, 40).String(),
			checkPlan: func(t *testing.T, p Plan) {
				assert.Contains(t, p.Keep[0].Reason, "also marked keep")
				// 20260101T000000 is kept too, and older: the failed one
				// is measured against the oldest the policy keeps, and the
				// reason must not call that "the oldest kept".
				failed := p.Delete[slices.IndexFunc(p.Delete, func(d Decision) bool { return d.ID == "20260101T120000" })]
				assert.Equal(t, "failed and older than 20260103T000000, the oldest backup the policy keeps (backups marked keep aside)", failed.Reason)
				assert.NotContains(t, failed.Reason, "oldest kept backup")
			},
		},
		{
			name: "no policy deletes nothing",
			in: Input{Policy: Policy{}, WAL: segs(1, 1, 4), Backups: []catalog.Backup{
				done("20260101T000000", 2), bk("20251231T000000", catalog.StatusFailed, 1)}},
			keep:    map[string]Rule{"20260101T000000": RuleNoPolicy, "20251231T000000": RuleFailedRecent},
			walGone: []string{},
			keptAll: "no retention policy",
		},
		{
			name:    "no backups at all",
			in:      Input{Policy: redundancy(1, 0), WAL: segs(1, 1, 4)},
			walGone: []string{},
			keptAll: "no done backup",
			checkPlan: func(t *testing.T, p Plan) {
				assert.Equal(t, 4, p.WAL.KeptSegments)
				assert.Equal(t, int64(4*segSize), p.WAL.KeptBytes)
			},
		},
		{
			name: "only failed and running backups",
			in: Input{Policy: redundancy(1, 0), WAL: segs(1, 1, 4), Backups: []catalog.Backup{
				bk("20260101T000000", catalog.StatusFailed, 1), bk("20260102T000000", catalog.StatusRunning, 3)}},
			keep:    map[string]Rule{"20260101T000000": RuleFailedRecent, "20260102T000000": RuleRunning},
			walGone: []string{},
			keptAll: "no done backup",
		},
		{
			name: "a directory that is not a backup ID is kept",
			in: Input{Policy: redundancy(1, 0), WAL: segs(1, 1, 4), Backups: []catalog.Backup{
				{ID: "lost+found", Status: catalog.StatusFailed, Error: "backup.json is missing"},
				done("20260101T000000", 1), done("20260102T000000", 3)}},
			deleted: map[string]Rule{"20260101T000000": RuleBeyondRedundancy},
			keep:    map[string]Rule{"20260102T000000": RuleRedundancy, "lost+found": RuleNotBackupID},
			walGone: names(segs(1, 1, 2)),
			checkPlan: func(t *testing.T, p Plan) {
				assert.Equal(t, "lost+found", p.Keep[len(p.Keep)-1].ID, "unnamed ones come last")
			},
		},
		{
			name: "a kept backup without a valid start keeps all WAL",
			in: Input{Policy: redundancy(1, 0), WAL: segs(1, 1, 4), Backups: []catalog.Backup{
				done("20260101T000000", 1), {ID: "20260102T000000", Status: catalog.StatusDone, StartTimeline: 1}}},
			deleted: map[string]Rule{"20260101T000000": RuleBeyondRedundancy},
			keep:    map[string]Rule{"20260102T000000": RuleRedundancy},
			walGone: []string{},
			keptAll: "no valid start",
		},
		{
			name: "an unknown segment size keeps all WAL",
			in: Input{Policy: redundancy(1, 0), WALSegmentSize: 1000, WAL: segs(1, 1, 4), Backups: []catalog.Backup{
				done("20260101T000000", 1), done("20260102T000000", 3)}},
			deleted: map[string]Rule{"20260101T000000": RuleBeyondRedundancy},
			keep:    map[string]Rule{"20260102T000000": RuleRedundancy},
			walGone: []string{},
			keptAll: "segment size",
		},
		{
			name: "history, partial, conflict, compressed and unknown files",
			in: Input{Policy: redundancy(1, 0), Backups: []catalog.Backup{done("20260101T000000", 4)}, WAL: []WALFile{
				{Name: "00000002.history", Size: 40},
				{Name: segName(1, 1) + ".zst", Size: 100},
				{Name: segName(1, 1) + ".zst.conflict-20260101T000000.000000000Z", Size: 100},
				{Name: segName(1, 2) + ".lz4", Size: 200},
				{Name: segName(1, 2) + ".partial", Size: 300},
				{Name: segName(1, 3) + ".partial.zst", Size: 300},
				{Name: segName(1, 3), Size: segSize},
				{Name: "README", Size: 5},
				{Name: "000000010000000000000FFF00", Size: 5},
				{Name: segName(1, 4), Size: segSize},
			}},
			keep:    map[string]Rule{"20260101T000000": RuleRedundancy},
			walGone: []string{segName(1, 1) + ".zst", segName(1, 2) + ".lz4", segName(1, 3)},
			checkPlan: func(t *testing.T, p Plan) {
				assert.Equal(t, []string{"00000002.history"}, p.WAL.Histories)
				assert.Equal(t, []string{segName(1, 2) + ".partial", segName(1, 3) + ".partial.zst"}, p.WAL.Partials)
				assert.Equal(t, []string{segName(1, 1) + ".zst.conflict-20260101T000000.000000000Z"}, p.WAL.Conflicts)
				assert.Equal(t, []string{"README", "000000010000000000000FFF00"}, p.WAL.Unknown)
				assert.Equal(t, int64(100+200+segSize), p.WAL.DeleteBytes)
				assert.Equal(t, 1, p.WAL.KeptSegments)
			},
		},
		{
			name: "timelines: both backups kept, TL1 WAL before the oldest start goes, after it stays",
			in: Input{Policy: redundancy(2, 0), WAL: timelineWAL,
				Histories: map[wal.Timeline][]wal.HistoryEntry{2: switchTo2},
				Backups:   []catalog.Backup{done("20260101T000000", 3), onTimeline(done("20260102T000000", 8), 2)}},
			keep:    map[string]Rule{"20260101T000000": RuleRedundancy, "20260102T000000": RuleRedundancy},
			walGone: []string{segName(1, 1), segName(1, 2)},
		},
		{
			name: "timelines: only the TL2 backup kept, TL1 goes up to the switch, its dead branch stays",
			in: Input{Policy: redundancy(1, 0), WAL: timelineWAL,
				Histories: map[wal.Timeline][]wal.HistoryEntry{2: switchTo2},
				Backups:   []catalog.Backup{done("20260101T000000", 3), onTimeline(done("20260102T000000", 8), 2)}},
			deleted: map[string]Rule{"20260101T000000": RuleBeyondRedundancy},
			keep:    map[string]Rule{"20260102T000000": RuleRedundancy},
			// TL1 segment 6 holds the switch point and 7 is after it: both
			// on TL1's dead branch. TL2 6 and 7 end before the backup.
			walGone: []string{segName(1, 1), segName(1, 2), segName(1, 3), segName(1, 4), segName(1, 5),
				segName(2, 6), segName(2, 7)},
			checkPlan: func(t *testing.T, p Plan) {
				assert.Equal(t, []string{"00000002.history"}, p.WAL.Histories)
			},
		},
		{
			name: "timelines: without TL2's history file, older timelines stay",
			in: Input{Policy: redundancy(1, 0), WAL: timelineWAL,
				Backups: []catalog.Backup{done("20260101T000000", 3), onTimeline(done("20260102T000000", 8), 2)}},
			deleted: map[string]Rule{"20260101T000000": RuleBeyondRedundancy},
			keep:    map[string]Rule{"20260102T000000": RuleRedundancy},
			walGone: []string{segName(2, 6), segName(2, 7)},
			note:    "00000002.history is missing",
		},
		{
			name: "timelines: a newer timeline that no kept backup descends from stays",
			in: Input{Policy: redundancy(1, 0),
				WAL: append(append(segs(1, 1, 4), WALFile{Name: "00000003.history"}), segs(3, 2, 3)...),
				// Timeline 3 branched from TL1 at segment 2, but the kept
				// backup is on TL1 after that.
				Histories: map[wal.Timeline][]wal.HistoryEntry{3: {{Timeline: 1, SwitchPoint: wal.LSN(2*segSize + 8)}}},
				Backups:   []catalog.Backup{done("20260101T000000", 4)}},
			keep:    map[string]Rule{"20260101T000000": RuleRedundancy},
			walGone: names(segs(1, 1, 3)),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			if in.WALSegmentSize == 0 {
				in.WALSegmentSize = segSize
			}
			p := MakePlan(in)
			if tc.deleted == nil {
				tc.deleted = map[string]Rule{}
			}
			if tc.keep == nil {
				tc.keep = map[string]Rule{}
			}
			assert.Equal(t, tc.deleted, ruleOf(p.Delete), "deleted")
			assert.Equal(t, tc.keep, ruleOf(p.Keep), "kept")
			if tc.order != nil {
				var ids []string
				for _, d := range p.Delete {
					ids = append(ids, d.ID)
				}
				assert.Equal(t, tc.order, ids, "delete order")
			}
			assert.Equal(t, tc.walGone, names(p.WAL.Delete), "WAL deleted")
			if tc.keptAll != "" {
				assert.Contains(t, p.WAL.KeptAll, tc.keptAll)
			} else {
				assert.Empty(t, p.WAL.KeptAll)
			}
			if tc.note != "" {
				require.NotEmpty(t, p.Notes)
				assert.Contains(t, p.Notes[0], tc.note)
			}
			if tc.floor != "" {
				assert.Equal(t, tc.floor, p.WAL.Floor)
			}
			if tc.checkPlan != nil {
				tc.checkPlan(t, p)
			}
		})
	}
}

// TestMakePlanNeverDeletesWhatAKeptBackupNeeds checks the WAL rule over
// every placement of two backups on two timelines: no deleted segment may
// end after a kept backup's start, on its timeline or an ancestor.
func TestMakePlanNeverDeletesWhatAKeptBackupNeeds(t *testing.T) {
	hist := map[wal.Timeline][]wal.HistoryEntry{2: {{Timeline: 1, SwitchPoint: wal.LSN(5*segSize + 0x80)}}}
	w := append(append(segs(1, 0, 9), WALFile{Name: "00000002.history"}), segs(2, 5, 12)...)
	for a := uint64(0); a <= 9; a++ {
		for b := uint64(5); b <= 12; b++ {
			for _, red := range []int{1, 2} {
				older, newer := done("20260101T000000", a), onTimeline(done("20260102T000000", b), 2)
				p := MakePlan(Input{Policy: redundancy(red, 0), WAL: w, Histories: hist, WALSegmentSize: segSize,
					Backups: []catalog.Backup{older, newer}})
				keptBackups := []catalog.Backup{newer}
				if red == 2 {
					keptBackups = append(keptBackups, older)
				}
				for _, f := range p.WAL.Delete {
					tli, n, err := wal.ParseSegmentFileName(f.Name, segSize)
					require.NoError(t, err)
					end := wal.SegmentStart(n+1, segSize)
					for _, k := range keptBackups {
						assert.LessOrEqual(t, end, k.StartLSN, "a=%d b=%d red=%d: %s deleted but backup %s starts at %s", a, b, red, f.Name, k.ID, k.StartLSN)
						if tli == 1 && k.StartTimeline == 2 {
							assert.LessOrEqual(t, end, wal.LSN(5*segSize+0x80), "a=%d b=%d: %s is past the switch", a, b, f.Name)
						}
					}
				}
			}
		}
	}
}
