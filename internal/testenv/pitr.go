package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/stolon"
)

// StolonInit is the JSON a user passes to `stolonctl init`, the parts a
// point-in-time recovery uses (Stolon's cluster.ClusterSpec field names).
type StolonInit struct {
	InitMode   string             `json:"initMode"`
	PITRConfig *stolon.PITRConfig `json:"pitrConfig,omitempty"`
}

// InitPITR plays `stolonctl init '<initJSON>'` with initMode pitr, the way
// Stolon's sentinel and keeper carry it out (keeper.go, postgresql.go
// Restore; STOLON.md, PITR restore), on node:
//
//  1. clusterdata is rewritten for a new cluster whose only db is on node's
//     keeper, with initMode pitr and the pitrConfig in its spec;
//  2. every node's PostgreSQL is stopped (the old cluster is gone; the
//     other keepers would resync from the restored one later, which the
//     harness leaves out);
//  3. node's data directory is removed, then dataRestoreCommand runs with
//     /bin/sh -c as the PostgreSQL OS user, %d replaced by the data
//     directory; on failure the data directory is removed again and the
//     command's output is returned in the error;
//  4. recovery.signal is created and the recovery parameters are written
//     the keeper's way: `name = 'value'` without quote escaping,
//     restore_command from archiveRecoverySettings, the targets, and
//     recovery_target_action = 'promote' when a target is set, else
//     recovery_target_timeline = 'latest';
//  5. PostgreSQL is started and InitPITR waits (up to timeout) until
//     recovery has ended and the server accepts writes.
//
// The harness' per-node settings (port, socket directory) are rewritten
// after the restore, because the restored files carry the backed-up
// node's. The parameters go to the harness' recovery include file, which
// postgresql.conf includes: the keeper regenerates postgresql.conf
// instead, with the same effect.
func (s *Stolon) InitPITR(ctx context.Context, node *Node, initJSON string, timeout time.Duration) error {
	var spec StolonInit
	dec := json.NewDecoder(strings.NewReader(initJSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return fmt.Errorf("stolonctl init: bad cluster spec: %w", err)
	}
	if spec.InitMode != "pitr" || spec.PITRConfig == nil || spec.PITRConfig.DataRestoreCommand == "" {
		return errors.New(`stolonctl init: initMode must be "pitr" with pitrConfig.dataRestoreCommand`)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	keeper := s.keeperUIDs[node]
	if keeper == "" {
		return fmt.Errorf("stolonctl init: %s is not a node of this cluster", node.Name)
	}

	// 1. The new cluster's clusterdata.
	newUID := newUID()
	err := s.update(ctx, func(cd *cdData) error {
		now := time.Now().UTC()
		db := cd.findDB(keeper)
		if db == nil {
			db = s.newDB(keeper, true, "")
		}
		for uid := range cd.DBs {
			delete(cd.DBs, uid)
		}
		db.UID = newUID
		db.Generation = 1
		db.ChangeTime = now
		db.Spec.Role = "master"
		db.Spec.FollowConfig = nil
		db.Spec.Followers = []string{}
		db.Spec.InitMode = "pitr"
		raw, err := json.Marshal(spec.PITRConfig)
		if err != nil {
			return err
		}
		db.Spec.PITRConfig = raw
		db.Status.Healthy = false
		db.Status.CurrentGeneration = 0
		cd.DBs[newUID] = db
		if cd.Cluster.Spec != nil {
			if err := cd.Cluster.Spec.set("initMode", "pitr"); err != nil {
				return err
			}
			if err := cd.Cluster.Spec.set("pitrConfig", spec.PITRConfig); err != nil {
				return err
			}
		}
		cd.Cluster.UID = newUID
		cd.Cluster.Generation++
		cd.Cluster.ChangeTime = now
		cd.Cluster.Status.Phase = "initializing"
		cd.Cluster.Status.Master = newUID
		cd.proxyTo("", now)
		cd.ChangeTime = now
		return nil
	})
	if err != nil {
		return fmt.Errorf("stolonctl init: write clusterdata: %w", err)
	}

	// 2. The old cluster stops.
	for _, n := range s.c.Nodes {
		if err := n.Stop(); err != nil {
			return fmt.Errorf("stolonctl init: %w", err)
		}
	}

	// 3. The keeper removes the data directory and runs the command.
	env := s.c.env
	if err := os.RemoveAll(node.DataDir); err != nil {
		return fmt.Errorf("keeper: remove data directory: %w", err)
	}
	cmdline := expandDataDir(spec.PITRConfig.DataRestoreCommand, node.DataDir)
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", cmdline)
	cmd.Env = env.environ()
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: env.cred, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		_ = os.RemoveAll(node.DataDir)
		return fmt.Errorf("keeper: dataRestoreCommand %q: %w\n%s", cmdline, err, Tail(string(out), 30))
	}

	// 4. recovery.signal and the recovery parameters, unescaped like the
	// keeper writes them.
	params := map[string]string{}
	if ars := spec.PITRConfig.ArchiveRecoverySettings; ars != nil && ars.RestoreCommand != "" {
		params["restore_command"] = ars.RestoreCommand
	}
	if rts := spec.PITRConfig.RecoveryTargetSettings; rts == nil {
		params["recovery_target_timeline"] = "latest"
	} else {
		for k, v := range map[string]string{
			"recovery_target": rts.RecoveryTarget, "recovery_target_lsn": rts.RecoveryTargetLsn,
			"recovery_target_name": rts.RecoveryTargetName, "recovery_target_time": rts.RecoveryTargetTime,
			"recovery_target_xid": rts.RecoveryTargetXid, "recovery_target_timeline": rts.RecoveryTargetTimeline,
		} {
			if v != "" {
				params[k] = v
			}
		}
		params["recovery_target_action"] = "promote"
	}
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	var conf strings.Builder
	for _, k := range names {
		fmt.Fprintf(&conf, "%s = '%s'\n", k, params[k])
	}
	if err := env.writeFile(filepath.Join(node.DataDir, recoveryConfFile), conf.String()); err != nil {
		return fmt.Errorf("keeper: write recovery parameters: %w", err)
	}
	if err := env.writeFile(filepath.Join(node.DataDir, "recovery.signal"), ""); err != nil {
		return fmt.Errorf("keeper: write recovery.signal: %w", err)
	}
	_ = os.Remove(filepath.Join(node.DataDir, "standby.signal"))
	if err := node.writeNodeConf(); err != nil {
		return fmt.Errorf("keeper: %w", err)
	}
	if err := env.chownTree(node.DataDir); err != nil {
		return fmt.Errorf("keeper: give the data directory to postgres: %w", err)
	}

	// 5. Start and wait for the end of recovery.
	if err := node.Start(); err != nil {
		return fmt.Errorf("keeper: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for {
		in, err := node.IsInRecovery(ctx)
		if err == nil && !in {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("keeper: %s still in recovery after %s (last error %v)\n%s", node.Name, timeout, err, node.LogTail(30))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	s.c.mu.Lock()
	s.c.primary = node
	s.c.mu.Unlock()
	return nil
}

// expandDataDir replaces %d with dir and %% with %, as Stolon's keeper does
// for dataRestoreCommand.
func expandDataDir(command, dir string) string {
	var b strings.Builder
	for i := 0; i < len(command); i++ {
		if command[i] == '%' && i+1 < len(command) {
			switch command[i+1] {
			case 'd':
				b.WriteString(dir)
				i++
				continue
			case '%':
				b.WriteByte('%')
				i++
				continue
			}
		}
		b.WriteByte(command[i])
	}
	return b.String()
}
