package agent

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"

	"github.com/barnacle-pg/barnacle/internal/testenv"
)

// TestMain fails the package's tests if any goroutine outlives them:
// every goroutine has an owner that waits for it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// runAgent runs a until the test ends, then stops it and checks that it
// stopped cleanly; a failed test shows the agent's log.
func runAgent(t *testing.T, a *Agent, log *testenv.SyncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Error("agent did not stop")
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", log.String())
		}
	})
}
