// Package retry holds the backoff that every retry loop of barnacle uses:
// exponential, capped, with jitter, and sleeps that end with the context.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff returns the delay before the n-th consecutive retry (n >= 1):
// base doubled n-1 times, at most max, then jittered into [d/2, d] so that
// agents that failed together do not retry together.
func Backoff(n int, base, max time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d/2 + rand.N(d/2+1)
}

// Sleep waits for d or until ctx ends, whichever is first.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
