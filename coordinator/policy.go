package coordinator

import "time"

// Leader policies, DESIGN.md §1.
const (
	// PolicyFollowMaster: the agent beside the master leads once its
	// PostgreSQL is promoted; others take over only when it is missing.
	PolicyFollowMaster = "follow-master"
	// PolicyAny: a dedicated backup host that always campaigns.
	PolicyAny = "any"
)

// leadReason says why an agent leads, because it decides when it must
// hand leadership back.
type leadReason int

const (
	notLeading leadReason = iota
	// leadAsMaster: this agent's keeper is the master. It resigns as soon as
	// clusterdata names another master.
	leadAsMaster
	// leadAsTakeover: the master's agent was missing for the takeover delay;
	// this agent works over the network until the master's agent returns.
	leadAsTakeover
	// leadAsAny: policy any; never hands back.
	leadAsAny
)

func (r leadReason) String() string {
	switch r {
	case leadAsMaster:
		return "master"
	case leadAsTakeover:
		return "takeover"
	case leadAsAny:
		return "any"
	}
	return "none"
}

// inputs is everything the role decision depends on, gathered by the role
// loop from clusterdata, the election and the agents' records.
type inputs struct {
	policy string
	// masterKnown: clusterdata names a master DB that exists.
	masterKnown bool
	// mineIsMaster: clusterdata's master DB belongs to this agent's keeper.
	mineIsMaster bool
	// localPrimary: this agent's PostgreSQL answered pg_is_in_recovery()=false.
	localPrimary bool
	// masterAgentCandidate: the agent beside the master is alive and wants to
	// lead (it published candidate=true), so a takeover leader hands back.
	masterAgentCandidate bool
	// sinceMasterLed: how long no agent beside the master has led.
	sinceMasterLed time.Duration
	takeoverDelay  time.Duration
	// leading: this agent holds leadership now, and why.
	leading leadReason
}

// decision is what the role loop should do next.
type decision struct {
	// campaign: be a candidate (or stay leader) with this reason; notLeading
	// means withdraw a pending campaign.
	campaign leadReason
	// resign: give up leadership now.
	resign bool
}

// decide is the role policy of DESIGN.md §1 as a pure function, so that every
// branch, in particular the ones that hand leadership over, is table-tested.
func decide(in inputs) decision {
	if in.policy == PolicyAny {
		return decision{campaign: leadAsAny}
	}
	if in.mineIsMaster {
		if in.localPrimary {
			return decision{campaign: leadAsMaster}
		}
		// Clusterdata already names us but PostgreSQL is not promoted yet
		// (the sentinel writes first, the keeper promotes a moment later), or
		// our PostgreSQL is unreachable. Do not lead over a standby; keep an
		// existing takeover leadership of ours going until we are ready.
		if in.leading == leadAsTakeover {
			return decision{campaign: leadAsTakeover}
		}
		return decision{resign: in.leading != notLeading}
	}
	// Not the master's agent.
	switch in.leading {
	case leadAsMaster, leadAsAny:
		// Clusterdata names another master: step down at once.
		return decision{resign: true}
	case leadAsTakeover:
		if in.masterAgentCandidate || !in.masterKnown {
			return decision{resign: true}
		}
		return decision{campaign: leadAsTakeover}
	}
	if in.masterKnown && !in.masterAgentCandidate && in.sinceMasterLed >= in.takeoverDelay {
		return decision{campaign: leadAsTakeover}
	}
	return decision{}
}
