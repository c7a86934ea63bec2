package agent

import (
	"context"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/retention"
)

// Retention timing. A backup request that finishes done wakes the loop at
// once (whoever took it: a follower may take one from its standby, so the
// leader watches the request statuses rather than its own work); a done
// backup that came another way (barnacle backup --local) is noticed within
// retentionCheckInterval. Without a new backup the plan is applied once a
// day, so that a recovery window moves on. A failed run is retried sooner.
const (
	retentionCheckInterval = time.Minute
	retentionDailyInterval = 24 * time.Hour
	retentionRetryInterval = 15 * time.Minute
)

// retainer applies retention-policy while this agent leads.
type retainer struct {
	opts    retentionOptions
	log     hclog.Logger
	etcd    *clientv3.Client
	keys    request.Keys
	archive *archiveHandle
}

// retentionOptions is what retention takes from the configuration.
type retentionOptions struct {
	Cluster string
	// Policy returns retention-policy and minimum-redundancy as last
	// reloaded, read together.
	Policy func() (config.RetentionPolicy, int)
}

// loop applies retention-policy while this agent leads: when it
// starts leading, after each new done backup, and daily. It returns nil
// when ctx ends, at once when no policy is set, and never fails: errors
// are logged and retried.
func (b *retainer) loop(ctx context.Context) error {
	log := b.log
	var (
		lastNewest string    // newest done backup at the last successful run
		next       time.Time // when the next run is due regardless
	)
	for {
		// The revision before the catalog is read: a backup that finishes
		// after it wakes the wait below.
		var rev int64
		if resp, err := b.etcd.Get(ctx, b.keys.Statuses(request.KindBackup), clientv3.WithPrefix(), clientv3.WithCountOnly()); err == nil {
			rev = resp.Header.Revision
		}
		// retention-policy is live (reload.go): without one, do nothing
		// until a reload sets it.
		policy, _ := b.opts.Policy()
		noPolicy := policy.IsZero()
		newest, err := b.newestDoneBackup(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case noPolicy:
		case err != nil:
			log.Warn("listing backups for retention failed", "error", err)
		case newest != lastNewest || !time.Now().Before(next):
			err := b.applyRetention(ctx, log)
			// What it deleted, even in a run that failed half way, leaves
			// the catalog gauges at once.
			b.archive.changed()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				log.Warn("applying retention-policy failed; retrying", "error", err, "retry_in", retentionRetryInterval)
				next = time.Now().Add(retentionRetryInterval)
			} else {
				lastNewest, next = newest, time.Now().Add(retentionDailyInterval)
				b.archive.catalog.retentionSucceeded(time.Now())
			}
		}
		if rev == 0 {
			sleepCtx(ctx, retentionCheckInterval)
		} else {
			waitBackupFinished(ctx, b.etcd, b.keys, rev, retentionCheckInterval)
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// newestDoneBackup returns the ID of the newest done backup, "" when none.
func (b *retainer) newestDoneBackup(ctx context.Context) (string, error) {
	list, err := b.archive.listBackups(ctx)
	if err != nil {
		return "", err
	}
	for _, d := range list {
		if d.Status == catalog.StatusDone {
			return d.ID, nil
		}
	}
	return "", nil
}

// applyRetention plans and applies retention-policy once, logging what it
// deleted and what it left alone.
func (b *retainer) applyRetention(ctx context.Context, log hclog.Logger) error {
	be, err := b.archive.open(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	policy, minRedundancy := b.opts.Policy() // both are live
	pol := retention.Policy{
		Redundancy:        policy.Redundancy,
		WindowStart:       policy.WindowStart(now),
		MinimumRedundancy: minRedundancy,
		Text:              policy.String(),
	}
	in, err := retention.ReadInput(ctx, be, b.opts.Cluster, pol)
	if err != nil {
		return err
	}
	plan := retention.MakePlan(in)
	for _, n := range plan.Notes {
		log.Warn("retention note", "note", n)
	}
	res, err := retention.Apply(ctx, be, b.opts.Cluster, plan)
	for _, d := range res.Deleted {
		log.Info("backup deleted by retention", "backup", d.ID, "status", d.Status, "reason", d.Reason)
	}
	for _, s := range res.Skipped {
		log.Warn("retention left a planned backup alone", "backup", s.ID, "reason", s.Reason)
	}
	if res.WALSkipped != "" {
		log.Warn("retention deleted no WAL", "reason", res.WALSkipped)
	}
	if len(res.Deleted) > 0 || res.DeletedWAL > 0 {
		var first, last string
		if res.DeletedWAL > 0 {
			first, last = plan.WAL.Delete[0].Name, plan.WAL.Delete[res.DeletedWAL-1].Name
		}
		log.Info("retention applied", "policy", pol.Text, "deleted_backups", len(res.Deleted), "deleted_wal_files", res.DeletedWAL,
			"deleted_wal_bytes", res.DeletedWALBytes, "first_wal", first, "last_wal", last, "kept_backups", len(plan.Keep))
	}
	return err
}
