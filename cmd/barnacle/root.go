package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

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
master through failovers, takes and verifies base backups, and restores them
to a point in time. Run 'barnacle agent' as a sidecar beside every Stolon
keeper; the other commands are for operators.

Configuration comes from --config FILE (YAML), then BARNACLE_<KEY> environment
variables, then flags, later ones winning. Keys and flags share names
(cluster-name, store-endpoints, ...). Exit codes: 0 success, 1 failure,
2 bad usage or configuration (status and show-backup also exit 1 when they
report a problem).`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		// With Args set, cobra hands an unknown subcommand to the root
		// instead of failing, so that it becomes a usage error (exit 2).
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				msg := fmt.Sprintf("unknown command %q", args[0])
				if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
					msg += fmt.Sprintf("; did you mean %q?", s[0])
				}
				return usageError{errors.New(msg)}
			}
			return cmd.Help()
		},
	}
	root.SuggestionsMinimumDistance = 2
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate(versionLine() + "\n")
	root.SetUsageTemplate(usageTemplate)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		if s := suggestFlag(cmd, err); s != "" {
			err = fmt.Errorf("%w; did you mean --%s?", err, s)
		}
		return usageError{err}
	})
	root.PersistentFlags().String("config", "", "YAML configuration file")
	root.PersistentFlags().BoolP("quiet", "q", false, "for scripts: no progress bar and no informational log lines (log-level warn unless --log-level is given)")
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
		newDrillCommand(),
		newListBackupsCommand(),
		newListDrillsCommand(),
		newShowBackupCommand(),
		newVerifyBackupCommand(),
		newVerifyWALCommand(),
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

// usageTemplate is cobra's default with the global flags (--config and a
// flag per configuration key, some 40 lines) listed once, under
// 'barnacle --help', instead of under every subcommand's own flags.
const usageTemplate = `Usage:{{if .Runnable}}
  {{.UseLine}}{{end}}{{if .HasAvailableSubCommands}}
  {{.CommandPath}} [command]{{end}}{{if gt (len .Aliases) 0}}

Aliases:
  {{.NameAndAliases}}{{end}}{{if .HasExample}}

Examples:
{{.Example}}{{end}}{{if .HasAvailableSubCommands}}

Available Commands:{{range .Commands}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{if .HasAvailableLocalFlags}}

Flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableInheritedFlags}}

Global Flags:
  --config FILE, and a flag per configuration key (--cluster-name, --archive-url,
  --store-endpoints, --pg-user, ...): 'barnacle --help' lists them with their defaults{{end}}{{if .HasAvailableSubCommands}}

Use "{{.CommandPath}} [command] --help" for more information about a command.{{end}}
`

// suggestFlag returns the name of the flag closest to the unknown long
// flag in err, or "" when none is close.
func suggestFlag(cmd *cobra.Command, err error) string {
	var ne *pflag.NotExistError
	if !errors.As(err, &ne) {
		return ""
	}
	bad := ne.GetSpecifiedName()
	if ne.GetSpecifiedShortnames() != "" || bad == "" {
		return "" // -x: one letter is too little to guess from
	}
	best, bestDist := "", 3 // at most two edits away
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		d := config.EditDistance(bad, f.Name)
		if strings.HasPrefix(f.Name, bad) && len(bad) >= 3 {
			d = min(d, 1)
		}
		if d < bestDist {
			best, bestDist = f.Name, d
		}
	})
	return best
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
	if _, set := flags["log-level"]; quietFlag(cmd) && !set {
		flags["log-level"] = "warn"
	}
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

// quietFlag reports -q.
func quietFlag(cmd *cobra.Command) bool {
	q, _ := cmd.Flags().GetBool("quiet")
	return q
}

// newLogger builds the root logger: text on a terminal (colored), JSON with
// log-format json. It writes through w's lineGuard, so that its lines
// never land on a progress bar's line.
func newLogger(cfg config.Config, w io.Writer) hclog.Logger {
	color := hclog.ColorOff
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) && cfg.LogFormat == "text" {
		color = hclog.AutoColor
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       "barnacle",
		Level:      hclog.LevelFromString(cfg.LogLevel),
		JSONFormat: cfg.LogFormat == "json",
		Output:     guardFor(w),
		Color:      color,
	})
}
