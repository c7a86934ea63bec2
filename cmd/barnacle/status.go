package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/config"
)

func newStatusCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster, its master, the leader and every agent",
		Long: `Show Stolon's master and keepers beside barnacle's leader and agents, and the
problems to act on. Reads etcd only; needs cluster-name and store-endpoints.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, config.Needs{Keys: []string{"cluster-name", "store-endpoints"}})
			if err != nil {
				return err
			}
			cli, err := coordinator.NewClient(coordinator.ClientOptions{
				Endpoints: cfg.StoreEndpoints, CertFile: cfg.StoreCertFile, KeyFile: cfg.StoreKeyFile,
				CAFile: cfg.StoreCAFile, Username: cfg.StoreUsername, PasswordFile: cfg.StorePasswordFile,
			})
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			r, err := coordinator.ReadReport(ctx, cli, cfg.StorePrefix, cfg.ClusterName, coordinator.NewKeys(cfg.BarnaclePrefix, cfg.ClusterName))
			if err != nil {
				return fmt.Errorf("%w (is etcd reachable at %v?)", err, cfg.StoreEndpoints)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			return printReport(cmd.OutOrStdout(), r)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

func printReport(w io.Writer, r coordinator.Report) error {
	fmt.Fprintf(w, "Cluster:  %s (clusterdata revision %d)\n", r.Cluster, r.ClusterDataRevision)
	if r.Master != nil {
		state := "promoted"
		if !r.Master.Converged {
			state = "not converged yet"
		}
		fmt.Fprintf(w, "Master:   keeper %s, db %s at %s, timeline %d (%s)\n", r.Master.KeeperUID, r.Master.DBUID, r.Master.Address, r.Master.Timeline, state)
	} else {
		fmt.Fprintln(w, "Master:   unknown")
	}
	leader := r.Leader
	if leader == "" {
		leader = "none"
	}
	fmt.Fprintf(w, "Leader:   %s\n\n", leader)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEEPER\tDB\tROLE\tADDRESS\tHEALTHY\tAGENT")
	for _, k := range r.Keepers {
		agent := k.Agent
		if agent == "" {
			agent = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%s\n", k.KeeperUID, k.DBUID, k.Role, k.Address, k.Healthy, agent)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tKEEPER\tROLE\tSEES MASTER\tSTREAMING\tTIMELINE\tARCHIVED\tVERSION\tUPDATED")
	for _, a := range r.Agents {
		role := a.Role
		if a.LeadReason != "" {
			role += " (" + a.LeadReason + ")"
		}
		streaming, tli, archived := "-", "-", "-"
		if a.Role == coordinator.RoleLeader {
			streaming = fmt.Sprint(a.Streaming)
			if a.ArchivedLSN != "" {
				tli, archived = fmt.Sprint(a.Timeline), a.ArchivedLSN
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s ago\n", a.Name, a.KeeperUID, role, a.MasterKeeperUID,
			streaming, tli, archived, a.Version, time.Since(a.UpdatedAt).Round(time.Second))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Problems) > 0 {
		fmt.Fprintln(w, "\nProblems:")
		for _, p := range r.Problems {
			fmt.Fprintf(w, "  - %s\n", p)
		}
	}
	return nil
}
