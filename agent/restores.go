package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/request"
	"github.com/barnacle-pg/barnacle/pkg/restore"
)

// restores serves restore requests: the agent beside the named keeper runs
// them; the leader rejects those nobody could run (malformed, unknown
// keeper, no agent beside it). Whoever may write requests/ can make an
// agent write files, so a target must lie under restore-root.
type restores struct {
	opts    restoreOptions
	log     hclog.Logger
	coord   *coordinator.Coordinator
	archive *archiveHandle

	queue *request.Queue[request.RestoreResult] // requests/restore/, status/restore/
}

// restoreOptions is what restores take from the configuration (all fixed
// keys: none of them reloads).
type restoreOptions struct {
	Cluster     string
	KeeperUID   string // the keeper beside this agent; "" for none
	RestoreRoot string // restores write only below it; "" refuses all
	ArchiveURL  string // for the restore_command of the restored server
}

// restoreSweepHint ends the error of a restore request swept after its
// agent died.
const restoreSweepHint = "its target directory may hold a partial restore: remove it (or set force) and request it again"

// serveRequests runs on every agent until ctx ends.
func (r *restores) serveRequests(ctx context.Context) error {
	r.queue.Serve(ctx, r.serve)
	return nil
}

// leaderDuties marks failed, while this agent leads, the restore requests
// whose agent died before finishing them, every staleCheckInterval.
func (r *restores) leaderDuties(ctx context.Context, term coordinator.Term) error {
	return everyStaleCheck(ctx, func() { r.queue.Sweep(ctx, aliveIn(r.coord.State().Agents), term.Fence()) })
}

// serve claims and runs (or rejects) one request if it is this agent's.
func (r *restores) serve(ctx context.Context, id string, value []byte) {
	if r.queue.Claimed(ctx, id) {
		return
	}
	req, rejectErr := request.ParseRestore(value)
	state := r.coord.State()
	mine := rejectErr == nil && r.opts.KeeperUID != "" && req.Keeper == r.opts.KeeperUID
	if !mine {
		if !state.Leading {
			return
		}
		if rejectErr == nil {
			rejectErr = r.nobodyRuns(state, req.Keeper)
			if rejectErr == nil {
				return // the agent beside that keeper takes it
			}
		}
	}
	// One restore at a time: while one runs, this agent's next request
	// stays unclaimed until it ends; bad ones are still answered at once.
	job, ok := r.queue.Claim(ctx, id, value, rejectErr == nil)
	if !ok {
		return
	}
	if rejectErr != nil {
		r.reject(ctx, job, rejectErr)
		return
	}
	r.queue.Start(func() { r.run(ctx, job, req) })
}

// reject writes a rejected final status.
func (r *restores) reject(ctx context.Context, job *request.Job[request.RestoreResult], err error) {
	job.Reject(ctx, err)
	r.log.Warn("restore request rejected", "request", job.ID, "error", err)
}

// run checks and runs a claimed request and writes its final status; it
// runs in the queue's job goroutine and returns when the restore ends or
// ctx does.
func (r *restores) run(ctx context.Context, job *request.Job[request.RestoreResult], req request.Restore) {
	rreq, err := r.toRequest(req)
	if err != nil {
		r.reject(ctx, job, err)
		return
	}
	be, err := r.archive.open(ctx)
	if err != nil {
		job.Fail(ctx, err)
		return
	}
	p, err := restore.Prepare(ctx, be, rreq)
	if err != nil {
		if restore.IsRejected(err) {
			r.reject(ctx, job, err)
		} else {
			job.Fail(ctx, err)
		}
		return
	}
	job.Running(ctx)
	kv := []any{"request", job.ID, "backup", p.Backup.ID, "target", rreq.Target.String(), "dir", rreq.TargetDir}
	if p.TargetRecord != 0 {
		kv = append(kv, "target_record", p.TargetRecord.String())
	}
	r.log.Info("restore request claimed", kv...)
	res, err := p.Run(ctx, be, r.log, func(done, total int64) { job.Progress(ctx, done, total) })
	switch {
	case err != nil && restore.IsRejected(err):
		r.reject(ctx, job, err)
		return
	case err != nil && len(res.MovedAside) > 0:
		// Force moved the old contents aside before the failure: say where
		// they are, or they look lost; room for the places within the
		// bounded error.
		job.Status.Result = &request.RestoreResult{BackupID: res.BackupID, TargetDir: res.TargetDir, MovedAside: res.MovedAside}
		msg := request.BoundText(err.Error(), request.ErrorLimit/2)
		for _, old := range slices.Sorted(maps.Keys(res.MovedAside)) {
			msg += fmt.Sprintf("; the old contents of %s are in %s", old, res.MovedAside[old])
		}
		job.Fail(ctx, errors.New(msg))
	case err != nil:
		job.Fail(ctx, err)
	default:
		job.Status.Progress = &request.Progress{Done: res.Bytes, Total: res.Bytes}
		job.Done(ctx, request.RestoreResult{BackupID: res.BackupID, TargetDir: res.TargetDir, Bytes: res.Bytes, Files: res.Files, MovedAside: res.MovedAside, Notes: res.Notes})
	}
	r.log.Info("restore request finished", "request", job.ID, "state", string(job.Status.State), "error", job.Status.Error)
}

// nobodyRuns says why no agent can run a request for keeper, or nil when
// an agent beside it is alive.
func (r *restores) nobodyRuns(state coordinator.State, keeper string) error {
	if keeper == "" {
		return errors.New(`no "keeper" given: name the Stolon keeper UID whose agent restores (barnacle status lists them)`)
	}
	known := false
	if state.ClusterData != nil {
		_, known = state.ClusterData.Keepers[keeper]
	}
	for _, a := range state.Agents {
		if a.KeeperUID == keeper {
			return nil
		}
	}
	if !known {
		return fmt.Errorf("unknown keeper %q: use a keeper UID from barnacle status", keeper)
	}
	return fmt.Errorf("no barnacle agent runs beside keeper %q: start it, or name another keeper", keeper)
}

// toRequest turns the JSON request into a restore.Request, with every
// directory checked against restore-root (after resolving symlinks) and
// the restore_command pointing at this binary.
func (r *restores) toRequest(req request.Restore) (restore.Request, error) {
	// Fence: the restore opens restore-root once and writes only through
	// it; underRoot below is the early check that names the field.
	out := restore.Request{Cluster: r.opts.Cluster, Backup: req.Backup, Action: req.TargetAction, Force: req.Force, DataOnly: req.DataOnly,
		Fence: r.opts.RestoreRoot}
	var err error
	if out.TargetDir, err = underRoot(r.opts.RestoreRoot, req.TargetDir, "targetDir"); err != nil {
		return out, err
	}
	spec, err := req.Validate()
	if err != nil {
		return out, err
	}
	for oid, dir := range spec.Tablespaces {
		d, err := underRoot(r.opts.RestoreRoot, dir, "tablespaceMap")
		if err != nil {
			return out, err
		}
		if out.TablespaceMap == nil {
			out.TablespaceMap = map[uint32]string{}
		}
		out.TablespaceMap[oid] = d
	}
	out.Target, out.Inclusive, out.Timeline = spec.Target, spec.Inclusive, spec.Timeline
	exe, err := os.Executable()
	if err != nil {
		return out, fmt.Errorf("find the barnacle executable for restore_command: %w", err)
	}
	out.RestoreCommand = restore.WALFetchCommand(exe, "", r.opts.Cluster, r.opts.ArchiveURL)
	out.RecoveryEndCommand = restore.RemoveSpoolCommand(exe)
	return out, nil
}

// underRoot resolves dir (symlinks in its existing part included) and
// checks that it lies below root, itself resolved.
func underRoot(root, dir, field string) (string, error) {
	if root == "" {
		return "", errors.New("this agent has no restore-root: set restore-root in its configuration to the directory restores may write below")
	}
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("%s %q: use an absolute path below restore-root %s", field, dir, root)
	}
	rroot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return "", fmt.Errorf("restore-root %s: %w", root, err)
	}
	resolved, err := restore.ResolveExisting(filepath.Clean(dir))
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", field, dir, err)
	}
	rel, err := filepath.Rel(rroot, resolved)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%s %q lies outside restore-root %s (symlinks resolved: %s); restore below it", field, dir, root, resolved)
	}
	return resolved, nil
}
