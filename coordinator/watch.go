package coordinator

import (
	"context"
	"errors"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/internal/retry"
)

// follow keeps load up to date with key (or the prefix, with
// clientv3.WithPrefix in opts): Get, then Watch from that revision + 1, and
// Get again after any watch event, compaction or broken watch (the pattern of
// observe in etcd's concurrency/election.go). It blocks until ctx ends and
// then returns nil.
func (c *Coordinator) follow(ctx context.Context, what, key string, opts []clientv3.OpOption, load func(*clientv3.GetResponse)) error {
	var failures int
	for ctx.Err() == nil {
		resp, err := c.cli.Get(ctx, key, opts...)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.etcdError(what, err)
			failures++
			sleepCtx(ctx, backoff(failures))
			continue
		}
		failures = 0
		load(resp)
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := c.cli.Watch(wctx, key, append(opts, clientv3.WithRev(resp.Header.Revision+1))...)
		for wr := range wch {
			if err := wr.Err(); err != nil {
				if !errors.Is(ctx.Err(), context.Canceled) {
					c.etcdError(what+"-watch", err)
				}
				break
			}
			if len(wr.Events) == 0 {
				continue
			}
			// Re-read rather than apply events one by one: the values are
			// small, and a Get gives one consistent view.
			resp, err := c.cli.Get(ctx, key, opts...)
			if err != nil {
				if ctx.Err() == nil {
					c.etcdError(what, err)
				}
				break
			}
			load(resp)
		}
		cancel()
		sleepCtx(ctx, backoff(1))
	}
	return nil
}

// backoff is the delay before the n-th consecutive retry of an etcd
// request: 100 ms doubling up to 5 s.
func backoff(n int) time.Duration { return retry.Backoff(n, 100*time.Millisecond, 5*time.Second) }

// sleepCtx waits for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) { retry.Sleep(ctx, d) }
