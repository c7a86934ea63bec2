package kubekeeper

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a Watcher starts ends with its context.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
