package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/retention"
)

// retentionPolicy turns the configured policy into the planner's, as of
// now.
func retentionPolicy(cfg config.Config, now time.Time) retention.Policy {
	return retention.Policy{
		Redundancy:        cfg.RetentionPolicy.Redundancy,
		WindowStart:       cfg.RetentionPolicy.WindowStart(now),
		MinimumRedundancy: cfg.MinimumRedundancy,
		Text:              cfg.RetentionPolicy.String(),
	}
}

// retentionOutput is retention --json's answer.
type retentionOutput struct {
	Plan   retention.Plan    `json:"plan"`
	Result *retention.Result `json:"result,omitempty"`
}

func newRetentionCommand() *cobra.Command {
	var apply, asJSON bool
	cmd := &cobra.Command{
		Use:   "retention",
		Short: "Show what retention-policy deletes; --apply deletes it",
		Long: `Show which backups and WAL files retention-policy (and minimum-redundancy)
would delete from archive-url, and why each backup is kept or deleted.
With --apply, delete them. The leader agent applies the same plan after
each backup and once a day.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, b, err := openArchive(cmd)
			if err != nil {
				return err
			}
			if cfg.RetentionPolicy.IsZero() {
				return &config.Error{Key: "retention-policy", Problem: fmt.Sprintf(
					`not set, so retention keeps everything; set it to "REDUNDANCY 3" or "RECOVERY WINDOW OF 7 DAYS" (DAYS, WEEKS, MONTHS) in the config file, %s, or --retention-policy`,
					config.EnvName("retention-policy"))}
			}
			in, err := retention.ReadInput(cmd.Context(), b, cfg.ClusterName, retentionPolicy(cfg, time.Now()))
			if err != nil {
				return err
			}
			plan := retention.MakePlan(in)
			out := retentionOutput{Plan: plan}
			var applyErr error
			if apply {
				res, err := retention.Apply(cmd.Context(), b, cfg.ClusterName, plan)
				out.Result, applyErr = &res, err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				if err := printJSON(w, out); err != nil {
					return err
				}
			} else {
				printRetentionPlan(w, plan, apply)
				if out.Result != nil {
					printRetentionResult(w, *out.Result)
				}
			}
			return applyErr
		},
	}
	cmd.Flags().BoolVar(&apply, "apply", false, "delete what the plan says (default: only show it)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

func printRetentionPlan(w io.Writer, p retention.Plan, apply bool) {
	fmt.Fprintf(w, "Policy: %s", p.PolicyText)
	if !p.Policy.WindowStart.IsZero() {
		fmt.Fprintf(w, " (window starts %s)", p.Policy.WindowStart.UTC().Format(time.RFC3339))
	}
	if p.MinimumRedundancy > 0 {
		fmt.Fprintf(w, ", minimum-redundancy %d", p.MinimumRedundancy)
	}
	fmt.Fprintln(w)
	verb := "would delete"
	if apply {
		verb = "deletes"
	}
	fmt.Fprintln(w)
	if len(p.Delete) == 0 {
		fmt.Fprintf(w, "Backups: none to delete.\n")
	} else {
		fmt.Fprintf(w, "Backups retention %s (%d):\n", verb, len(p.Delete))
		printDecisions(w, p.Delete)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Backups kept (%d):\n", len(p.Keep))
	printDecisions(w, p.Keep)
	fmt.Fprintln(w)

	wp := p.WAL
	switch {
	case wp.KeptAll != "":
		fmt.Fprintf(w, "WAL: all kept: %s.\n", wp.KeptAll)
	case len(wp.Delete) == 0:
		fmt.Fprintf(w, "WAL: nothing to delete before %s (start of backup %s).\n", wp.Floor, wp.FloorBackup)
	default:
		fmt.Fprintf(w, "WAL retention %s: %d files, %s .. %s, %s (everything before %s, the start of backup %s, on the timelines leading to the kept backups)\n",
			verb, len(wp.Delete), wp.Delete[0].Name, wp.Delete[len(wp.Delete)-1].Name, humanBytes(wp.DeleteBytes), wp.Floor, wp.FloorBackup)
	}
	fmt.Fprintf(w, "WAL kept: %d segments, %d history, %d partial, %s in all\n",
		wp.KeptSegments, len(wp.Histories), len(wp.Partials), humanBytes(wp.KeptBytes))
	for _, c := range wp.Conflicts {
		fmt.Fprintf(w, "  conflict copy kept (compare it with the original, then delete it by hand): %s\n", c)
	}
	for _, u := range wp.Unknown {
		fmt.Fprintf(w, "  unknown file kept: %s\n", u)
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "Note: %s\n", n)
	}
}

func printDecisions(w io.Writer, ds []retention.Decision) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tSTATUS\tSTART TIME\tSTART LSN\tTIMELINE\tSTORED\tWHY")
	for _, d := range ds {
		start := "-"
		if !d.StartTime.IsZero() {
			start = d.StartTime.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.ID, d.Status, start, shownLSN(d.StartLSN), d.StartTimeline, humanBytes(d.StoredBytes), d.Reason)
	}
	_ = tw.Flush()
}

func printRetentionResult(w io.Writer, r retention.Result) {
	fmt.Fprintln(w)
	for _, d := range r.Deleted {
		fmt.Fprintf(w, "deleted backup %s (%s)\n", d.ID, d.Reason)
	}
	for _, id := range r.Gone {
		fmt.Fprintf(w, "backup %s was already gone\n", id)
	}
	for _, s := range r.Skipped {
		fmt.Fprintf(w, "skipped backup %s: %s\n", s.ID, s.Reason)
	}
	if r.WALSkipped != "" {
		fmt.Fprintf(w, "WAL not deleted: %s\n", r.WALSkipped)
	}
	fmt.Fprintf(w, "deleted %d WAL files, %s\n", r.DeletedWAL, humanBytes(r.DeletedWALBytes))
}
