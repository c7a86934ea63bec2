package main

import (
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
follow-master, keeper-uid. The leader streams WAL from the master through the
slot slot-name into archive-url; followers keep a slot on their standby
(standby-slots) so that a promoted standby still has what the archive lacks. On SIGTERM it resigns, revokes its etcd lease and exits 0.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, config.Needs{Keys: []string{"cluster-name", "store-endpoints", "archive-url"}, Agent: true})
			if err != nil {
				return err
			}
			log := newLogger(cfg, cmd.ErrOrStderr())
			a, err := agent.New(cfg, log, version)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
}
