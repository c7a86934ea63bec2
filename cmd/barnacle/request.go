package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
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
// follows its status key to the end.
func requestBackup(cmd *cobra.Command, from, label string, wait, asJSON bool) error {
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
		return nil
	}
	var st agent.RequestStatus
	if err := followStatus(cmd, cli, agent.StatusKey(keys, id), "backup", asJSON, &st); err != nil {
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

// newRequestID names a request: its UTC time, sortable, and 6 random hex
// digits so that two written in the same second differ.
func newRequestID() string {
	rnd := make([]byte, 3)
	_, _ = rand.Read(rnd)
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(rnd)
}

// followStatus watches a request's status key (a backup's or a
// restore's) into st until it reaches a final state, with a progress bar
// labelled what. It waits as long as the command's context lets it.
func followStatus[R any](cmd *cobra.Command, cli *clientv3.Client, key, what string, quiet bool, st *agent.RequestStatusOf[R]) error {
	ctx := cmd.Context()
	bar := newProgressBar(cmd.OutOrStdout(), what, !quiet)
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
