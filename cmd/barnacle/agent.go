package main

import (
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/barnacle-pg/barnacle/agent"
	"github.com/barnacle-pg/barnacle/pkg/config"
)

func newAgentCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "agent",
		Short: "Run the sidecar daemon beside a Stolon keeper",
		Long: `Run the sidecar daemon: watch Stolon's clusterdata, take part in the leader
election (the agent beside the promoted master leads), publish this agent's
state under <barnacle-prefix>/<cluster-name>/agents/<agent-name>, and serve
/metrics, /healthz, /readyz and /status on metrics-listen-address.

Needs cluster-name, store-endpoints, archive-url and, with leader-policy
follow-master, keeper-uid. keeper-uid auto (a DaemonSet beside Stolon's keeper
StatefulSet on Kubernetes) finds the keeper on this node: it lists the pods on
node-name that match keeper-pod-selector and matches their IPs to the keepers'
listen addresses in clusterdata; with no keeper or several, it serves none and
says why in /readyz, /status and its record. The leader streams WAL from the
master through the slot slot-name into archive-url; followers keep a slot on
their standby (standby-slots) so that a promoted standby still has what the
archive lacks. With restore-root it runs restore drills (barnacle drill, the
leader's restore-drill-schedule) while its keeper is not the master, or always
with restore-drill-on-master. On SIGTERM it cancels its drill (stopping the
drill's server and removing its scratch directory), resigns, revokes its etcd
lease and exits 0.

The agent reloads its configuration when the --config file changes and on
SIGHUP: ` + strings.Join(agent.LiveKeys(), ", ") + ` apply at once;
a change to another key is logged as needing a restart; a file with errors
keeps the running configuration and the error is logged.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			needs := config.Needs{Keys: []string{"cluster-name", "store-endpoints", "archive-url"}, Agent: true}
			cfg, err := loadConfig(cmd, needs)
			if err != nil {
				return err
			}
			log := newLogger(cfg, cmd.ErrOrStderr())
			a, err := agent.New(cfg, log, version)
			if err != nil {
				return err
			}
			file, _ := cmd.Flags().GetString("config")
			if file == "" {
				file = os.Getenv("BARNACLE_CONFIG")
			}
			a.EnableReload(agent.ReloadOptions{File: file, Load: func() (config.Config, error) { return loadConfig(cmd, needs) }})
			return a.Run(cmd.Context())
		},
	}
}
