package check

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Unavailable is the result of a check that could not run because
// something it depends on failed: FAILED, with why as the hint ("etcd
// unreachable"), so that one broken dependency shows on every check it
// hides instead of silently passing them.
func Unavailable(name, why string) Result { return Fail(name, why) }

// Headroom checks that a PostgreSQL limit leaves room for one more: max
// minus used must be above zero. setting names the parameter to raise.
func Headroom(name, setting string, max, used int) Result {
	if max-used > 0 {
		return Pass(name, fmt.Sprintf("%d of %s=%d in use", used, setting, max))
	}
	return Failf(name, "%d of %s=%d in use: raise %s (Stolon's pgParameters, or maxStandbys and additionalWalSenders) or free one",
		used, setting, max, setting)
}

// WALLevel checks that wal_level allows physical replication.
func WALLevel(level string) Result {
	if level == "replica" || level == "logical" {
		return Pass(NameWALLevel, level)
	}
	return Failf(NameWALLevel, "wal_level is %s: set it to replica (Stolon's pgParameters) and restart PostgreSQL", level)
}

// SlotState is the streaming slot as pg_replication_slots shows it on the
// master.
type SlotState struct {
	Name           string
	Exists, Active bool
	// StolonMode is true with slot-mode stolon: Stolon's keeper creates
	// the slot from additionalMasterReplicationSlots.
	StolonMode bool
	// Declared is true when clusterdata's additionalMasterReplicationSlots
	// holds the slot (its name without the stolon_ prefix).
	Declared bool
}

// Slot checks that the streaming slot exists on the master and is in use.
func Slot(s SlotState) Result {
	switch {
	case !s.Exists && s.StolonMode && !s.Declared:
		bare := strings.TrimPrefix(s.Name, "stolon_")
		return Failf(NameSlot, `slot %s does not exist on the master: declare it in Stolon: stolonctl update --patch '{"additionalMasterReplicationSlots":["%s"]}'`, s.Name, bare)
	case !s.Exists && s.StolonMode:
		return Failf(NameSlot, "slot %s does not exist on the master although additionalMasterReplicationSlots declares it: check the master's keeper", s.Name)
	case !s.Exists:
		return Failf(NameSlot, "slot %s does not exist on the master: the leading agent creates it when it starts streaming; check that an agent leads (barnacle status) and its log", s.Name)
	case !s.Active:
		return Failf(NameSlot, "slot %s exists on the master but nothing streams from it: check the leading agent (barnacle status) and its log", s.Name)
	}
	return Pass(NameSlot, s.Name+" active")
}

// StandbySlot is the follower slot on one standby.
type StandbySlot struct {
	KeeperUID string
	Address   string
	// Err is why the standby could not be asked; nil when it answered.
	Err    error
	Exists bool
}

// StandbySlots checks that every standby holds the follower slot (named
// slotName) that keeps WAL the archive lacks across a failover.
func StandbySlots(slotName string, standbys []StandbySlot) Result {
	var problems []string
	for _, s := range standbys {
		switch {
		case s.Err != nil:
			problems = append(problems, fmt.Sprintf("keeper %s at %s: %v", s.KeeperUID, s.Address, s.Err))
		case !s.Exists:
			problems = append(problems, fmt.Sprintf("keeper %s at %s has no slot %s", s.KeeperUID, s.Address, slotName))
		}
	}
	if len(problems) > 0 {
		return Failf(NameStandbySlots, "%s: the agent beside each standby keeps it; check that it runs (barnacle status) and its log",
			strings.Join(problems, "; "))
	}
	return Pass(NameStandbySlots, fmt.Sprintf("%d standby(s) hold %s", len(standbys), slotName))
}

// AgentsBesideKeepers checks that an agent runs beside every keeper in
// clusterdata. agentOf maps a keeper UID to its agent's name.
func AgentsBesideKeepers(keepers []string, agentOf map[string]string) Result {
	var missing []string
	for _, k := range keepers {
		if agentOf[k] == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return Failf(NameAgents, "no agent beside keeper %s: run barnacle agent --keeper-uid <uid> beside each keeper and check its log",
			strings.Join(missing, ", "))
	}
	return Pass(NameAgents, fmt.Sprintf("%d keeper(s), each with an agent", len(keepers)))
}

// Leader is what the streaming check needs from the leader's record.
type Leader struct {
	Name        string
	Streaming   bool
	ArchivedLSN wal.LSN
	LastError   string
}

// Streaming checks that an agent leads and streams, and that the archive is
// less than maxLag bytes behind masterLSN, the master's
// pg_current_wal_lsn(). leader is nil when no agent leads.
func Streaming(leader *Leader, masterLSN wal.LSN, maxLag int64) Result {
	if leader == nil {
		return Fail(NameStreaming, "no agent leads, so no WAL is archived: check the agent beside the master keeper (barnacle status, its log)")
	}
	if !leader.Streaming {
		hint := fmt.Sprintf("leader %s is not streaming WAL", leader.Name)
		if leader.LastError != "" {
			hint += ": " + leader.LastError
		}
		return Fail(NameStreaming, hint+"; see its log")
	}
	archived := leader.ArchivedLSN
	if archived == wal.InvalidLSN {
		return Failf(NameStreaming, "leader %s has archived nothing yet: see its log", leader.Name)
	}
	var lag int64
	if masterLSN > archived {
		lag = int64(masterLSN - archived)
	}
	if lag >= maxLag {
		return Failf(NameStreaming, "the archive is %s behind the master (%s archived, master at %s; check-max-lag %s): see leader %s's log and the archive's speed",
			formatBytes(lag), archived, masterLSN, formatBytes(maxLag), leader.Name)
	}
	return Pass(NameStreaming, fmt.Sprintf("leader %s, lag %s", leader.Name, formatBytes(lag)))
}

// Identity checks that the archive belongs to the master's database.
// archiveSystemID is "" when the archive has no archive.json yet.
func Identity(archiveSystemID, serverSystemID string) Result {
	switch {
	case archiveSystemID == "":
		return Fail(NameIdentity, "the archive has no archive.json yet: the leading agent writes it when it first streams; start the agents")
	case archiveSystemID != serverSystemID:
		return Failf(NameIdentity, "archive system identifier %s differs from the master's %s: this archive belongs to another database; use another archive-url or cluster-name",
			archiveSystemID, serverSystemID)
	}
	return Pass(NameIdentity, "system identifier "+serverSystemID)
}

// newestDone returns the newest done backup; backups are newest first, as
// catalog.ListBackups returns them.
func newestDone(backups []catalog.Backup) (catalog.Backup, bool) {
	for _, b := range backups {
		if b.Status == catalog.StatusDone {
			return b, true
		}
	}
	return catalog.Backup{}, false
}

// oldestDone returns the oldest done backup of backups (newest first).
func oldestDone(backups []catalog.Backup) (catalog.Backup, bool) {
	for _, b := range slices.Backward(backups) {
		if b.Status == catalog.StatusDone {
			return b, true
		}
	}
	return catalog.Backup{}, false
}

// BackupMaximumAge checks that the newest done backup finished less than
// maxAge before now; maxAge 0 (last-backup-maximum-age unset) always
// passes. backups are newest first.
func BackupMaximumAge(backups []catalog.Backup, maxAge time.Duration, now time.Time) Result {
	if maxAge <= 0 {
		return Pass(NameBackupMaximumAge, "last-backup-maximum-age not set")
	}
	b, ok := newestDone(backups)
	if !ok {
		return Failf(NameBackupMaximumAge, "no done backup (last-backup-maximum-age %s): run barnacle backup, and set backup-schedule", maxAge)
	}
	age := now.Sub(b.StopTime)
	if age > maxAge {
		return Failf(NameBackupMaximumAge, "the newest done backup %s is %s old (last-backup-maximum-age %s): run barnacle backup, and check backup-schedule and the leader's log",
			b.ID, age.Round(time.Second), maxAge)
	}
	return Pass(NameBackupMaximumAge, fmt.Sprintf("newest done backup %s is %s old", b.ID, age.Round(time.Second)))
}

// MinimumRedundancy checks that at least min backups are done.
func MinimumRedundancy(backups []catalog.Backup, min int) Result {
	done := 0
	for _, b := range backups {
		if b.Status == catalog.StatusDone {
			done++
		}
	}
	if done < min {
		return Failf(NameMinimumRedundancy, "have %d done backups, expected at least %d (minimum-redundancy): run barnacle backup", done, min)
	}
	return Pass(NameMinimumRedundancy, fmt.Sprintf("have %d done backups, expected at least %d", done, min))
}

// FailedBackups fails when the newest finished backup (running ones are
// skipped) failed. backups are newest first.
func FailedBackups(backups []catalog.Backup) Result {
	failed := 0
	for _, b := range backups {
		if b.Status == catalog.StatusFailed {
			failed++
		}
	}
	for _, b := range backups {
		if b.Status == catalog.StatusRunning {
			continue
		}
		if b.Status == catalog.StatusFailed {
			hint := fmt.Sprintf("the newest backup %s failed", b.ID)
			if b.Error != "" {
				hint += ": " + b.Error
			}
			return Fail(NameFailedBackups, hint+fmt.Sprintf("; see barnacle show-backup %s, and delete it once understood (barnacle delete %s)", b.ID, b.ID))
		}
		break
	}
	return Pass(NameFailedBackups, fmt.Sprintf("there are %d failed backups", failed))
}

// Free-space thresholds under a file:// archive: below either one the
// archive may fill up before anyone acts, and a full archive stops WAL
// archiving, which makes the master keep WAL until its own disk fills.
const (
	MinFreeFraction = 0.05
	MinFreeBytes    = 1 << 30
)

// FreeSpace checks the free space of the archive's filesystem.
func FreeSpace(free, total uint64) Result {
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(free) / float64(total)
	}
	if free < MinFreeBytes || (total > 0 && float64(free) < MinFreeFraction*float64(total)) {
		return Failf(NameFreeSpace, "%s free (%.1f%% of %s): free space under the archive, or apply retention (barnacle retention --apply)",
			formatBytes(int64(free)), pct, formatBytes(int64(total))) //nolint:gosec // filesystem sizes fit int64
	}
	return Pass(NameFreeSpace, fmt.Sprintf("%s free (%.1f%%)", formatBytes(int64(free)), pct)) //nolint:gosec // as above
}

// formatBytes renders a byte count with binary units.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// RestoreDrill checks that a restore drill (barnacle drill) succeeded
// within maxAge (restore-drill-max-age) of now: it fails when the last
// successful drill finished longer ago, or there is none. With maxAge 0 it
// passes and only reports the last drill.
func RestoreDrill(drills []catalog.Drill, maxAge time.Duration, now time.Time) Result {
	var last, lastOK *catalog.Drill
	for i := range drills {
		d := &drills[i]
		if last == nil || d.FinishedAt.After(last.FinishedAt) {
			last = d
		}
		if d.Status == catalog.DrillDone && (lastOK == nil || d.FinishedAt.After(lastOK.FinishedAt)) {
			lastOK = d
		}
	}
	describe := "no restore drill has run"
	if lastOK != nil {
		describe = fmt.Sprintf("the last successful restore drill %s finished %s ago, reaching %s", lastOK.ID,
			now.Sub(lastOK.FinishedAt).Round(time.Second), lastOK.Reached.LSN)
	}
	failedSince := ""
	if last != nil && last.Status != catalog.DrillDone {
		failedSince = fmt.Sprintf("; the last drill %s failed: %s", last.ID, last.Error)
	}
	if maxAge <= 0 {
		return Pass(NameRestoreDrill, "restore-drill-max-age not set; "+describe+failedSince)
	}
	switch {
	case lastOK == nil:
		return Failf(NameRestoreDrill, "no successful restore drill (restore-drill-max-age %s)%s: run barnacle drill --wait, and set restore-drill-schedule", maxAge, failedSince)
	case now.Sub(lastOK.FinishedAt) > maxAge:
		return Failf(NameRestoreDrill, "%s (restore-drill-max-age %s)%s: run barnacle drill --wait, and check restore-drill-schedule and the agents' logs",
			describe, maxAge, failedSince)
	}
	return Pass(NameRestoreDrill, describe+failedSince)
}
