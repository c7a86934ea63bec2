package coordinator

import (
	"context"
	"errors"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// errLeaseLapsed is the cause of a leader work context cancelled because
// the lease went unrenewed for longer than a healthy renewal takes
// (leaseFreshFor): leadership may be ending, the work did not fail.
var errLeaseLapsed = errors.New("lease not renewed in time")

// keepAliveWait bounds how late etcd's client sends a keep-alive past its
// due time: it looks for due ones every 500 ms (clientv3's retryConnWait).
const keepAliveWait = 500 * time.Millisecond

// leaseFreshFor is how long after a renewal the lease still counts as ours.
// A healthy renewal arrives at the latest a third of the TTL after the last
// one (when etcd's client sends the next keep-alive), plus keepAliveWait,
// plus a round trip. etcd expires the lease TTL after the server renewed
// it, which is before this agent hears of it. The lease counts as fresh up
// to midway between the two: equal slack for a slow round trip and for
// noticing the lapse and stopping before another agent can be elected
// (0.75 s each for the tests' 3 s TTL, 3.1 s for the default 10 s). At half
// the TTL the slack for the round trip was 0 to 0.5 s, and a busy machine
// lapsed a lone healthy leader every few seconds.
func leaseFreshFor(ttl time.Duration) time.Duration {
	return (ttl/3 + keepAliveWait + ttl) / 2
}

// leaseLapseMargin is the time between a lapse and the earliest expiry
// of the lease on the server.
func leaseLapseMargin(ttl time.Duration) time.Duration {
	return ttl - leaseFreshFor(ttl)
}

// The lease clock lives beside the role loop, not in it. etcd expires a
// lease TTL after its last renewal, and after the takeover delay another
// agent may lead; this agent must have stopped believing it leads, and
// stopped its work, before then. The role loop cannot promise that: one of
// its steps can be held up for seconds (an agent record write timing out
// while etcd is unreachable, a slow pg_is_in_recovery() answer). So a
// goroutine of each session takes the lease's keep-alives and, when
// leaseFreshFor passes without one, ends the leadership belief and the work
// itself.
//
// The fields it shares with the role loop are in Coordinator under mu:
// leaseGen (the session they belong to), leaseRenewed and stopFreshWork.

// beginLease starts the lease clock of a new session and returns its
// generation.
func (c *Coordinator) beginLease(ka <-chan *clientv3.LeaseKeepAliveResponse) {
	c.mu.Lock()
	c.leaseGen++
	gen := c.leaseGen
	c.leaseRenewed = time.Now()
	c.mu.Unlock()
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		c.watchLease(gen, ka)
	}()
}

// endLease forgets the current session's lease: nothing is fresh until the
// next session starts.
func (c *Coordinator) endLease() {
	c.mu.Lock()
	c.leaseGen++
	c.leaseRenewed = time.Time{}
	c.mu.Unlock()
}

// watchLease records the renewals of session gen's lease until its
// keep-alive channel closes or the coordinator shuts down, and lapses the
// leadership when leaseFreshFor passes without one.
func (c *Coordinator) watchLease(gen uint64, ka <-chan *clientv3.LeaseKeepAliveResponse) {
	fresh := leaseFreshFor(c.opts.LeaseTTL)
	timer := time.NewTimer(fresh)
	defer timer.Stop()
	for {
		select {
		case <-c.bgCtx.Done():
			return
		case resp, ok := <-ka:
			if !ok {
				// The client gave up keeping the lease alive: it expired, was
				// revoked, or the session ended.
				c.lapseLease(gen, true)
				return
			}
			if resp == nil {
				continue
			}
			c.mu.Lock()
			if c.leaseGen == gen {
				c.leaseRenewed = time.Now()
			}
			c.mu.Unlock()
			timer.Reset(fresh)
		case <-timer.C:
			c.lapseLease(gen, false)
		}
	}
}

// lapseLease ends the leadership belief and the leader work of session gen
// when its lease is not fresh (gone: it will not be renewed again).
func (c *Coordinator) lapseLease(gen uint64, gone bool) {
	c.mu.Lock()
	if c.leaseGen != gen {
		c.mu.Unlock()
		return
	}
	if gone {
		c.leaseRenewed = time.Time{}
	}
	if c.leaseFreshLocked(time.Now()) {
		c.mu.Unlock()
		return
	}
	since := time.Since(c.leaseRenewed)
	stop := c.stopFreshWork
	c.stopFreshWork = nil
	wasLeading := c.state.Leading
	if wasLeading {
		c.state.Leading, c.state.LeadReason, c.state.LeadingSince = false, "", time.Time{}
	}
	c.mu.Unlock()

	if stop != nil {
		stop(errLeaseLapsed)
	}
	if wasLeading {
		c.metrics.isLeader.Set(0)
		c.metrics.leaseLapses.Inc()
		if gone {
			c.log.Warn("lease lost; stopping leader work")
		} else {
			c.log.Warn("lease not renewed in time; stopping leader work until it is", "since_renewal", since.Round(time.Millisecond).String())
		}
		c.notify()
	}
	c.kick()
}

// leaseFresh reports whether the current session's lease was renewed less
// than leaseFreshFor ago.
func (c *Coordinator) leaseFresh() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leaseFreshLocked(time.Now())
}

func (c *Coordinator) leaseFreshLocked(now time.Time) bool {
	return !c.leaseRenewed.IsZero() && now.Sub(c.leaseRenewed) < leaseFreshFor(c.opts.LeaseTTL)
}

// freshWorkContext derives the leader work's context from parent, to be
// cancelled by a lapse of the lease as well; ok is false (and nothing is
// started) when the lease is not fresh now.
func (c *Coordinator) freshWorkContext(parent context.Context) (ctx context.Context, cancel context.CancelCauseFunc, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.leaseFreshLocked(time.Now()) {
		return nil, nil, false
	}
	ctx, cancel = context.WithCancelCause(parent)
	c.stopFreshWork = cancel
	return ctx, cancel, true
}
