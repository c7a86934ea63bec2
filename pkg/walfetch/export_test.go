package walfetch

import "testing"

// SetLockBusyHook makes fn run whenever Fetch finds a segment's spool lock
// held by a prefetcher, until the test ends.
func SetLockBusyHook(t *testing.T, fn func(file string)) {
	lockBusyHook = fn
	t.Cleanup(func() { lockBusyHook = nil })
}
