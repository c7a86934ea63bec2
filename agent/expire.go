package agent

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

// expireInterval is how often the leader looks for expired requests: one
// read of the status keys and one of the claim markers a minute, per kind,
// on one agent, instead of every agent reading every request every 2 s.
const expireInterval = time.Minute

// expirer removes finished requests of every kind from etcd, and claimed
// ones whose status was deleted (request.Queue.Expire).
type expirer struct {
	log hclog.Logger
	// retention returns request-retention as last reloaded.
	retention func() time.Duration
	backups   *request.Queue[request.BackupResult]
	restores  *request.Queue[request.RestoreResult]
	drills    *request.Queue[catalog.Drill]
}

// loop runs on the leader until ctx ends: it expires finished requests
// older than request-retention (read live, so a reload applies), fenced on
// term (request.Queue.Expire).
func (e *expirer) loop(ctx context.Context, term coordinator.Term) error {
	tk := time.NewTicker(expireInterval)
	defer tk.Stop()
	for {
		if ret := e.retention(); ret > 0 {
			expire(ctx, e.backups, ret, term, e.log)
			expire(ctx, e.restores, ret, term, e.log)
			expire(ctx, e.drills, ret, term, e.log)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
		}
	}
}

// expire expires the finished requests of one queue; a failure is retried
// at the next tick.
func expire[R any](ctx context.Context, q *request.Queue[R], retention time.Duration, term coordinator.Term, log hclog.Logger) {
	_, err := q.Expire(ctx, retention, time.Now(), term.Fence())
	switch {
	case err == nil || ctx.Err() != nil:
	case errors.Is(err, request.ErrFenced):
		// The leader work stops with the term; nothing was deleted.
		log.Debug("expiring finished requests stopped: not leader any more")
	default:
		log.Warn("expiring finished requests failed; retrying", "kind", string(q.Kind()), "error", err)
	}
}
