package check

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func TestRender(t *testing.T) {
	ok := []Result{Pass(NameEtcd, "e:2379"), Pass(NameStreaming, "")}
	bad := []Result{Pass(NameEtcd, ""), Fail(NameStreaming, "no agent leads"), Fail(NameAgents, "no agent beside\nkeeper k1")}

	t.Run("text", func(t *testing.T) {
		var b bytes.Buffer
		require.NoError(t, WriteText(&b, "main", bad))
		assert.Equal(t, "Cluster main:\n\tetcd: OK\n\tstreaming: FAILED (no agent leads)\n\tagents beside keepers: FAILED (no agent beside keeper k1)\n", b.String())
	})
	t.Run("nagios ok", func(t *testing.T) {
		var b bytes.Buffer
		code, err := WriteNagios(&b, "main", ok)
		require.NoError(t, err)
		assert.Equal(t, NagiosOK, code)
		assert.Equal(t, fmt.Sprintf("BARNACLE OK - cluster main: all %d checks passed\n", len(ok)), b.String())
	})
	t.Run("nagios critical", func(t *testing.T) {
		var b bytes.Buffer
		code, err := WriteNagios(&b, "main", bad)
		require.NoError(t, err)
		assert.Equal(t, NagiosCritical, code)
		assert.Equal(t, "BARNACLE CRITICAL - server main has issues * main FAILED: streaming, agents beside keepers\n"+
			"main.streaming: FAILED (no agent leads)\n"+
			"main.agents beside keepers: FAILED (no agent beside keeper k1)\n", b.String())
	})
	t.Run("json", func(t *testing.T) {
		var b bytes.Buffer
		require.NoError(t, WriteJSON(&b, bad))
		var got []map[string]any
		require.NoError(t, json.Unmarshal(b.Bytes(), &got))
		require.Len(t, got, 3)
		assert.Equal(t, map[string]any{"name": "streaming", "ok": false, "hint": "no agent leads"}, got[1])
		b.Reset()
		require.NoError(t, WriteJSON(&b, nil))
		assert.Equal(t, "[]\n", b.String())
	})
	assert.NoError(t, Verdict(ok))
	assert.EqualError(t, Verdict(bad), "2 of 3 checks FAILED")
}

const segSize = wal.DefaultSegmentSize

func seg(tli wal.Timeline, n wal.SegmentNo) string { return wal.SegmentFileName(tli, n, segSize) }

func history(entries ...wal.HistoryEntry) []byte { return wal.FormatHistory(entries) }

// walSpec is a WALArchive as a listing of names and the bytes of its
// history files, read the way catalog.ReadArchive reads them.
type walSpec struct {
	Files         []string
	Histories     map[wal.Timeline][]byte
	Gaps          []catalog.Gap
	Backups       []catalog.Backup
	StartTimeline wal.Timeline
	StartLSN      wal.LSN
}

func (s walSpec) archive() WALArchive {
	var objs []storage.ObjectInfo
	for _, f := range s.Files {
		objs = append(objs, storage.ObjectInfo{Name: f})
	}
	a := WALArchive{WAL: catalog.IndexWAL(objs, "", segSize), Histories: map[wal.Timeline][]wal.HistoryEntry{},
		HistoryErrors: map[wal.Timeline]error{}, Gaps: s.Gaps, Backups: s.Backups, StartTimeline: s.StartTimeline, StartLSN: s.StartLSN}
	for tli, data := range s.Histories {
		h, err := wal.ParseHistory(data)
		if err != nil {
			a.HistoryErrors[tli] = err
			continue
		}
		a.Histories[tli] = h
	}
	return a
}

func TestCheckContinuity(t *testing.T) {
	// Timeline 2 begins at 0/6800000, inside segment 6.
	hist2 := history(wal.HistoryEntry{Timeline: 1, SwitchPoint: 0x6800000, Reason: "no recovery target specified"})
	// Timeline 3 begins at 0/9000000, on the boundary of segment 9.
	hist3 := history(wal.HistoryEntry{Timeline: 1, SwitchPoint: 0x6800000}, wal.HistoryEntry{Timeline: 2, SwitchPoint: 0x9000000})
	failover := []string{seg(1, 3), seg(1, 4), seg(1, 5), seg(1, 6) + ".partial", "00000002.history",
		seg(2, 6), seg(2, 7) + ".zst", seg(2, 8) + ".partial"}
	without := func(files []string, drop string) []string {
		var out []string
		for _, f := range files {
			if f != drop {
				out = append(out, f)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		archive  walSpec
		missing  []string
		ranges   []TimelineRange
		gaps     int
		resolved int
		unread   int
	}{
		{
			name: "one timeline, contiguous, ending in a partial",
			archive: walSpec{Files: []string{seg(1, 2), seg(1, 3), seg(1, 4) + ".lz4", seg(1, 5) + ".zst", seg(1, 6) + ".partial", seg(1, 6) + ".conflict-20260101T000000Z"},
				StartTimeline: 1, StartLSN: 0x3000028},
			ranges: []TimelineRange{{1, seg(1, 3), seg(1, 6)}},
		},
		{
			name:    "a hole",
			archive: walSpec{Files: []string{seg(1, 3), seg(1, 4), seg(1, 6), seg(1, 7)}, StartTimeline: 1, StartLSN: 0x3000028},
			missing: []string{seg(1, 5)},
			ranges:  []TimelineRange{{1, seg(1, 3), seg(1, 7)}},
		},
		{
			name:    "a partial in the middle is a hole",
			archive: walSpec{Files: []string{seg(1, 3), seg(1, 4) + ".partial", seg(1, 5)}, StartTimeline: 1, StartLSN: 0x3000028},
			missing: []string{seg(1, 4)},
			ranges:  []TimelineRange{{1, seg(1, 3), seg(1, 5)}},
		},
		{
			name:    "the backup's first segment is gone",
			archive: walSpec{StartTimeline: 1, StartLSN: 0x3000028},
			missing: []string{seg(1, 3)},
			ranges:  []TimelineRange{{1, seg(1, 3), seg(1, 3)}},
		},
		{
			name: "across a failover: the switch segment is read from the new timeline",
			archive: walSpec{Files: failover, Histories: map[wal.Timeline][]byte{2: hist2},
				StartTimeline: 1, StartLSN: 0x3000028},
			ranges: []TimelineRange{{1, seg(1, 3), seg(1, 5)}, {2, seg(2, 6), seg(2, 8)}},
		},
		{
			name: "a partial before the switch segment is a hole, though it ends its timeline",
			archive: walSpec{Files: []string{seg(1, 3), seg(1, 4), seg(1, 5) + ".partial", "00000002.history", seg(2, 6), seg(2, 7)},
				Histories: map[wal.Timeline][]byte{2: hist2}, StartTimeline: 1, StartLSN: 0x3000028},
			missing: []string{seg(1, 5)},
			ranges:  []TimelineRange{{1, seg(1, 3), seg(1, 5)}, {2, seg(2, 6), seg(2, 7)}},
		},
		{
			name: "history file deleted",
			archive: walSpec{Files: without(failover, "00000002.history"),
				StartTimeline: 1, StartLSN: 0x3000028},
			missing: []string{"00000002.history"},
			ranges:  []TimelineRange{{1, seg(1, 3), seg(1, 6)}, {2, seg(2, 6), seg(2, 8)}},
		},
		{
			name: "first segment of the new timeline missing",
			archive: walSpec{Files: without(failover, seg(2, 6)), Histories: map[wal.Timeline][]byte{2: hist2},
				StartTimeline: 1, StartLSN: 0x3000028},
			missing: []string{seg(2, 6)},
			ranges:  []TimelineRange{{1, seg(1, 3), seg(1, 5)}, {2, seg(2, 6), seg(2, 8)}},
		},
		{
			name: "unparsable history",
			archive: walSpec{Files: failover, Histories: map[wal.Timeline][]byte{2: []byte("garbage\n")},
				StartTimeline: 1, StartLSN: 0x3000028},
			unread: 1,
			ranges: []TimelineRange{{1, seg(1, 3), seg(1, 6)}, {2, seg(2, 6), seg(2, 8)}},
		},
		{
			name: "backup on the new timeline: the old one's holes do not matter",
			archive: walSpec{Files: without(failover, seg(1, 4)), Histories: map[wal.Timeline][]byte{2: hist2},
				StartTimeline: 2, StartLSN: 0x7000028},
			ranges: []TimelineRange{{2, seg(2, 7), seg(2, 8)}},
		},
		{
			name: "two switches, one on a segment boundary, timeline 2 history missing",
			archive: walSpec{Files: []string{seg(1, 5), seg(1, 6) + ".partial", seg(2, 6), seg(2, 7), seg(2, 8),
				"00000003.history", seg(3, 9), seg(3, 10) + ".partial"},
				Histories: map[wal.Timeline][]byte{3: hist3}, StartTimeline: 1, StartLSN: 0x5000028},
			missing: []string{"00000002.history"},
			ranges:  []TimelineRange{{1, seg(1, 5), seg(1, 5)}, {2, seg(2, 6), seg(2, 8)}, {3, seg(3, 9), seg(3, 10)}},
		},
		{
			name: "a branch before the backup started is not needed",
			archive: walSpec{Files: []string{"00000002.history", seg(2, 6), seg(1, 7), seg(1, 8)},
				Histories: map[wal.Timeline][]byte{2: hist2}, StartTimeline: 1, StartLSN: 0x7000028},
			ranges: []TimelineRange{{1, seg(1, 7), seg(1, 8)}},
		},
		{
			name: "recorded gaps after the start count, older ones do not",
			archive: walSpec{Files: []string{seg(1, 3), seg(1, 4)}, StartTimeline: 1, StartLSN: 0x3000028,
				Gaps: []catalog.Gap{
					{Timeline: 1, StartLSN: 0x1000000, EndLSN: 0x2000000},
					{Timeline: 1, StartLSN: 0x4000000, EndLSN: 0x9000000},
				}},
			gaps:   1,
			ranges: []TimelineRange{{1, seg(1, 3), seg(1, 4)}},
		},
		{
			// The archive ended in segment 5; the master had WAL again from
			// segment 8; a done backup starts there.
			name: "a gap that a later done backup resolves is history: its segments are not missing",
			archive: walSpec{Files: []string{seg(1, 3), seg(1, 4), seg(1, 5) + ".partial", seg(1, 8), seg(1, 9)}, StartTimeline: 1, StartLSN: 0x3000028,
				Gaps: []catalog.Gap{{Timeline: 1, StartLSN: 0x5100000, EndLSN: 0x8000000}},
				Backups: []catalog.Backup{
					{ID: "new", Status: catalog.StatusDone, StartTimeline: 1, StartLSN: 0x8000028},
					{ID: "old", Status: catalog.StatusDone, StartTimeline: 1, StartLSN: 0x3000028},
				}},
			resolved: 1,
			ranges:   []TimelineRange{{1, seg(1, 3), seg(1, 9)}},
		},
		{
			name: "a gap whose backup after it is still running stays a problem",
			archive: walSpec{Files: []string{seg(1, 3), seg(1, 4), seg(1, 5) + ".partial", seg(1, 8), seg(1, 9)}, StartTimeline: 1, StartLSN: 0x3000028,
				Gaps: []catalog.Gap{{Timeline: 1, StartLSN: 0x5100000, EndLSN: 0x8000000}},
				Backups: []catalog.Backup{
					{ID: "new", Status: catalog.StatusRunning, StartTimeline: 1, StartLSN: 0x8000028},
					{ID: "old", Status: catalog.StatusDone, StartTimeline: 1, StartLSN: 0x3000028},
				}},
			gaps:    1,
			missing: []string{seg(1, 5), seg(1, 6), seg(1, 7)},
			ranges:  []TimelineRange{{1, seg(1, 3), seg(1, 9)}},
		},
		{
			// Recorded on timeline 1, where the archive ended; the master
			// had WAL again only at 0/7800000 on timeline 2. A backup on
			// timeline 2 that starts inside the gap cannot replay it.
			name: "a gap recorded on timeline 1 that runs into timeline 2 counts for a backup on timeline 2",
			archive: walSpec{Files: []string{seg(1, 4), seg(1, 5) + ".partial", "00000002.history", seg(2, 8), seg(2, 9)},
				Histories: map[wal.Timeline][]byte{2: hist2}, StartTimeline: 2, StartLSN: 0x7000028,
				Gaps: []catalog.Gap{{Timeline: 1, StartLSN: 0x5100000, EndLSN: 0x7800000}}},
			gaps:    1,
			missing: []string{seg(2, 7)},
			ranges:  []TimelineRange{{2, seg(2, 7), seg(2, 9)}},
		},
		{
			name: "a gap on timeline 1 that ends before timeline 2's backup starts does not count",
			archive: walSpec{Files: []string{"00000002.history", seg(2, 8), seg(2, 9)},
				Histories: map[wal.Timeline][]byte{2: hist2}, StartTimeline: 2, StartLSN: 0x8000028,
				Gaps: []catalog.Gap{{Timeline: 1, StartLSN: 0x5100000, EndLSN: 0x7800000}}},
			ranges: []TimelineRange{{2, seg(2, 8), seg(2, 9)}},
		},
		{
			// Timeline 3 branched from timeline 1: timeline 2 is a sibling.
			name: "a gap on a sibling timeline does not count",
			archive: walSpec{Files: []string{"00000003.history", seg(3, 9), seg(3, 10)},
				Histories: map[wal.Timeline][]byte{3: history(wal.HistoryEntry{Timeline: 1, SwitchPoint: 0x8000000})}, StartTimeline: 3, StartLSN: 0x9000028,
				Gaps: []catalog.Gap{{Timeline: 2, StartLSN: 0x8100000, EndLSN: 0xA000000}}},
			ranges: []TimelineRange{{3, seg(3, 9), seg(3, 10)}},
		},
		{
			name:    "no backup: from the first segment on",
			archive: walSpec{Files: []string{seg(1, 9), seg(1, 10), seg(1, 12)}},
			missing: []string{seg(1, 11)},
			ranges:  []TimelineRange{{1, seg(1, 9), seg(1, 12)}},
		},
		{
			name: "empty archive, no backup",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := CheckContinuity(tc.archive.archive())
			assert.Equal(t, tc.missing, c.Missing)
			assert.Equal(t, tc.ranges, c.Ranges)
			assert.Len(t, c.Gaps, tc.gaps)
			assert.Len(t, c.Resolved, tc.resolved)
			assert.Len(t, c.Unreadable, tc.unread)
			r := WALContinuity(c, "20260101T000000")
			assert.Equal(t, c.OK(), r.OK)
			assert.Equal(t, tc.missing == nil && tc.gaps == 0 && tc.unread == 0, r.OK)
			if !r.OK {
				assert.Contains(t, r.Hint, "barnacle backup")
			}
		})
	}
}

func TestWALContinuityHint(t *testing.T) {
	c := Continuity{Missing: []string{"00000002.history", seg(1, 3), seg(1, 4), seg(1, 5)},
		Gaps: []catalog.Gap{{Timeline: 1, StartLSN: 0x4000000, EndLSN: 0x9000000}}}
	r := WALContinuity(c, "20260101T000000")
	assert.False(t, r.OK)
	assert.Equal(t, "missing 00000002.history, "+seg(1, 3)+", "+seg(1, 4)+" and 1 more; recorded WAL gap on timeline 1 from 0/4000000 to 0/9000000 "+
		"after the oldest done backup 20260101T000000: recovery cannot replay past it; take a new base backup (barnacle backup), "+
		"and delete the backups older than the hole once it is done (barnacle delete)", r.Hint)
}

func TestChecks(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	backups := []catalog.Backup{ // newest first
		{ID: "20260501T110000", Status: catalog.StatusRunning},
		{ID: "20260501T100000", Status: catalog.StatusFailed, Error: "connection lost"},
		{ID: "20260430T100000", Status: catalog.StatusDone, StopTime: now.Add(-26 * time.Hour)},
		{ID: "20260429T100000", Status: catalog.StatusDone, StopTime: now.Add(-50 * time.Hour)},
	}
	for _, tc := range []struct {
		name string
		got  Result
		ok   bool
		hint string // substring
	}{
		{"headroom left", Headroom(NameWALSenders, "max_wal_senders", 10, 9), true, ""},
		{"headroom none", Headroom(NameWALSenders, "max_wal_senders", 10, 10), false, "raise max_wal_senders"},
		{"wal_level replica", WALLevel("replica"), true, ""},
		{"wal_level logical", WALLevel("logical"), true, ""},
		{"wal_level minimal", WALLevel("minimal"), false, "set it to replica"},
		{"slot active", Slot(SlotState{Name: "barnacle", Exists: true, Active: true}), true, ""},
		{"slot inactive", Slot(SlotState{Name: "barnacle", Exists: true}), false, "nothing streams"},
		{"slot missing", Slot(SlotState{Name: "barnacle"}), false, "does not exist on the master"},
		{"stolon slot undeclared", Slot(SlotState{Name: "stolon_barnacle", StolonMode: true}), false, `additionalMasterReplicationSlots":["barnacle"]`},
		{"stolon slot declared but missing", Slot(SlotState{Name: "stolon_barnacle", StolonMode: true, Declared: true}), false, "keeper"},
		{"standby slots", StandbySlots("barnacle", []StandbySlot{{KeeperUID: "k1", Exists: true}}), true, ""},
		{"standby slot missing", StandbySlots("barnacle", []StandbySlot{{KeeperUID: "k1", Exists: true}, {KeeperUID: "k2", Address: "h:5432"}}), false, "keeper k2 at h:5432 has no slot barnacle"},
		{"agents", AgentsBesideKeepers([]string{"k1", "k2"}, map[string]string{"k1": "a1", "k2": "a2"}), true, ""},
		{"agent missing", AgentsBesideKeepers([]string{"k1", "k2"}, map[string]string{"k1": "a1"}), false, "no agent beside keeper k2"},
		{"streaming", Streaming(&Leader{Name: "a1", Streaming: true, ArchivedLSN: 0x3000000}, 0x3001000, 64<<20), true, ""},
		{"archive ahead of a stale master position", Streaming(&Leader{Name: "a1", Streaming: true, ArchivedLSN: 0x3000000}, 0x2000000, 64<<20), true, ""},
		{"no leader", Streaming(nil, 0, 64<<20), false, "no agent leads"},
		{"not streaming", Streaming(&Leader{Name: "a1", LastError: "slot in use"}, 0, 64<<20), false, "leader a1 is not streaming WAL: slot in use"},
		{"lag", Streaming(&Leader{Name: "a1", Streaming: true, ArchivedLSN: 0x3000000}, 0x7000000, 64<<20), false, "64.0 MiB behind"},
		{"identity", Identity("7", "7"), true, ""},
		{"identity absent", Identity("", "7"), false, "no archive.json"},
		{"identity differs", Identity("6", "7"), false, "another database"},
		{"age unset", BackupMaximumAge(nil, 0, now), true, ""},
		{"age", BackupMaximumAge(backups, 48*time.Hour, now), true, ""},
		{"too old", BackupMaximumAge(backups, 24*time.Hour, now), false, "20260430T100000 is 26h0m0s old"},
		{"age without backup", BackupMaximumAge(nil, time.Hour, now), false, "no done backup"},
		{"redundancy", MinimumRedundancy(backups, 2), true, ""},
		{"redundancy short", MinimumRedundancy(backups, 3), false, "have 2 done backups, expected at least 3"},
		{"newest finished failed", FailedBackups(backups), false, "barnacle show-backup 20260501T100000"},
		{"older failure only", FailedBackups(backups[2:]), true, ""},
		{"free", FreeSpace(50<<30, 100<<30), true, ""},
		{"under 5%", FreeSpace(4<<30, 100<<30), false, "4.0 GiB free (4.0% of 100.0 GiB)"},
		{"under 1 GiB", FreeSpace(512<<20, 2<<30), false, "512.0 MiB free"},
		{"unavailable", Unavailable(NameStreaming, "etcd unreachable"), false, "etcd unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.ok, tc.got.OK, tc.got.Hint)
			if tc.ok {
				assert.Empty(t, tc.got.Hint)
			} else {
				assert.Contains(t, tc.got.Hint, tc.hint)
			}
		})
	}
	oldest, ok := oldestDone(backups)
	require.True(t, ok)
	assert.Equal(t, "20260429T100000", oldest.ID)
	_, ok = oldestDone(backups[:2])
	assert.False(t, ok)
}
