package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// Status is what GET /status returns: this agent's own view, for people and
// for tests that sample who believes it leads.
type Status struct {
	Agent      string `json:"agent"`
	KeeperUID  string `json:"keeperUID,omitempty"`
	Leading    bool   `json:"leading"`
	LeadReason string `json:"leadReason,omitempty"`
	// LeadingSince is when this agent began to say it leads, without a
	// break since; absent while it does not.
	LeadingSince        *time.Time `json:"leadingSince,omitempty"`
	Leader              string     `json:"leader"`
	MasterKeeperUID     string     `json:"masterKeeperUID,omitempty"`
	MasterDBUID         string     `json:"masterDBUID,omitempty"`
	LocalPrimary        bool       `json:"localPrimary"`
	ClusterDataRevision int64      `json:"clusterdataRevision"`
	ClusterDataError    string     `json:"clusterdataError,omitempty"`
	// KeeperDiscovery is set with keeper-uid auto.
	KeeperDiscovery *KeeperDiscovery `json:"keeperDiscovery,omitempty"`
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
	if st.Leading {
		since := st.LeadingSince.UTC()
		s.LeadingSince = &since
	}
	if a.keeperAuto != nil {
		d := a.keeperAuto.current()
		s.KeeperDiscovery = &d
	}
	return s
}

func (a *Agent) status(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.currentStatus())
}

// streamingDownGrace is how long the leader may be without a stream
// before /readyz fails: long enough for a reconnect or a master switch,
// short enough that an orchestrator shows a stuck archiver within a minute.
const streamingDownGrace = 30 * time.Second

// readiness is what /readyz decides on.
type readiness struct {
	now                 time.Time
	clusterDataRevision int64
	clusterDataErr      string
	leading             bool
	leadingSince        time.Time
	streaming           bool
	streamingSince      time.Time // when streaming last started or stopped
	lastError           string
	gap                 string // archiverState.Gap: an unresolved WAL gap
	lagBytes            int64
	maxLag              int64 // check-max-lag; 0 means no limit
}

// notReady returns why the agent is not ready, or "" when it is. A
// follower is ready once it has usable clusterdata; the leader also while
// it streams with lag at most check-max-lag, or has not streamed for less
// than streamingDownGrace since it began to lead or last streamed, and no
// recorded WAL gap waits for a base backup after it.
func notReady(r readiness) string {
	switch {
	case r.clusterDataRevision == 0 && r.clusterDataErr == "":
		return "clusterdata not read yet (is etcd reachable?)"
	case r.clusterDataErr != "":
		return r.clusterDataErr
	case !r.leading:
		return ""
	case !r.streaming:
		from := r.streamingSince
		if r.leadingSince.After(from) {
			from = r.leadingSince
		}
		down := r.now.Sub(from)
		if down <= streamingDownGrace {
			return r.gap
		}
		why := fmt.Sprintf("leader has not streamed WAL for %s", down.Round(time.Second))
		if r.lastError != "" {
			why += ": " + r.lastError
		}
		return why
	case r.maxLag > 0 && r.lagBytes > r.maxLag:
		return fmt.Sprintf("archive lag %d bytes is above check-max-lag %d bytes", r.lagBytes, r.maxLag)
	case r.gap != "":
		return r.gap
	}
	return ""
}

// readyz answers 200 when notReady finds nothing, else 503 with the
// reason, so that an orchestrator shows why the agent is not ready.
func (a *Agent) readyz(w http.ResponseWriter, _ *http.Request) {
	st := a.coord.State()
	r := readiness{
		now:                 time.Now(),
		clusterDataRevision: st.ClusterDataRevision,
		clusterDataErr:      st.ClusterDataErr,
		leading:             st.Leading,
		leadingSince:        st.LeadingSince,
		maxLag:              a.liveConfig().CheckMaxLag,
	}
	if a.archiver != nil {
		r.streaming, r.streamingSince = a.archiver.metrics.streaming.state()
		s := a.archiver.snapshot()
		r.lastError, r.gap = joinProblems(s.LastError, s.Gap), s.Gap
		if s.ServerEnd > s.Flushed {
			r.lagBytes = int64(s.ServerEnd - s.Flushed) //nolint:gosec // an LSN difference fits
		}
	}
	if why := notReady(r); why != "" {
		http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}
