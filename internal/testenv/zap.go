package testenv

import "go.uber.org/zap"

// NopZapLogger returns a logger that drops etcd client logs, which would
// otherwise flood test output with reconnect noise.
func NopZapLogger() *zap.Logger { return zap.NewNop() }
