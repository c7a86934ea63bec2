package main

import (
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
)

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "barnacle",
		Short: "Continuous backup and point-in-time recovery for Stolon-managed PostgreSQL",
		Long: `barnacle streams WAL from the current Stolon master into an archive, follows the
master through failovers, and takes and verifies base backups (restore is not
built yet). Run 'barnacle agent' as a sidecar beside every Stolon keeper; the
other commands are for operators.

Configuration comes from --config FILE (YAML), then BARNACLE_<KEY> environment
variables, then flags, later ones winning. Keys and flags share names
(cluster-name, store-endpoints, ...). Exit codes: 0 success, 1 failure,
2 bad usage or configuration.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// With Args set, cobra hands an unknown subcommand to the root
		// instead of failing, so that it becomes a usage error (exit 2).
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q", args[0])}
			}
			return cmd.Help()
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().String("config", "", "YAML configuration file")
	for _, k := range config.Keys() {
		if k.Boolean {
			root.PersistentFlags().Bool(k.Name, k.Default == "true", k.Help)
		} else {
			root.PersistentFlags().String(k.Name, k.Default, k.Help)
		}
	}
	root.AddCommand(
		newAgentCommand(),
		newStatusCommand(),
		newCheckCommand(),
		newBackupCommand(),
		newListBackupsCommand(),
		newShowBackupCommand(),
		newVerifyBackupCommand(),
		newDeleteCommand(),
		newKeepCommand(),
		newRestoreCommand(),
		newRetentionCommand(),
		newVersionCommand(),
		newWALFetchCommand(),
	)
	for _, c := range root.Commands() {
		c.Args = wrapArgs(c.Args)
	}
	return root
}

// wrapArgs turns cobra's argument-count errors into usage errors.
func wrapArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	if check == nil {
		check = cobra.NoArgs
	}
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// loadConfig layers the file, the environment and the flags the user set.
func loadConfig(cmd *cobra.Command, needs config.Needs) (config.Config, error) {
	file, _ := cmd.Flags().GetString("config")
	if file == "" {
		file = os.Getenv("BARNACLE_CONFIG")
	}
	keys := map[string]bool{}
	for _, k := range config.Keys() {
		keys[k.Name] = true
	}
	flags := map[string]string{}
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if keys[f.Name] {
			flags[f.Name] = f.Value.String()
		}
	})
	cfg, err := config.Load(config.Sources{File: file, Flags: flags}, needs)
	if err != nil {
		return cfg, err
	}
	// The backend's own rules (such as the s3 query parameters it accepts)
	// are checked here, before anything starts or prints the URL, so that a
	// secret pasted into an unknown parameter is a configuration error
	// (exit 2) and never reaches a log line or etcd.
	if cfg.ArchiveURL != "" {
		if err := backends.Check(cfg.ArchiveURL); err != nil {
			return config.Config{}, &config.Error{Key: "archive-url", Source: cfg.Sources["archive-url"], Problem: err.Error()}
		}
	}
	return cfg, nil
}

// newLogger builds the root logger: text on a terminal (colored), JSON with
// log-format json.
func newLogger(cfg config.Config, w io.Writer) hclog.Logger {
	color := hclog.ColorOff
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) && cfg.LogFormat == "text" {
		color = hclog.AutoColor
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       "barnacle",
		Level:      hclog.LevelFromString(cfg.LogLevel),
		JSONFormat: cfg.LogFormat == "json",
		Output:     w,
		Color:      color,
	})
}
