package coordinator

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestDrillAgents(t *testing.T) {
	standby := AgentStatus{Name: "a1", KeeperUID: "k1", Drills: true}
	master := AgentStatus{Name: "a0", KeeperUID: "k0", Drills: true}
	masterAllowed := AgentStatus{Name: "a0", KeeperUID: "k0", Drills: true, DrillsOnMaster: true}
	noRoot := AgentStatus{Name: "a2", KeeperUID: "k2"}
	backupHost := AgentStatus{Name: "bh", Drills: true}
	for _, tc := range []struct {
		name   string
		agents []AgentStatus
		master string
		want   []string
		why    string // part of NoDrillAgent when want is empty
	}{
		{"standby's agent with restore-root", []AgentStatus{master, standby, noRoot}, "k0", []string{"a1"}, ""},
		{"only the master's agent has restore-root", []AgentStatus{master, noRoot}, "k0", nil, "a0 has restore-root but runs beside the master: set restore-drill-on-master: true"},
		{"the master's agent allowed", []AgentStatus{masterAllowed, noRoot}, "k0", []string{"a0"}, ""},
		{"after a failover the old master's agent runs it", []AgentStatus{master, standby}, "k1", []string{"a0"}, ""},
		{"no restore-root anywhere", []AgentStatus{noRoot}, "k0", nil, "set restore-root"},
		{"leader-policy any host", []AgentStatus{master, backupHost}, "k0", []string{"bh"}, ""},
		{"master unknown: keepers' agents wait", []AgentStatus{standby}, "", nil, "no master is known"},
		{"master unknown: a keeperless host runs it", []AgentStatus{standby, backupHost}, "", []string{"bh"}, ""},
		{"no agents", nil, "k0", nil, "no live barnacle agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agents := map[string]AgentStatus{}
			for _, a := range tc.agents {
				agents[a.Name] = a
			}
			got := DrillAgents(agents, tc.master)
			assert.Equal(t, tc.want, got)
			if len(tc.want) == 0 {
				assert.Contains(t, NoDrillAgent(agents, tc.master), tc.why)
			}
		})
	}
}
