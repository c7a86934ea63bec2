package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

const (
	// tick bounds how late the role loop notices a change that comes with
	// no etcd event: a promotion seen through pg_is_in_recovery(), a stale
	// lease, the takeover delay running out.
	tick = 250 * time.Millisecond
	// localCheckInterval is how often the master's agent asks its
	// PostgreSQL whether it is promoted.
	localCheckInterval = 500 * time.Millisecond
	// recordRefresh is how often an unchanged agent record is rewritten so
	// that its updatedAt shows the agent is alive.
	recordRefresh = 5 * time.Second
	// positionRefresh is how often a record whose only change is the
	// streaming positions is rewritten.
	positionRefresh = time.Second
	// shutdownTimeout bounds resignation and lease revocation on exit.
	shutdownTimeout = 3 * time.Second
)

// leaderWork is a running LeaderWork call.
type leaderWork struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan error
}

// role is the role loop's own state. Only roleLoop touches it.
type role struct {
	sess *concurrency.Session
	// kaCancel ends the second keep-alive listener of the session's lease,
	// which feeds the lease clock (lease.go): a leader whose lease was not
	// renewed in time (leaseFreshFor) stops its work, since etcd may expire the
	// lease before this agent's keep-alive notices, and another agent must
	// never lead while this one still works.
	kaCancel context.CancelFunc
	election *concurrency.Election

	campaignReason leadReason
	campaignCancel context.CancelFunc
	campaignDone   chan error

	won    bool // the election key is ours
	reason leadReason
	term   Term

	work         *leaderWork
	workRetryAt  time.Time
	workFailures int

	lastMasterLed  time.Time
	localPrimary   bool
	lastLocalCheck time.Time

	lastRecord    AgentStatus
	lastRecordAt  time.Time
	sessFailures  int
	publishedLead bool
}

func (c *Coordinator) roleLoop(ctx context.Context) error {
	r := &role{lastMasterLed: time.Now()}
	defer c.shutdown(ctx, r)
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for ctx.Err() == nil {
		if r.sess == nil {
			if err := c.startSession(ctx, r); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				r.sessFailures++
				c.etcdError("session", err)
				sleepCtx(ctx, backoff(r.sessFailures))
				continue
			}
			r.sessFailures = 0
		}
		c.step(ctx, r)

		var sessDone <-chan struct{}
		if r.sess != nil {
			sessDone = r.sess.Done()
		}
		var workDone chan error
		if r.work != nil {
			workDone = r.work.done
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.wake:
		case <-ticker.C:
		case err := <-r.campaignDone:
			c.campaignFinished(r, err)
		case <-sessDone:
			c.log.Warn("etcd session lost; leadership, if any, ends here")
			c.dropSession(r)
		case err := <-workDone:
			lapsed := errors.Is(context.Cause(r.work.ctx), errLeaseLapsed)
			r.work = nil
			if ctx.Err() == nil && err != nil && !lapsed {
				r.workFailures++
				r.workRetryAt = time.Now().Add(backoff(r.workFailures + 3))
				c.log.Error("leader work failed; restarting it while still leader", "error", err)
			}
		}
	}
	return nil
}

func (c *Coordinator) startSession(ctx context.Context, r *role) error {
	sctx, cancel := context.WithTimeout(ctx, c.opts.LeaseTTL)
	defer cancel()
	s, err := c.newSession(sctx)
	if err != nil {
		return err
	}
	// A second listener on the lease's keep-alives feeds the lease clock
	// (see role.kaCancel).
	kctx, kcancel := context.WithCancel(ctx)
	ka, err := c.cli.KeepAlive(kctx, s.Lease())
	if err != nil {
		kcancel()
		_ = s.Close()
		return err
	}
	r.sess, r.kaCancel = s, kcancel
	r.election = concurrency.NewElection(s, c.keys.Election())
	c.beginLease(ka)
	r.lastRecord = AgentStatus{}
	c.log.Debug("etcd session started", "lease", int64(s.Lease()))
	return nil
}

// dropSession forgets a session whose lease is gone (or must be given up).
// The lease may still be alive on the server (an etcd restart refreshes
// every lease), holding our old election key ahead of any new campaign of
// ours; it is revoked in the background as soon as etcd answers.
func (c *Coordinator) dropSession(r *role) {
	if r.sess != nil {
		lease := r.sess.Lease()
		r.sess.Orphan() // stop its keep-alive, if it still runs
		c.bg.Add(1)
		go func() {
			defer c.bg.Done()
			ctx, cancel := context.WithTimeout(c.bgCtx, 2*c.opts.LeaseTTL)
			defer cancel()
			for ctx.Err() == nil {
				if _, err := c.cli.Revoke(ctx, lease); err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) {
					return
				}
				sleepCtx(ctx, 200*time.Millisecond)
			}
		}()
	}
	c.stopWork(r)
	if r.campaignCancel != nil {
		r.campaignCancel()
	}
	if r.kaCancel != nil {
		r.kaCancel()
	}
	if r.won {
		c.metrics.leaderChanges.Inc()
	}
	c.endLease()
	r.sess, r.kaCancel, r.election = nil, nil, nil
	r.won, r.reason = false, notLeading
	r.campaignDone, r.campaignCancel = nil, nil
}

// step gathers the inputs, decides and acts once.
func (c *Coordinator) step(ctx context.Context, r *role) {
	now := time.Now()
	st := c.view()

	if st.MineIsMaster && c.opts.LocalPrimary != nil {
		if now.Sub(r.lastLocalCheck) >= localCheckInterval {
			r.lastLocalCheck = now
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			primary, err := c.opts.LocalPrimary(cctx, st)
			cancel()
			switch {
			case err != nil:
				// Unknown is not "in recovery": keep what we knew, so a
				// brief connection failure does not flap leadership.
				c.log.Debug("local postgres check failed", "error", err)
			case primary != r.localPrimary:
				c.log.Info("local postgres promotion state", "primary", primary)
				r.localPrimary = primary
			}
		}
	} else {
		r.localPrimary = false
	}
	st.LocalPrimary = r.localPrimary

	ma, haveMA := masterAgent(st)
	if (r.won && r.reason == leadAsMaster) || (haveMA && st.Leader == ma.Name) {
		r.lastMasterLed = now
	}
	in := inputs{
		policy:               c.opts.Policy,
		masterKnown:          st.HasMaster,
		mineIsMaster:         st.MineIsMaster,
		localPrimary:         r.localPrimary,
		masterAgentCandidate: haveMA && ma.Candidate && ma.Name != c.opts.AgentName,
		sinceMasterLed:       now.Sub(r.lastMasterLed),
		takeoverDelay:        c.opts.TakeoverDelay,
	}
	if r.won {
		in.leading = r.reason
	}
	d := decide(in)

	if d.resign && r.won {
		c.resign(ctx, r, "policy")
	}
	c.removeLeftoverCandidacy(ctx, r)
	switch {
	case d.campaign != notLeading && r.won:
		if r.reason != d.campaign {
			c.log.Info("leading for a new reason", "from", r.reason.String(), "to", d.campaign.String())
			r.reason = d.campaign
			r.term.Reason = d.campaign.String()
		}
	case d.campaign != notLeading && r.campaignDone == nil && r.election != nil:
		c.startCampaign(ctx, r, d.campaign)
	case d.campaign == notLeading && r.campaignCancel != nil:
		// Withdraw: a cancelled Campaign deletes its key, so we leave the
		// queue and the agent that should lead gets the election.
		r.campaignCancel()
		r.campaignCancel = nil
	}

	// The lease clock has already cancelled the work of a lease that went
	// stale (lease.go); here the loop waits for it to end.
	fresh := r.won && c.leaseFresh()
	switch {
	case fresh && r.work == nil && now.After(r.workRetryAt):
		c.startWork(ctx, r)
	case !fresh && r.work != nil:
		c.stopWork(r)
	}

	st.Leading = fresh
	if fresh {
		st.LeadReason = r.reason.String()
	}
	st = c.publish(st)
	if st.Leading != r.publishedLead {
		r.publishedLead = st.Leading
		if st.Leading {
			c.metrics.isLeader.Set(1)
		} else {
			c.metrics.isLeader.Set(0)
		}
	}
	c.publishRecord(ctx, r, st, in.mineIsMaster && r.localPrimary)
}

// removeLeftoverCandidacy deletes this session's key from the election's
// queue when no campaign of ours runs and we do not lead. Such a key is
// left by a campaign withdrawn while its put was on its way: the client
// gave up, etcd applied it. It would queue ahead of every later candidate
// for as long as our session lives, and this agent, not campaigning, would
// never win and resign; the master's agent would wait behind it for ever.
func (c *Coordinator) removeLeftoverCandidacy(ctx context.Context, r *role) {
	if r.won || r.campaignDone != nil || r.sess == nil {
		return
	}
	key := fmt.Sprintf("%s/%x", c.keys.Election(), r.sess.Lease())
	c.mu.Lock()
	left := c.electionKeys[key]
	c.mu.Unlock()
	if !left {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := c.cli.Delete(dctx, key); err != nil {
		c.etcdError("withdraw", err) // the next step tries again
		return
	}
	c.mu.Lock()
	delete(c.electionKeys, key) // until the watch shows the deletion
	c.mu.Unlock()
	c.log.Warn("removed a candidacy of ours left in the election queue", "key", key)
}

func (c *Coordinator) startCampaign(ctx context.Context, r *role, reason leadReason) {
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	el := r.election
	go func() { done <- el.Campaign(cctx, c.opts.AgentName) }()
	r.campaignReason, r.campaignCancel, r.campaignDone = reason, cancel, done
	c.log.Info("campaigning for leadership", "reason", reason.String())
}

func (c *Coordinator) campaignFinished(r *role, err error) {
	reason := r.campaignReason
	r.campaignDone = nil
	withdrawn := r.campaignCancel == nil
	if r.campaignCancel != nil {
		r.campaignCancel()
		r.campaignCancel = nil
	}
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			c.etcdError("campaign", err)
		}
		return
	}
	if withdrawn {
		// We won just as we withdrew; the next step resigns if the policy
		// still says so.
		c.log.Debug("won a withdrawn campaign")
	}
	r.won, r.reason = true, reason
	r.term = Term{Key: r.election.Key(), Rev: r.election.Rev(), Reason: reason.String()}
	c.metrics.leaderChanges.Inc()
	c.log.Info("elected leader", "reason", reason.String(), "rev", r.term.Rev)
	c.kick()
}

func (c *Coordinator) resign(ctx context.Context, r *role, why string) {
	c.stopWork(r)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := r.election.Resign(rctx); err != nil {
		c.etcdError("resign", err)
		// The key may still be ours; giving up the session is the only way
		// to be sure another agent can lead.
		if r.sess != nil {
			_ = r.sess.Close()
		}
		c.dropSession(r)
		return
	}
	r.won, r.reason = false, notLeading
	c.metrics.leaderChanges.Inc()
	c.log.Info("resigned leadership", "why", why)
}

func (c *Coordinator) startWork(ctx context.Context, r *role) {
	wctx, cancel, ok := c.freshWorkContext(r.sess.Ctx())
	if !ok {
		return // the lease went stale since step looked; the next step sees it
	}
	if c.opts.LeaderWork == nil {
		r.work = &leaderWork{ctx: wctx, cancel: cancel, done: make(chan error)}
		return
	}
	stop := context.AfterFunc(ctx, func() { cancel(ctx.Err()) })
	done := make(chan error, 1)
	term := r.term
	go func() {
		defer stop()
		done <- c.opts.LeaderWork(wctx, term)
	}()
	r.work = &leaderWork{ctx: wctx, cancel: cancel, done: done}
}

// stopWork ends the leader work and waits for it, so that leadership is
// never given up while the work still runs.
func (c *Coordinator) stopWork(r *role) {
	if r.work == nil {
		return
	}
	r.work.cancel(context.Canceled)
	if c.opts.LeaderWork != nil {
		began := time.Now()
		<-r.work.done
		if took := time.Since(began); took > leaseLapseMargin(c.opts.LeaseTTL) {
			// Longer than the margin between a lapse and the lease's expiry:
			// after that and an election another agent may lead while this
			// work still runs.
			c.log.Warn("leader work was slow to stop", "took", took.Round(time.Millisecond).String())
		}
	}
	r.work = nil
	if r.publishedLead {
		r.publishedLead = false
		c.metrics.isLeader.Set(0)
		st := c.State()
		st.Leading, st.LeadReason = false, ""
		c.publish(st)
	}
}

func (c *Coordinator) publishRecord(ctx context.Context, r *role, st State, candidate bool) {
	if r.sess == nil {
		return
	}
	rec := c.statusRecord(st, candidate)
	since := time.Since(r.lastRecordAt)
	switch {
	case rec == r.lastRecord && since < recordRefresh:
		return
	case positionsOnly(rec, r.lastRecord) && since < positionRefresh:
		// Streaming positions change all the time; followers only need
		// them to advance their standby slots, so once a second will do.
		return
	}
	cmp := rec
	rec.UpdatedAt = time.Now().UTC()
	b, err := json.Marshal(rec)
	if err != nil {
		panic(err) // AgentStatus always marshals
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := c.cli.Put(pctx, c.keys.Agent(c.opts.AgentName), string(b), clientv3.WithLease(r.sess.Lease())); err != nil {
		if ctx.Err() == nil {
			c.etcdError("put-agent", err)
		}
		return
	}
	r.lastRecord, r.lastRecordAt = cmp, time.Now()
}

// shutdown stops the work, resigns and revokes the lease with a fresh,
// bounded context: the run context is already cancelled.
func (c *Coordinator) shutdown(ctx context.Context, r *role) {
	// Revocations of dropped sessions give up now; their leases expire.
	c.bgCancel()
	defer c.bg.Wait()
	c.stopWork(r)
	if r.campaignCancel != nil {
		r.campaignCancel()
	}
	if r.sess == nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if r.won {
		if err := r.election.Resign(sctx); err != nil {
			c.log.Warn("resign on shutdown failed; the lease expiry will end leadership", "error", err)
		} else {
			c.log.Info("resigned leadership", "why", "shutdown")
		}
	}
	if _, err := c.cli.Revoke(sctx, r.sess.Lease()); err != nil {
		c.log.Warn("revoke lease on shutdown failed", "error", err)
	}
	r.sess.Orphan()
	if r.kaCancel != nil {
		r.kaCancel()
	}
	c.metrics.isLeader.Set(0)
}

// positionsOnly reports whether a and b differ at most in their streaming
// positions.
func positionsOnly(a, b AgentStatus) bool {
	for _, r := range []*AgentStatus{&a, &b} {
		r.ReceivedLSN, r.FlushedLSN, r.ArchivedLSN, r.LastArchivedSegment = 0, 0, 0, ""
	}
	return a == b
}
