package agent

import (
	"encoding/json"
	"net/http"
)

// Status is what GET /status returns: this agent's own view, for people and
// for tests that sample who believes it leads.
type Status struct {
	Agent               string `json:"agent"`
	KeeperUID           string `json:"keeperUID,omitempty"`
	Leading             bool   `json:"leading"`
	LeadReason          string `json:"leadReason,omitempty"`
	Leader              string `json:"leader"`
	MasterKeeperUID     string `json:"masterKeeperUID,omitempty"`
	MasterDBUID         string `json:"masterDBUID,omitempty"`
	LocalPrimary        bool   `json:"localPrimary"`
	ClusterDataRevision int64  `json:"clusterdataRevision"`
	ClusterDataError    string `json:"clusterdataError,omitempty"`
}

func (a *Agent) currentStatus() Status {
	st := a.coord.State()
	s := Status{
		Agent:               a.name,
		KeeperUID:           a.cfg.KeeperUID,
		Leading:             st.Leading,
		LeadReason:          st.LeadReason,
		Leader:              st.Leader,
		LocalPrimary:        st.LocalPrimary,
		ClusterDataRevision: st.ClusterDataRevision,
		ClusterDataError:    st.ClusterDataErr,
	}
	if st.HasMaster {
		s.MasterKeeperUID, s.MasterDBUID = st.Master.KeeperUID, st.Master.DBUID
	}
	return s
}

func (a *Agent) status(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.currentStatus())
}

// readyz answers 200 once the agent has read usable clusterdata; otherwise
// 503 with the reason, so that an orchestrator shows why it is not ready.
func (a *Agent) readyz(w http.ResponseWriter, _ *http.Request) {
	st := a.coord.State()
	switch {
	case st.ClusterDataRevision == 0 && st.ClusterDataErr == "":
		http.Error(w, "not ready: clusterdata not read yet (is etcd reachable?)", http.StatusServiceUnavailable)
	case st.ClusterDataErr != "":
		http.Error(w, "not ready: "+st.ClusterDataErr, http.StatusServiceUnavailable)
	default:
		_, _ = w.Write([]byte("ok\n"))
	}
}
