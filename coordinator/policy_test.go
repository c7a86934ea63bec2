package coordinator

import (
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	const delay = 30 * time.Second
	base := inputs{policy: PolicyFollowMaster, masterKnown: true, takeoverDelay: delay}
	with := func(f func(*inputs)) inputs { in := base; f(&in); return in }
	cases := []struct {
		name string
		in   inputs
		want decision
	}{
		{"any always campaigns", with(func(in *inputs) { in.policy = PolicyAny; in.masterKnown = false }), decision{campaign: leadAsAny}},
		{"master agent promoted campaigns", with(func(in *inputs) { in.mineIsMaster = true; in.localPrimary = true }), decision{campaign: leadAsMaster}},
		{"master agent not yet promoted waits", with(func(in *inputs) { in.mineIsMaster = true }), decision{}},
		{"master agent leading but now in recovery resigns", with(func(in *inputs) { in.mineIsMaster = true; in.leading = leadAsMaster }), decision{resign: true}},
		{"takeover leader whose keeper became master keeps leading until promoted", with(func(in *inputs) { in.mineIsMaster = true; in.leading = leadAsTakeover }), decision{campaign: leadAsTakeover}},
		{"old master agent resigns after failover", with(func(in *inputs) { in.leading = leadAsMaster; in.masterAgentCandidate = true }), decision{resign: true}},
		{"old master agent resigns even if nobody is ready", with(func(in *inputs) { in.leading = leadAsMaster }), decision{resign: true}},
		{"follower waits while master agent led recently", with(func(in *inputs) { in.sinceMasterLed = delay - time.Second }), decision{}},
		{"follower takes over after the delay", with(func(in *inputs) { in.sinceMasterLed = delay }), decision{campaign: leadAsTakeover}},
		{"follower does not take over from a ready master agent", with(func(in *inputs) { in.sinceMasterLed = 2 * delay; in.masterAgentCandidate = true }), decision{}},
		{"follower does not take over without a master", with(func(in *inputs) { in.sinceMasterLed = 2 * delay; in.masterKnown = false }), decision{}},
		{"takeover leader hands back to the master agent", with(func(in *inputs) { in.leading = leadAsTakeover; in.masterAgentCandidate = true }), decision{resign: true}},
		{"takeover leader keeps leading while master agent is absent", with(func(in *inputs) { in.leading = leadAsTakeover; in.sinceMasterLed = 2 * delay }), decision{campaign: leadAsTakeover}},
		{"takeover leader steps down when no master is known", with(func(in *inputs) { in.leading = leadAsTakeover; in.masterKnown = false }), decision{resign: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := decide(tc.in); got != tc.want {
				t.Fatalf("decide(%+v) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}
