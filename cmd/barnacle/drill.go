package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/request"
)

func newDrillCommand() *cobra.Command {
	var (
		wait, asJSON bool
		agent        string
		timeout      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "drill [--wait [--timeout D]] [--agent NAME] [--json]",
		Short: "Prove the archive restores: run a restore drill on an agent",
		Long: `Ask the cluster for a restore drill: write a request under
<barnacle-prefix>/<cluster-name>/requests/drill/<id>. One eligible agent claims
it (an agent with restore-root whose keeper is not the master, unless it sets
restore-drill-on-master; agents beside standbys and leader-policy any hosts
are eligible), restores the newest backup and all archived WAL into a scratch
directory below its restore-root, starts PostgreSQL on it (its own unix socket,
no TCP listener, no archiving), waits until it has replayed to the
end and promoted, checks it (pg_amcheck on the catalogs and a sample, and that
it reached the LSN the archive promised), then stops it and removes the
directory, always. The result goes to status/drill/<id>, to drills/<id>.json in
the archive, to the agents' metrics, to barnacle status and barnacle check.
The leader rejects a drill no live agent may run, saying what to configure.

With --wait, follow it to the end and print what was proven: the backup used,
the point reached (LSN and time), each phase's duration and the RTO, the
relations checked; exit 0 only when it is done. Interrupted (Ctrl-C) or past
--timeout, a request no agent has claimed yet is withdrawn, and a claimed one
goes on (stopping its agent cancels it and removes its directory). Exit codes:
0 done (or requested, without --wait), 1 failed or rejected, 2 bad usage or
configuration. Needs cluster-name and store-endpoints.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return requestDrill(cmd, agent, wait, asJSON, timeout)
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the drill until it is done, failed or rejected")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "with --wait: give up after this long (0 = no limit); an unclaimed request is then withdrawn")
	cmd.Flags().StringVar(&agent, "agent", "", "only this agent may run the drill (default: any eligible agent)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "with --wait: print the request's status document (status/drill/<id>) as JSON")
	return cmd
}

// requestDrill writes a drill request and, with wait, follows it.
func requestDrill(cmd *cobra.Command, agent string, wait, asJSON bool, timeout time.Duration) error {
	if timeout < 0 || (timeout > 0 && !wait) {
		return usageError{errors.New("--timeout goes with --wait and is a positive duration, like 30m")}
	}
	req := request.Drill{Agent: agent, RequestedBy: requester(), RequestedAt: time.Now().UTC()}
	if err := req.Validate(); err != nil {
		return usageError{fmt.Errorf("--%s", err)}
	}
	cfg, err := loadConfig(cmd, config.Needs{Keys: []string{"cluster-name", "store-endpoints"}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
	defer cancel()
	s, err := submit(ctx, cfg, req)
	if err != nil {
		return err
	}
	defer s.cli.Close()
	who := whoDrills(ctx, s.cli, s.keys, agent, wait)
	if !wait {
		fmt.Fprintf(cmd.OutOrStdout(), "drill requested: %s\nfollow it with: etcdctl get %s\n", s.id, s.rkeys.Status(request.KindDrill, s.id))
		fmt.Fprintln(cmd.ErrOrStderr(), who)
		return nil
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "drill request %s written to %s; %s\n", s.id, s.key, who)
	st, err := followRequest[catalog.Drill](cmd, s.cli, requestFollow{kind: request.KindDrill, keys: s.rkeys, id: s.id, timeout: timeout, quiet: asJSON})
	if err != nil {
		return err
	}
	if asJSON {
		if err := printJSON(cmd.OutOrStdout(), st); err != nil {
			return err
		}
	} else if st.Result != nil {
		printDrill(cmd.OutOrStdout(), *st.Result)
	}
	switch st.State {
	case request.StateDone:
		return nil
	case request.StateRejected:
		return fmt.Errorf("drill request %s rejected by %s: %s", s.id, st.Agent, st.Error)
	default:
		return fmt.Errorf("drill request %s failed on %s: %s; the drill's scratch directory was removed and the archive is untouched: "+
			"fix the cause (the agent's log has the detail), then run barnacle drill again", s.id, st.Agent, st.Error)
	}
}

// requester names who asks, for the request's requestedBy: user@host.
func requester() string {
	host, _ := os.Hostname()
	user := os.Getenv("USER")
	if user == "" {
		user = fmt.Sprintf("uid %d", os.Getuid())
	}
	return request.BoundText(user+"@"+host+" (barnacle drill)", 200)
}

// whoDrills says which agents may claim a drill just written, or why none
// may (then the leader rejects it).
func whoDrills(ctx context.Context, cli *clientv3.Client, keys coordinator.Keys, agent string, waiting bool) string {
	snap, err := coordinator.ReadSnapshot(ctx, cli, keys)
	if err != nil {
		return fmt.Sprintf("who may run it is unknown (%v)", err)
	}
	master := ""
	if l, ok := snap.Agents[snap.Leader]; ok {
		master = l.MasterKeeperUID
	}
	eligible := coordinator.DrillAgents(snap.Agents, master)
	if agent != "" {
		a, ok := snap.Agents[agent]
		switch {
		case !ok:
			eligible = nil
		case coordinator.DrillEligible(a, master):
			return fmt.Sprintf("agent %s claims it", agent)
		default:
			return fmt.Sprintf("agent %s may not run restore drills: %s", agent,
				coordinator.NoDrillAgent(map[string]coordinator.AgentStatus{agent: a}, master))
		}
	}
	later := "it stays in etcd until an agent leads (delete the request key to withdraw it)"
	if waiting {
		later = "it waits until an agent leads; interrupted or timed out while unclaimed, it is withdrawn"
	}
	switch {
	case agent != "" && snap.Leader != "":
		return fmt.Sprintf("agent %s is not running: the leader (%s) rejects it unless it starts first", agent, snap.Leader)
	case agent != "":
		return fmt.Sprintf("agent %s is not running and no agent leads: %s", agent, later)
	case len(eligible) == 1:
		return fmt.Sprintf("agent %s may run restore drills and claims it", eligible[0])
	case len(eligible) > 1:
		return fmt.Sprintf("one of the agents that may run restore drills (%s) claims it", strings.Join(eligible, ", "))
	case snap.Leader != "":
		return fmt.Sprintf("the leader (%s) rejects it unless such an agent starts first: %s", snap.Leader, coordinator.NoDrillAgent(snap.Agents, master))
	}
	return "no agent leads the cluster now and none may run restore drills: " + later
}

// printDrill prints what a drill proved, or how far a failed one got.
func printDrill(w io.Writer, d catalog.Drill) {
	if d.BackupID == "" {
		fmt.Fprintf(w, "drill %s on %s: no backup restored\n", d.ID, d.Node)
		return
	}
	fmt.Fprintf(w, "drill %s on %s: backup %s (%s)\n", d.ID, d.Node, d.BackupID, humanBytes(d.Bytes))
	reached := d.Reached.LSN.String()
	if d.Reached.Timeline != 0 {
		reached += fmt.Sprintf(" on timeline %d", d.Reached.Timeline)
	}
	if !d.ReachedTime.IsZero() {
		reached += ", last commit " + d.ReachedTime.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(w, "  reached:  %s (the archive promised %s)\n", reached, d.Promised.LSN)
	p := d.Phases
	rto := p.RTO()
	fmt.Fprintf(w, "  phases:   restore %s, replay %s, check %s\n", p.Restore.Round(time.Millisecond), p.Replay.Round(time.Millisecond), p.Check.Round(time.Millisecond))
	fmt.Fprintf(w, "  RTO:      %s\n", rto.Round(time.Millisecond))
	fmt.Fprintf(w, "  checked:  %d relations (pg_amcheck)\n", d.Checked)
}

func newListDrillsCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list-drills",
		Short: "List the restore drills recorded in the archive, newest first",
		Long: `List the restore drills (barnacle drill, restore-drill-schedule) of cluster-name
recorded in archive-url (drills/<id>.json), newest first: where each ran, the
backup it restored, the point it reached, its RTO and why a failed one failed.
--json prints the records as the archive holds them.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, b, err := openArchiveToRead(cmd)
			if err != nil {
				return err
			}
			list, err := catalog.ListDrills(cmd.Context(), b, cfg.ClusterName)
			if err != nil {
				return err
			}
			slices.Reverse(list) // newest first, as list-backups
			if asJSON {
				return printJSON(cmd.OutOrStdout(), list)
			}
			return printDrillList(cmd.OutOrStdout(), list, cfg.ClusterName)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

// printDrillList prints drills (newest first) as a table.
func printDrillList(w io.Writer, list []catalog.Drill, cluster string) error {
	if len(list) == 0 {
		fmt.Fprintf(w, "No restore drills of %s recorded yet: run one with 'barnacle drill --wait'.\n", cluster)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tNODE\tSTARTED\tBACKUP\tREACHED\tLAST COMMIT\tRTO\tCHECKED\tERROR")
	for _, d := range list {
		backup, reached, commit, rto, checked := "-", "-", "-", "-", "-"
		if d.BackupID != "" {
			backup = d.BackupID
		}
		if d.Status == catalog.DrillDone {
			reached, rto, checked = d.Reached.LSN.String(), d.Phases.RTO().Round(time.Millisecond).String(), fmt.Sprint(d.Checked)
			if !d.ReachedTime.IsZero() {
				commit = d.ReachedTime.UTC().Format(time.RFC3339)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Status, d.Node, d.StartedAt.UTC().Format(time.RFC3339),
			backup, reached, commit, rto, checked, request.BoundText(strings.Join(strings.Fields(d.Error), " "), 120))
	}
	return tw.Flush()
}
