package coordinator

import (
	"slices"
	"strings"
)

// DrillEligible reports whether the agent with record a may run a restore
// drill while the keeper masterKeeperUID is the master ("" when no master
// is known): it needs restore-root (Drills), and a drill loads the disks,
// CPU and network of its host, so the agent beside the master runs one
// only when restore-drill-on-master allows it. An agent without a keeper
// (a leader-policy any host) is never beside the master; with no master
// known, an agent beside a keeper might be, and is not eligible unless
// allowed.
func DrillEligible(a AgentStatus, masterKeeperUID string) bool {
	switch {
	case !a.Drills:
		return false
	case a.KeeperUID == "" || a.DrillsOnMaster:
		return true
	}
	return masterKeeperUID != "" && a.KeeperUID != masterKeeperUID
}

// DrillAgents returns the names of the agents in agents that may run a
// restore drill (DrillEligible), sorted.
func DrillAgents(agents map[string]AgentStatus, masterKeeperUID string) []string {
	var out []string
	for name, a := range agents {
		if DrillEligible(a, masterKeeperUID) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// NoDrillAgent says why no agent in agents may run a restore drill, and
// what to configure; for the leader's rejection and barnacle drill.
func NoDrillAgent(agents map[string]AgentStatus, masterKeeperUID string) string {
	var beside []string
	for name, a := range agents {
		if a.Drills && !DrillEligible(a, masterKeeperUID) {
			beside = append(beside, name)
		}
	}
	slices.Sort(beside)
	msg := "no live barnacle agent may run a restore drill: set restore-root (a directory with room for the newest backup) on an agent beside a standby, or on a leader-policy any host"
	if masterKeeperUID == "" {
		msg += "; no master is known, so agents beside keepers do not run drills now"
	}
	if len(beside) > 0 {
		msg += "; " + strings.Join(beside, ", ") + " has restore-root but runs beside the master: set restore-drill-on-master: true there to allow it"
	}
	return msg
}
