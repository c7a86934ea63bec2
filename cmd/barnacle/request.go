package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/redact"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

// submitted is a request this command wrote to etcd, with the client
// (the caller closes it) and the keys to follow its status.
type submitted struct {
	cli     *clientv3.Client
	keys    coordinator.Keys
	rkeys   request.Keys
	id, key string
}

// submit connects to etcd and writes req under a fresh ID; ctx bounds the
// write. The error names the etcd endpoints.
func submit[T request.Request](ctx context.Context, cfg config.Config, req T) (submitted, error) {
	cli, err := coordinator.NewClient(coordinator.ClientOptionsFor(cfg))
	if err != nil {
		return submitted{}, err
	}
	s := submitted{cli: cli, keys: coordinator.NewKeys(cfg.BarnaclePrefix, cfg.ClusterName), id: request.NewID(time.Now())}
	s.rkeys = request.Keys{Prefix: s.keys.Prefix}
	if s.key, err = request.Submit(ctx, cli, s.rkeys, s.id, req); err != nil {
		_ = cli.Close()
		return submitted{}, fmt.Errorf("write the %s request (is etcd reachable at %s?): %w", req.Kind(), redact.URLs(cfg.StoreEndpoints), err)
	}
	return s, nil
}

// requestBackup writes a backup request for the agents and, with wait,
// follows its status key to the end (or until timeout, 0 = no limit).
func requestBackup(cmd *cobra.Command, from, label string, wait, asJSON bool, timeout time.Duration) error {
	cfg, err := loadConfig(cmd, config.Needs{Keys: []string{"cluster-name", "store-endpoints"}})
	if err != nil {
		return err
	}
	if from == "" {
		from = cfg.BackupFrom
	}
	switch from {
	case config.BackupFromMaster, config.BackupFromStandby, config.BackupFromAny:
	default:
		return usageError{fmt.Errorf("--from %q: use master, standby or any", from)}
	}
	if timeout < 0 || (timeout > 0 && !wait) {
		return usageError{errors.New("--timeout goes with --wait and is a positive duration, like 10m")}
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
	defer cancel()
	s, err := submit(ctx, cfg, request.Backup{From: from, Label: label})
	if err != nil {
		return err
	}
	defer s.cli.Close()
	cli, keys, rkeys, id, key := s.cli, s.keys, s.rkeys, s.id, s.key
	if !wait {
		fmt.Fprintf(cmd.OutOrStdout(), "backup requested: %s\nfollow it with: etcdctl get %s\n", id, rkeys.Status(request.KindBackup, id))
		fmt.Fprintln(cmd.ErrOrStderr(), whoRuns(ctx, cli, keys, "", from == config.BackupFromStandby, false))
		return nil
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "backup request %s written to %s; %s\n", id, key, whoRuns(ctx, cli, keys, "", from == config.BackupFromStandby, true))
	st, err := followRequest[request.BackupResult](cmd, cli, requestFollow{kind: request.KindBackup, keys: rkeys, id: id, timeout: timeout, quiet: asJSON})
	if err != nil {
		return err
	}
	if asJSON {
		if err := printJSON(cmd.OutOrStdout(), st); err != nil {
			return err
		}
	}
	switch st.State {
	case request.StateDone:
		if !asJSON && st.Result != nil {
			fmt.Fprintf(cmd.OutOrStdout(), "backup %s done by %s: %s (stored %s), %s .. %s\n", st.Result.ID, st.Agent,
				humanBytes(st.Result.Bytes), humanBytes(st.Result.Stored), st.Result.StartLSN, st.Result.StopLSN)
		}
		return nil
	default:
		return fmt.Errorf("backup request %s %s by %s: %s", id, st.State, st.Agent, st.Error)
	}
}

// whoRuns says who will claim a request just written: the leading agent
// (for a backup from a standby, an agent beside a healthy standby), or for
// a restore (keeper set) the agent beside that keeper; and, when nobody
// can, that the request waits (withdrawn on Ctrl-C when waiting).
func whoRuns(ctx context.Context, cli *clientv3.Client, keys coordinator.Keys, keeper string, fromStandby, waiting bool) string {
	snap, err := coordinator.ReadSnapshot(ctx, cli, keys)
	if err != nil {
		return fmt.Sprintf("who leads is unknown (%v)", err)
	}
	later := "it stays in etcd until an agent leads, and that agent runs it then (delete the request key to withdraw it)"
	if waiting {
		later = "it waits until an agent leads; interrupted or timed out while unclaimed, it is withdrawn"
	}
	if keeper != "" {
		if a, ok := snap.AgentOfKeeper(keeper); ok {
			return fmt.Sprintf("agent %s beside keeper %s claims it", a.Name, keeper)
		}
		if snap.Leader != "" {
			return fmt.Sprintf("no agent runs beside keeper %s: the leader (%s) rejects it unless one starts first", keeper, snap.Leader)
		}
		return fmt.Sprintf("no agent runs beside keeper %s and no agent leads: %s", keeper, later)
	}
	switch {
	case snap.Leader != "" && fromStandby:
		return fmt.Sprintf("an agent beside a healthy standby claims it (agent %s leads, and rejects it if there is none)", snap.Leader)
	case snap.Leader != "":
		return fmt.Sprintf("agent %s leads and claims it", snap.Leader)
	case fromStandby:
		return "no agent leads the cluster now: an agent beside a healthy standby may still claim it; if none does, " + later
	}
	return "no agent leads the cluster now: " + later
}

// requestFollow is a request that a command wrote and now follows.
type requestFollow struct {
	kind    request.Kind
	keys    request.Keys
	id      string
	timeout time.Duration // 0 = no limit
	quiet   bool          // no progress bar
}

// followRequest follows f's status until it reaches a final state, with a
// progress bar. When the wait ends first (interrupted, timed out, etcd
// unreadable), a request that no agent has claimed is withdrawn
// (request.Withdraw), so that a leader elected later does not run what its
// requester gave up on. A claimed request goes on; the error says so and
// where to follow it.
func followRequest[R any](cmd *cobra.Command, cli *clientv3.Client, f requestFollow) (request.Status[R], error) {
	ctx := cmd.Context()
	if f.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		defer cancel()
	}
	what := string(f.kind)
	bar := newProgressBar(cmd, what, !f.quiet)
	if f.kind == request.KindBackup {
		bar.AtEnd("waiting for the WAL up to the stop position to be archived")
	}
	st, err := request.Follow(ctx, cli, f.keys, f.kind, f.id, func(st request.Status[R]) {
		if st.Progress != nil {
			bar.Update(st.Progress.Done, st.Progress.Total)
		}
	})
	bar.Done()
	if err == nil {
		return st, nil
	}
	why := err.Error()
	switch {
	case cmd.Context().Err() != nil:
		why = "interrupted"
	case ctx.Err() != nil:
		why = fmt.Sprintf("timed out after %s", f.timeout)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	requestKey, statusKey := f.keys.Request(f.kind, f.id), f.keys.Status(f.kind, f.id)
	w, werr := request.Withdraw(wctx, cli, f.keys, f.kind, f.id)
	switch {
	case werr != nil:
		return st, fmt.Errorf("%s request %s: %s, and withdrawing it failed (%v): an agent may still run it; withdraw it with etcdctl del %s unless %s exists",
			what, f.id, why, werr, requestKey, statusKey)
	case w.Withdrawn:
		return st, fmt.Errorf("%s request %s: %s before any agent claimed it; the request is withdrawn", what, f.id, why)
	}
	by := "an agent"
	if w.ClaimedBy != "" {
		by = "agent " + w.ClaimedBy
	}
	return st, fmt.Errorf("%s request %s: %s; %s claimed it and goes on: follow it with etcdctl get %s", what, f.id, why, by, statusKey)
}
