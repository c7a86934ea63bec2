package restore

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func at(hhmm string) time.Time {
	t, err := time.Parse("2006-01-02T15:04Z", "2026-11-25T"+hhmm+"Z")
	if err != nil {
		panic(err)
	}
	return t
}

func lsn(s string) wal.LSN {
	l, err := wal.ParseLSN(s)
	if err != nil {
		panic(err)
	}
	return l
}

func TestChooseBackup(t *testing.T) {
	bk := func(id string, status catalog.BackupStatus, stop string, tli wal.Timeline, stopTime string) catalog.Backup {
		b := catalog.Backup{ID: id, Status: status, StopTimeline: tli, StopTime: at(stopTime)}
		if stop != "" {
			b.StopLSN = lsn(stop)
		}
		return b
	}
	// Timeline 1 until 0/8000000, then 2 until 0/A000000, then 3.
	backups := []catalog.Backup{
		bk("20261125T080000", catalog.StatusDone, "0/3000100", 1, "08:05"),
		bk("20261125T140000", catalog.StatusDone, "0/9000100", 2, "14:05"),
		bk("20261125T130000", catalog.StatusFailed, "0/7000100", 1, "13:05"),
		bk("20261125T120000", catalog.StatusDone, "0/6000100", 1, "12:05"),
		bk("20261125T150000", catalog.StatusRunning, "", 0, "00:00"),
	}
	histories := map[wal.Timeline][]wal.HistoryEntry{
		2: {{Timeline: 1, SwitchPoint: lsn("0/8000000")}},
		3: {{Timeline: 1, SwitchPoint: lsn("0/8000000")}, {Timeline: 2, SwitchPoint: lsn("0/A000000")}},
	}
	// Timeline 4 branched off timeline 1 at 0/5000000, before the 12:00
	// backup stopped.
	withSibling := map[wal.Timeline][]wal.HistoryEntry{
		2: histories[2],
		3: histories[3],
		4: {{Timeline: 1, SwitchPoint: lsn("0/5000000")}},
	}
	explicit := func(tli wal.Timeline) TimelineTarget { return TimelineTarget{Mode: TimelineExplicit, Timeline: tli} }

	tests := []struct {
		name      string
		backups   []catalog.Backup
		histories map[wal.Timeline][]wal.HistoryEntry
		target    Target
		timeline  TimelineTarget
		want      string
		// wantErr are substrings of the error.
		wantErr []string
	}{
		{name: "end of WAL on latest takes the newest", target: Target{}, want: "20261125T140000"},
		{name: "immediate on current", target: Target{Kind: TargetImmediate}, timeline: TimelineTarget{Mode: TimelineCurrent}, want: "20261125T140000"},
		{name: "time picks the last that finished before", target: Target{Kind: TargetTime, Time: at("12:30")}, want: "20261125T120000"},
		{name: "time after the newest", target: Target{Kind: TargetTime, Time: at("14:06")}, want: "20261125T140000"},
		{name: "time equal to a stop time is not before it", target: Target{Kind: TargetTime, Time: at("12:05")}, want: "20261125T080000"},
		{
			name: "time before every backup", target: Target{Kind: TargetTime, Time: at("08:05")},
			wantErr: []string{
				"no backup finished before 2026-11-25T08:05:00Z on timeline 3 (latest)",
				"20261125T140000 (stopped at 0/9000100 on timeline 2, 2026-11-25T14:05:00Z): it finished at or after the target time",
				"20261125T080000 (stopped at 0/3000100 on timeline 1, 2026-11-25T08:05:00Z)",
			},
		},
		{name: "LSN equal to a stop LSN", target: Target{Kind: TargetLSN, LSN: lsn("0/6000100")}, want: "20261125T120000"},
		{name: "LSN just before a stop LSN", target: Target{Kind: TargetLSN, LSN: lsn("0/60000FF")}, want: "20261125T080000"},
		{
			name: "LSN before every backup", target: Target{Kind: TargetLSN, LSN: lsn("0/1000000")},
			wantErr: []string{"no backup stopped at or before LSN 0/1000000", "it stopped after the target LSN"},
		},
		{name: "xid cannot be compared: newest", target: Target{Kind: TargetXID, XID: "1234"}, want: "20261125T140000"},
		{name: "name cannot be compared: newest", target: Target{Kind: TargetName, Name: "before upgrade"}, want: "20261125T140000"},
		{name: "explicit timeline 1 skips the newer timeline", timeline: explicit(1), want: "20261125T120000"},
		{name: "explicit timeline 2", timeline: explicit(2), want: "20261125T140000"},
		{
			name: "sibling timeline branched before the newer backups", histories: withSibling, want: "20261125T080000",
		},
		{
			name: "sibling timeline: rejection reasons", histories: withSibling, target: Target{Kind: TargetLSN, LSN: lsn("0/3000000")},
			wantErr: []string{
				"on timeline 4 (latest)",
				"20261125T140000 (stopped at 0/9000100 on timeline 2, 2026-11-25T14:05:00Z): it stopped after the target LSN",
			},
		},
		{
			name: "sibling timeline explicit: not an ancestor and branched before", histories: withSibling, timeline: explicit(4),
			target: Target{Kind: TargetTime, Time: at("14:30")}, want: "20261125T080000",
		},
		{
			name: "history missing", timeline: explicit(5),
			wantErr: []string{
				"no backup can recover to end of WAL on timeline 5",
				"the history file of timeline 5 is not in the archive",
			},
		},
		{
			name: "not an ancestor", histories: withSibling, timeline: explicit(4), backups: backups[1:2],
			wantErr: []string{"timeline 2 is not an ancestor of timeline 4"},
		},
		{
			name: "branched off before the stop", histories: withSibling, timeline: explicit(4), backups: backups[3:4],
			wantErr: []string{"it stopped after timeline 4 branched off timeline 1 at 0/5000000"},
		},
		{
			name: "newer timeline than target", timeline: explicit(1), backups: backups[1:2],
			wantErr: []string{"its timeline 2 is newer than the target timeline 1"},
		},
		{
			name: "no done backup", backups: backups[2:3],
			wantErr: []string{"no done backup in the archive (1 listed, none with status done)"},
		},
		{
			name: "no stop LSN", backups: []catalog.Backup{bk("20261125T080000", catalog.StatusDone, "", 1, "08:05")},
			wantErr: []string{`its stop LSN is not recorded`},
		},
		{name: "invalid target", target: Target{Kind: TargetTime}, wantErr: []string{"target time is not set"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bs := tc.backups
			if bs == nil {
				bs = backups
			}
			h := tc.histories
			if h == nil {
				h = histories
			}
			got, err := ChooseBackup(bs, h, tc.target, tc.timeline)
			if tc.wantErr != nil {
				require.Error(t, err)
				for _, s := range tc.wantErr {
					assert.Contains(t, err.Error(), s)
				}
				var nb *NoBackupError
				if errors.As(err, &nb) {
					assert.ErrorIs(t, err, catalog.ErrNoBackup)
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got.ID)
		})
	}
}

func TestCheckTarget(t *testing.T) {
	windows := []catalog.Window{
		{Timeline: 1, FromLSN: lsn("0/3000100"), FromTime: at("08:05"), ToLSN: lsn("0/8000000"), ToTime: at("13:00")},
		{Timeline: 2, FromLSN: lsn("0/9000100"), FromTime: at("14:05"), ToLSN: lsn("0/C000000")},
	}
	gaps := []catalog.Gap{{Timeline: 2, StartLSN: 0xA000000, EndLSN: 0xA800000}}
	tl1 := TimelineTarget{Mode: TimelineExplicit, Timeline: 1}
	// Timeline 3 branched off timeline 1 at 0/6000000, after the backup.
	branched := []catalog.Window{
		{Timeline: 1, FromLSN: lsn("0/3000100"), FromTime: at("08:05"), ToLSN: lsn("0/6000200")},
		{Timeline: 3, FromLSN: lsn("0/6000000"), ToLSN: lsn("0/7000000")},
	}
	tests := []struct {
		name     string
		target   Target
		timeline TimelineTarget
		gaps     []catalog.Gap
		windows  []catalog.Window
		wantErr  string
	}{
		{name: "LSN inside", target: Target{Kind: TargetLSN, LSN: lsn("0/5000000")}, timeline: tl1},
		{name: "LSN at the window's start", target: Target{Kind: TargetLSN, LSN: lsn("0/3000100")}, timeline: tl1},
		{name: "LSN at the archive's end", target: Target{Kind: TargetLSN, LSN: lsn("0/8000000")}, timeline: tl1},
		{name: "LSN before", target: Target{Kind: TargetLSN, LSN: lsn("0/2000000")}, timeline: tl1, wantErr: "it is before the stop LSN of the oldest backup"},
		{name: "LSN after", target: Target{Kind: TargetLSN, LSN: lsn("0/9000000")}, timeline: tl1, wantErr: "it is after the end of the archived WAL"},
		{name: "latest is timeline 2", target: Target{Kind: TargetLSN, LSN: lsn("0/9500000")}},
		{name: "latest: timeline 1's LSN is not on it", target: Target{Kind: TargetLSN, LSN: lsn("0/5000000")}, wantErr: "on timeline 2 is not recoverable"},
		{name: "latest: an LSN before timeline 3 branched off timeline 1", target: Target{Kind: TargetLSN, LSN: lsn("0/5000000")},
			windows: branched},
		{name: "latest: an LSN after timeline 3 branched off", target: Target{Kind: TargetLSN, LSN: lsn("0/7F00000")},
			windows: branched, wantErr: "on timeline 3 is not recoverable"},
		{name: "current accepts any window", target: Target{Kind: TargetLSN, LSN: lsn("0/5000000")}, timeline: TimelineTarget{Mode: TimelineCurrent}},
		{name: "LSN behind a gap", target: Target{Kind: TargetLSN, LSN: lsn("0/B000000")}, gaps: gaps, wantErr: "a WAL gap starting at 0/A000000 lies between the backup and the target"},
		{name: "LSN before the gap", target: Target{Kind: TargetLSN, LSN: lsn("0/9F00000")}, gaps: gaps},
		// catalog.RecoverableWindows ends a window where a gap starts.
		{name: "LSN inside a gap that ends the window", target: Target{Kind: TargetLSN, LSN: lsn("0/A400000")}, gaps: gaps,
			windows: []catalog.Window{{Timeline: 2, FromLSN: lsn("0/9000100"), FromTime: at("14:05"), ToLSN: lsn("0/A000000")}},
			wantErr: "it is inside the recorded WAL gap 0/A000000..0/A800000 (timeline 2)"},
		{name: "LSN after a gap that ends the window", target: Target{Kind: TargetLSN, LSN: lsn("0/B000000")}, gaps: gaps,
			windows: []catalog.Window{{Timeline: 2, FromLSN: lsn("0/9000100"), FromTime: at("14:05"), ToLSN: lsn("0/A000000")}},
			wantErr: "the recorded WAL gap 0/A000000..0/A800000 (timeline 2) lies between the backup and the target"},
		{name: "LSN inside a gap that ends on the next timeline", target: Target{Kind: TargetLSN, LSN: lsn("0/6800000")},
			gaps: []catalog.Gap{{Timeline: 1, StartLSN: 0x5000000, EndLSN: 0x7000000}},
			windows: []catalog.Window{
				{Timeline: 1, FromLSN: lsn("0/3000100"), FromTime: at("08:05"), ToLSN: lsn("0/5000000")},
				{Timeline: 2, FromLSN: lsn("0/6000000"), ToLSN: lsn("0/6000000")},
			},
			wantErr: "it is inside the recorded WAL gap 0/5000000..0/7000000 (timeline 1)"},
		{
			name: "window starting in a gap", target: Target{Kind: TargetLSN, LSN: lsn("0/9500000")},
			gaps: []catalog.Gap{{Timeline: 2, StartLSN: 0x9000000, EndLSN: 0x9800000}}, wantErr: "its window starts inside a WAL gap",
		},
		{name: "time inside", target: Target{Kind: TargetTime, Time: at("12:00")}, timeline: tl1},
		{name: "time at the oldest stop", target: Target{Kind: TargetTime, Time: at("08:05")}, timeline: tl1, wantErr: "not after the stop time of the oldest backup"},
		{name: "time after the last commit", target: Target{Kind: TargetTime, Time: at("13:30")}, timeline: tl1, wantErr: "it is after the last archived commit"},
		{name: "time with unknown end", target: Target{Kind: TargetTime, Time: at("23:00")}},
		{name: "no window on the timeline", target: Target{Kind: TargetLSN, LSN: lsn("0/5000000")}, timeline: TimelineTarget{Mode: TimelineExplicit, Timeline: 7}, wantErr: "no window on that timeline"},
		{name: "xid is not checked", target: Target{Kind: TargetXID, XID: "77"}},
		{name: "immediate is not checked", target: Target{Kind: TargetImmediate}},
		{name: "bad gap", target: Target{Kind: TargetLSN, LSN: 5}, gaps: []catalog.Gap{{EndLSN: 0x1000000}}, wantErr: "gap on timeline 0 has no start or end LSN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ws := windows
			if tc.windows != nil {
				ws = tc.windows
			}
			err := CheckTarget(tc.target, tc.timeline, ws, tc.gaps)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
			var ow *OutsideWindowError
			if errors.As(err, &ow) && tc.windows == nil {
				assert.ErrorIs(t, err, ErrOutsideWindow)
				// Every window is listed, for the user to pick from.
				assert.Contains(t, err.Error(), "timeline 1: 0/3000100 (2026-11-25T08:05:00Z) to 0/8000000 (2026-11-25T13:00:00Z); timeline 2: 0/9000100 (2026-11-25T14:05:00Z) to 0/C000000")
				if tc.gaps != nil {
					assert.Contains(t, err.Error(), "recorded WAL gaps: timeline 2:")
				}
			}
		})
	}
}

func TestParseTimelineTarget(t *testing.T) {
	for in, want := range map[string]TimelineTarget{
		"":        {Mode: TimelineLatest},
		"latest":  {Mode: TimelineLatest},
		"current": {Mode: TimelineCurrent},
		"3":       {Mode: TimelineExplicit, Timeline: 3},
		"0x1A":    {Mode: TimelineExplicit, Timeline: 26},
	} {
		got, err := ParseTimelineTarget(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"0", "-1", "newest", "4294967296"} {
		_, err := ParseTimelineTarget(bad)
		assert.Error(t, err, bad)
	}
}

// TestChooseBackupAtRecord: a restore-point or xid target whose record
// was found in the WAL is compared with each backup's stop LSN; without
// the record the newest backup is taken, as before.
func TestChooseBackupAtRecord(t *testing.T) {
	bk := func(id, stop string) catalog.Backup {
		return catalog.Backup{ID: id, Status: catalog.StatusDone, StopLSN: lsn(stop), StopTimeline: 1, StopTime: at("08:00")}
	}
	backups := []catalog.Backup{bk("20261125T020000", "0/9000100"), bk("20261124T020000", "0/3000100")}
	name := Target{Kind: TargetName, Name: "before_upgrade"}
	for _, tc := range []struct {
		record wal.LSN
		want   string
	}{
		{wal.InvalidLSN, "20261125T020000"},
		{lsn("0/5000000"), "20261124T020000"},
		{lsn("0/3000100"), "20261124T020000"}, // the record starts at the stop: consistent by then
		{lsn("0/9000100"), "20261125T020000"},
	} {
		b, err := ChooseBackupAt(backups, nil, name, TimelineTarget{}, tc.record)
		require.NoError(t, err, tc.record)
		assert.Equal(t, tc.want, b.ID, "record at %s", tc.record)
	}
	_, err := ChooseBackupAt(backups, nil, name, TimelineTarget{}, lsn("0/2000000"))
	var nb *NoBackupError
	require.ErrorAs(t, err, &nb)
	assert.Contains(t, err.Error(), "it stopped after the target's record at 0/2000000")
}

// TestScanRanges: the WAL after each backup is searched newest backup
// first, each range ending where the next newer backup stopped.
func TestScanRanges(t *testing.T) {
	a := catalog.Archive{Backups: []catalog.Backup{
		{ID: "20261124T020000", Status: catalog.StatusDone, StopLSN: lsn("0/3000100"), StopTimeline: 1},
		{ID: "20261125T020000", Status: catalog.StatusDone, StopLSN: lsn("0/9000100"), StopTimeline: 2},
		{ID: "20261125T030000", Status: catalog.StatusFailed, StopLSN: lsn("0/A000100"), StopTimeline: 2},
	}, Histories: map[wal.Timeline][]wal.HistoryEntry{2: {{Timeline: 1, SwitchPoint: lsn("0/8000000")}}}}
	r := scanRanges(a, TimelineTarget{})
	require.Len(t, r, 2)
	assert.Equal(t, scanRange{backup: a.Backups[1], tli: 2, from: lsn("0/9000100")}, r[0])
	assert.Equal(t, scanRange{backup: a.Backups[0], tli: 2, from: lsn("0/3000100"), to: lsn("0/9000100")}, r[1])
	assert.Equal(t, []pathEntry{{tli: 2, begin: lsn("0/8000000")}, {tli: 1}}, timelinePath(a.Histories[2], 2))
}
