package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/restore"
)

// RestoreRequest is the value of requests/restore/<id> (DESIGN.md §5).
type RestoreRequest struct {
	// Keeper is the Stolon keeper UID whose agent restores, on its host.
	Keeper string `json:"keeper"`
	// Backup is an ID, "latest" or "" (the newest before the target).
	Backup    string `json:"backup,omitempty"`
	TargetDir string `json:"targetDir"`
	// Target holds at most one of its fields; none is the end of WAL.
	Target RestoreTarget `json:"target,omitzero"`
	// TargetExclusive stops just before a time, LSN or xid target
	// (recovery_target_inclusive = off).
	TargetExclusive bool   `json:"targetExclusive,omitempty"`
	TargetTimeline  string `json:"targetTimeline,omitempty"`
	TargetAction    string `json:"targetAction,omitempty"`
	Force           bool   `json:"force,omitempty"`
	// DataOnly restores without recovery.signal and settings.
	DataOnly bool `json:"dataOnly,omitempty"`
	// TablespaceMap maps tablespace OIDs (as strings) to directories,
	// which must lie under restore-root too.
	TablespaceMap map[string]string `json:"tablespaceMap,omitempty"`
}

// RestoreTarget is where recovery stops.
type RestoreTarget struct {
	Time      string `json:"time,omitempty"`
	LSN       string `json:"lsn,omitempty"`
	XID       string `json:"xid,omitempty"`
	Name      string `json:"name,omitempty"`
	Immediate bool   `json:"immediate,omitempty"`
}

// RestoreResult is what a finished restore request reports.
type RestoreResult struct {
	BackupID   string            `json:"backupID"`
	TargetDir  string            `json:"targetDir"`
	Bytes      int64             `json:"bytes"`
	Files      int               `json:"files"`
	MovedAside map[string]string `json:"movedAside,omitempty"`
	Notes      []string          `json:"notes,omitempty"`
}

// RestoreStatus is the value of status/restore/<id>.
type RestoreStatus = RequestStatusOf[RestoreResult]

// RestoreRequestKey and RestoreStatusKey lay out the restore request keys.
func RestoreRequestKey(keys coordinator.Keys, id string) string {
	return keys.Prefix + "requests/restore/" + id
}

// RestoreStatusKey is the status key of restore request id.
func RestoreStatusKey(keys coordinator.Keys, id string) string {
	return keys.Prefix + "status/restore/" + id
}

// restores serves restore requests: the agent beside the named keeper runs
// them; the leader rejects those nobody could run (malformed, unknown
// keeper, no agent beside it). Whoever may write requests/ can make an
// agent write files, so a target must lie under restore-root.
type restores struct {
	cfg   config.Config
	agent string
	log   hclog.Logger
	coord *coordinator.Coordinator
	etcd  *clientv3.Client
	keys  coordinator.Keys
	arch  *archiver

	work   jobs         // the claimed request running, in its own goroutine
	swept  *sweeper     // the leader's look for requests of dead agents
	status *statusStore // writes status/restore/<id>
}

// serveRequests runs on every agent until ctx ends.
func (r *restores) serveRequests(ctx context.Context) error {
	watchRequests(ctx, r.etcd, r.keys.Prefix+"requests/restore/", r.serve)
	r.work.wait()
	return nil
}

// leaderDuties marks failed, while this agent leads, the restore requests
// whose agent died before finishing them, every staleCheckInterval.
func (r *restores) leaderDuties(ctx context.Context) error {
	for {
		if r.swept == nil {
			r.swept = &sweeper{prefix: r.keys.Prefix + "status/restore/", what: "restore", self: r.agent, log: r.log, etcd: r.etcd, status: r.status,
				hint: "its target directory may hold a partial restore: remove it (or set force) and request it again"}
		}
		r.swept.sweep(ctx, r.coord.State().Agents, r.work.current())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(staleCheckInterval):
		}
	}
}

// serve claims and runs (or rejects) one request if it is this agent's.
func (r *restores) serve(ctx context.Context, id string, value []byte) {
	key := RestoreStatusKey(r.keys, id)
	if resp, err := r.etcd.Get(ctx, key, clientv3.WithCountOnly()); err != nil || resp.Count > 0 {
		return
	}
	req, rejectErr := parseRestoreRequest(value)
	state := r.coord.State()
	mine := rejectErr == nil && r.cfg.KeeperUID != "" && req.Keeper == r.cfg.KeeperUID
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
	if rejectErr == nil && !r.work.reserve(id) {
		return
	}
	st := RestoreStatus{State: StateClaimed, Agent: r.agent, StartedAt: time.Now().UTC()}
	st.Request, st.RequestBytes = echoRequest(value)
	claimed, err := putStatus(ctx, r.status, key, st, true)
	if err != nil || !claimed {
		if rejectErr == nil {
			r.work.release()
		}
		return
	}
	if rejectErr != nil {
		r.reject(ctx, id, key, st, rejectErr)
		return
	}
	r.work.start(func() { r.run(ctx, id, key, req, st) })
}

// reject writes a rejected final status.
func (r *restores) reject(ctx context.Context, id, key string, st RestoreStatus, err error) {
	st.State, st.Error = StateRejected, err.Error()
	finishStatus(ctx, r.status, key, st)
	r.log.Warn("restore request rejected", "request", id, "error", err)
}

// run checks and runs a claimed request and writes its final status; it
// runs in the jobs goroutine and returns when the restore ends or ctx
// does.
func (r *restores) run(ctx context.Context, id, key string, req RestoreRequest, st RestoreStatus) {
	reject := func(err error) { r.reject(ctx, id, key, st, err) }
	rreq, err := r.toRequest(req)
	if err != nil {
		reject(err)
		return
	}
	be, err := r.arch.openBackend(ctx)
	if err != nil {
		st.State, st.Error = StateFailed, err.Error()
		finishStatus(ctx, r.status, key, st)
		return
	}
	p, err := restore.Prepare(ctx, be, rreq)
	if err != nil {
		if restore.IsRejected(err) {
			reject(err)
		} else {
			st.State, st.Error = StateFailed, err.Error()
			finishStatus(ctx, r.status, key, st)
		}
		return
	}
	st.State = StateRunning
	_, _ = putStatus(ctx, r.status, key, st, false)
	r.log.Info("restore request claimed", "request", id, "backup", p.Backup.ID, "target", rreq.Target.String(), "dir", rreq.TargetDir)
	var last time.Time
	res, err := p.Run(ctx, be, r.log, func(done, total int64) {
		if time.Since(last) < time.Second {
			return
		}
		last = time.Now()
		st.Progress = &Progress{Done: done, Total: total}
		_, _ = putStatus(ctx, r.status, key, st, false)
	})
	switch {
	case err != nil && restore.IsRejected(err):
		reject(err)
		return
	case err != nil:
		st.State, st.Error = StateFailed, err.Error()
		// Force moved the old contents aside before the failure: say where
		// they are, or they look lost.
		if len(res.MovedAside) > 0 {
			st.Result = &RestoreResult{BackupID: res.BackupID, TargetDir: res.TargetDir, MovedAside: res.MovedAside}
			// Room for the places within the bounded error.
			st.Error = boundText(st.Error, statusErrorLimit/2)
			for _, old := range slices.Sorted(maps.Keys(res.MovedAside)) {
				st.Error += fmt.Sprintf("; the old contents of %s are in %s", old, res.MovedAside[old])
			}
		}
	default:
		st.State = StateDone
		st.Progress = &Progress{Done: res.Bytes, Total: res.Bytes}
		st.Result = &RestoreResult{BackupID: res.BackupID, TargetDir: res.TargetDir, Bytes: res.Bytes, Files: res.Files, MovedAside: res.MovedAside, Notes: res.Notes}
	}
	finishStatus(ctx, r.status, key, st)
	r.log.Info("restore request finished", "request", id, "state", st.State, "error", st.Error)
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

// parseRestoreRequest checks a request's JSON and says what to change.
func parseRestoreRequest(value []byte) (RestoreRequest, error) {
	var req RestoreRequest
	dec := json.NewDecoder(strings.NewReader(string(value)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf(`malformed request: %v; write JSON such as {"keeper":"keeper1","targetDir":"/restore/pitr","target":{"time":"2026-11-25T10:00:00Z"}}`, err)
	}
	if err := noTrailingData(dec); err != nil {
		return req, fmt.Errorf(`malformed request: %v; write one JSON object such as {"keeper":"keeper1","targetDir":"/restore/pitr"}`, err)
	}
	return req, nil
}

// toRequest turns the JSON request into a restore.Request, with every
// directory checked against restore-root (after resolving symlinks) and
// the restore_command pointing at this binary.
func (r *restores) toRequest(req RestoreRequest) (restore.Request, error) {
	// Fence: the restore opens restore-root once and writes only through
	// it; underRoot below is the early check that names the field.
	out := restore.Request{Cluster: r.cfg.ClusterName, Backup: req.Backup, Action: req.TargetAction, Force: req.Force, DataOnly: req.DataOnly,
		Fence: r.cfg.RestoreRoot}
	var err error
	if out.TargetDir, err = underRoot(r.cfg.RestoreRoot, req.TargetDir, "targetDir"); err != nil {
		return out, err
	}
	for oid, dir := range req.TablespaceMap {
		n, err := strconv.ParseUint(oid, 10, 32)
		if err != nil || n == 0 {
			return out, fmt.Errorf("tablespaceMap key %q: use the tablespace OID, as show-backup lists it", oid)
		}
		d, err := underRoot(r.cfg.RestoreRoot, dir, "tablespaceMap")
		if err != nil {
			return out, err
		}
		if out.TablespaceMap == nil {
			out.TablespaceMap = map[uint32]string{}
		}
		out.TablespaceMap[uint32(n)] = d
	}
	t := req.Target
	spec := restore.TargetSpec{Time: t.Time, LSN: t.LSN, XID: t.XID, Name: t.Name, Immediate: t.Immediate, Exclusive: req.TargetExclusive}
	if out.Target, out.Inclusive, err = spec.Parse(requestField); err != nil {
		return out, err
	}
	if out.Timeline, err = restore.ParseTimelineTarget(req.TargetTimeline); err != nil {
		return out, err
	}
	exe, err := os.Executable()
	if err != nil {
		return out, fmt.Errorf("find the barnacle executable for restore_command: %w", err)
	}
	out.RestoreCommand = restore.WALFetchCommand(exe, "", r.cfg.ClusterName, r.cfg.ArchiveURL)
	out.RecoveryEndCommand = restore.RemoveSpoolCommand(exe)
	return out, nil
}

// requestField names a target field as a restore request spells it.
func requestField(field string) string {
	if field == "exclusive" {
		return "targetExclusive"
	}
	return "target." + field
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
	resolved, err := resolveExisting(filepath.Clean(dir))
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", field, dir, err)
	}
	rel, err := filepath.Rel(rroot, resolved)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%s %q lies outside restore-root %s (symlinks resolved: %s); restore below it", field, dir, root, resolved)
	}
	return resolved, nil
}

// resolveExisting resolves symlinks in the longest existing prefix of path
// and appends the rest.
func resolveExisting(path string) (string, error) {
	rest := ""
	for p := path; ; p = filepath.Dir(p) {
		r, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(r, rest), nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		if p == filepath.Dir(p) {
			return path, nil
		}
		rest = filepath.Join(filepath.Base(p), rest)
	}
}
