package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/agent"
	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/redact"
)

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
	cli, err := coordinator.NewClient(coordinator.ClientOptionsFor(cfg))
	if err != nil {
		return err
	}
	defer cli.Close()
	keys := coordinator.NewKeys(cfg.BarnaclePrefix, cfg.ClusterName)
	id := newRequestID()
	v, err := json.Marshal(agent.BackupRequest{From: from, Label: label})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, agent.RequestKey(keys, id), string(v)); err != nil {
		return fmt.Errorf("write the backup request (is etcd reachable at %s?): %w", redact.URLs(cfg.StoreEndpoints), err)
	}
	if !wait {
		fmt.Fprintf(cmd.OutOrStdout(), "backup requested: %s\nfollow it with: etcdctl get %s\n", id, agent.StatusKey(keys, id))
		fmt.Fprintln(cmd.ErrOrStderr(), whoRuns(ctx, cli, keys, "", from == config.BackupFromStandby, false))
		return nil
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "backup request %s written to %s; %s\n", id, agent.RequestKey(keys, id), whoRuns(ctx, cli, keys, "", from == config.BackupFromStandby, true))
	var st agent.RequestStatus
	if err := followRequest(cmd, cli, requestFollow{what: "backup", id: id, requestKey: agent.RequestKey(keys, id),
		statusKey: agent.StatusKey(keys, id), timeout: timeout, quiet: asJSON}, &st); err != nil {
		return err
	}
	if asJSON {
		if err := printJSON(cmd.OutOrStdout(), st); err != nil {
			return err
		}
	}
	switch st.State {
	case agent.StateDone:
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
	what                  string // "backup" or "restore"
	id                    string
	requestKey, statusKey string
	timeout               time.Duration // 0 = no limit
	quiet                 bool          // no progress bar
}

// followRequest follows f's status into st until it reaches a final state.
// When the wait ends first (interrupted, timed out, etcd unreadable), a
// request that no agent has claimed is withdrawn, so that a leader elected
// later does not run what its requester gave up on: one transaction deletes
// the request only while its status key does not exist, so a claim made
// in between is never undone. A claimed request goes on; the error says so
// and where to follow it.
func followRequest[R any](cmd *cobra.Command, cli *clientv3.Client, f requestFollow, st *agent.RequestStatusOf[R]) error {
	ctx := cmd.Context()
	if f.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		defer cancel()
	}
	err := followStatus(ctx, cmd, cli, f.statusKey, f.what, f.quiet, st)
	if err == nil {
		return nil
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
	resp, werr := cli.Txn(wctx).If(clientv3.Compare(clientv3.CreateRevision(f.statusKey), "=", 0)).
		Then(clientv3.OpDelete(f.requestKey)).Else(clientv3.OpGet(f.statusKey)).Commit()
	switch {
	case werr != nil:
		return fmt.Errorf("%s request %s: %s, and withdrawing it failed (%v): an agent may still run it; withdraw it with etcdctl del %s unless %s exists",
			f.what, f.id, why, werr, f.requestKey, f.statusKey)
	case resp.Succeeded:
		return fmt.Errorf("%s request %s: %s before any agent claimed it; the request is withdrawn", f.what, f.id, why)
	}
	by := "an agent"
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
		var claimed agent.RequestStatusOf[json.RawMessage]
		if json.Unmarshal(kvs[0].Value, &claimed) == nil && claimed.Agent != "" {
			by = "agent " + claimed.Agent
		}
	}
	return fmt.Errorf("%s request %s: %s; %s claimed it and goes on: follow it with etcdctl get %s", f.what, f.id, why, by, f.statusKey)
}

// newRequestID names a request: its UTC time, sortable, and 6 random hex
// digits so that two written in the same second differ.
func newRequestID() string {
	rnd := make([]byte, 3)
	_, _ = rand.Read(rnd)
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(rnd)
}

// followStatus watches a request's status key (a backup's or a
// restore's) into st until it reaches a final state, with a progress bar
// labelled what. It waits as long as ctx lets it.
func followStatus[R any](ctx context.Context, cmd *cobra.Command, cli *clientv3.Client, key, what string, quiet bool, st *agent.RequestStatusOf[R]) error {
	bar := newProgressBar(cmd, what, !quiet)
	if what == "backup" {
		bar.AtEnd("waiting for the WAL up to the stop position to be archived")
	}
	defer bar.Done()
	for {
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("read %s: %w", key, err)
		}
		rev := resp.Header.Revision
		if len(resp.Kvs) == 1 {
			if err := json.Unmarshal(resp.Kvs[0].Value, st); err != nil {
				return fmt.Errorf("read %s: %w", key, err)
			}
			if st.Progress != nil {
				bar.Update(st.Progress.Done, st.Progress.Total)
			}
			switch st.State {
			case agent.StateDone, agent.StateFailed, agent.StateRejected:
				return nil
			}
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		for range cli.Watch(wctx, key, clientv3.WithRev(rev+1)) {
			break
		}
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
