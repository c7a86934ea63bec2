package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/barnacle-pg/barnacle/pkg/backup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walfetch"
)

// archiveNeeds is what every catalog command needs: the cluster's archive.
var archiveNeeds = config.Needs{Keys: []string{"cluster-name", "archive-url"}}

// openArchive loads the configuration and opens archive-url.
func openArchive(cmd *cobra.Command) (config.Config, storage.Backend, error) {
	cfg, err := loadConfig(cmd, archiveNeeds)
	if err != nil {
		return cfg, nil, err
	}
	b, err := backends.Open(cmd.Context(), cfg.ArchiveURL)
	if err != nil {
		return cfg, nil, err // names archive-url
	}
	return cfg, b, nil
}

// openArchiveToRead is openArchive for commands that only read the
// archive: a user who may read but not write it can run them.
func openArchiveToRead(cmd *cobra.Command) (config.Config, storage.Backend, error) {
	cfg, err := loadConfig(cmd, archiveNeeds)
	if err != nil {
		return cfg, nil, err
	}
	b, err := backends.OpenReadOnly(cmd.Context(), cfg.ArchiveURL)
	if err != nil {
		return cfg, nil, err // names archive-url
	}
	return cfg, b, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newListBackupsCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list-backups",
		Short: "List the base backups in the archive, newest first",
		Long:  "List the base backups of cluster-name in archive-url, newest first, with status, sizes, times, LSNs and timeline.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, b, err := openArchiveToRead(cmd)
			if err != nil {
				return err
			}
			list, err := catalog.ListBackups(cmd.Context(), b, cfg.ClusterName)
			if err != nil {
				return err
			}
			if asJSON {
				if list == nil {
					list = []catalog.Backup{}
				}
				return printJSON(cmd.OutOrStdout(), list)
			}
			w := cmd.OutOrStdout()
			if len(list) == 0 {
				fmt.Fprintf(w, "No backups of %s in %s yet: take one with 'barnacle backup --local'.\n", cfg.ClusterName, b.URL())
				return nil
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATUS\tSIZE\tSTORED\tSTART TIME\tDURATION\tSTART LSN\tSTOP LSN\tTIMELINE\tKEEP")
			for _, d := range list {
				dur := "-"
				if !d.StopTime.IsZero() {
					dur = d.StopTime.Sub(d.StartTime).Round(time.Second).String()
				}
				keep := ""
				if d.Keep {
					keep = "keep"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.ID, d.Status, humanBytes(d.Bytes), humanBytes(d.StoredBytes),
					d.StartTime.UTC().Format(time.RFC3339), dur, shownLSN(d.StartLSN), shownLSN(d.StopLSN), d.StartTimeline, keep)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

// backupDetail is show-backup's answer: the backup document and the WAL it
// needs.
type backupDetail struct {
	Backup catalog.Backup   `json:"backup"`
	WAL    catalog.WALCheck `json:"wal"`
	// Restorable: done, and every WAL segment it needs is archived.
	Restorable bool `json:"restorable"`
}

func newShowBackupCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show-backup ID|latest",
		Short: "Show one backup in full, with the WAL range it needs and whether it is archived",
		Long: `Show one backup in full (ID, or latest for the newest done one), with the WAL
range it needs and whether that WAL is archived.

Exit code 1 when the backup is not restorable ("Restorable: NO": not done, or
WAL it needs is missing), also with --json, whose "restorable", "wal.missing"
and "backup.error" hold the detail; 0 when it is restorable.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, b, err := openArchiveToRead(cmd)
			if err != nil {
				return err
			}
			d, err := catalog.ResolveBackup(cmd.Context(), b, cfg.ClusterName, args[0])
			if err != nil {
				return err
			}
			wc, err := catalog.CheckBackupWAL(cmd.Context(), b, cfg.ClusterName, d)
			if err != nil && d.Status == catalog.StatusDone {
				return err
			}
			detail := backupDetail{Backup: d, WAL: wc, Restorable: d.Status == catalog.StatusDone && err == nil && len(wc.Missing) == 0}
			if asJSON {
				err = printJSON(cmd.OutOrStdout(), detail)
			} else {
				err = printBackup(cmd.OutOrStdout(), detail)
			}
			if err != nil {
				return err
			}
			if !detail.Restorable {
				return exitCodeError{code: exitFailure, err: fmt.Errorf("backup %s is not restorable", d.ID)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

// shownLSN is l as backup documents write it: "" while not known yet (a
// running backup's positions), not PostgreSQL's invalid 0/0.
func shownLSN(l wal.LSN) string {
	text, _ := l.MarshalText()
	return string(text)
}

func printBackup(w io.Writer, d backupDetail) error {
	b := d.Backup
	fmt.Fprintf(w, "Backup:       %s (%s)\n", b.ID, b.Status)
	if b.Error != "" {
		fmt.Fprintf(w, "Error:        %s\n", b.Error)
	}
	if b.Label != "" {
		fmt.Fprintf(w, "Label:        %s\n", b.Label)
	}
	fmt.Fprintf(w, "PostgreSQL:   %d, system identifier %s\n", b.PGVersion, b.SystemID)
	fmt.Fprintf(w, "Taken from:   %s (%s) by agent %s\n", b.Host, b.From, b.Agent)
	fmt.Fprintf(w, "Start:        %s at %s, timeline %d\n", b.StartTime.UTC().Format(time.RFC3339), shownLSN(b.StartLSN), b.StartTimeline)
	if !b.StopTime.IsZero() {
		fmt.Fprintf(w, "Stop:         %s at %s, timeline %d (%s)\n", b.StopTime.UTC().Format(time.RFC3339), shownLSN(b.StopLSN), b.StopTimeline,
			b.StopTime.Sub(b.StartTime).Round(time.Second))
	}
	fmt.Fprintf(w, "Size:         %s, stored %s (%s)\n", humanBytes(b.Bytes), humanBytes(b.StoredBytes), b.Compression)
	fmt.Fprintf(w, "Keep:         %t\n", b.Keep)
	fmt.Fprintln(w, "Files:")
	for _, f := range b.Files {
		fmt.Fprintf(w, "  %-24s %10s stored %10s  %s\n", f.Name, humanBytes(f.Bytes), humanBytes(f.StoredBytes), storage.DescribeChecksum(f.Checksum))
	}
	fmt.Fprintf(w, "WAL needed:   %s .. %s: %d present", d.WAL.First, d.WAL.Last, d.WAL.Present)
	if len(d.WAL.Missing) > 0 {
		fmt.Fprintf(w, ", MISSING %v", d.WAL.Missing)
	}
	fmt.Fprintln(w)
	if d.Restorable {
		fmt.Fprintln(w, "Restorable:   yes")
	} else {
		fmt.Fprintln(w, "Restorable:   NO (see status, error and missing WAL above)")
	}
	return nil
}

func newDeleteCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a backup from the archive",
		Long:  "Delete a backup and all its files. A kept or running backup is refused unless --force.",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, b, err := openArchive(cmd)
			if err != nil {
				return err
			}
			if err := catalog.DeleteBackup(cmd.Context(), b, cfg.ClusterName, args[0], force); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted backup %s\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "also delete a kept or running backup")
	return cmd
}

func newKeepCommand() *cobra.Command {
	var release bool
	cmd := &cobra.Command{
		Use:   "keep ID",
		Short: "Keep a backup (and the WAL it needs) out of retention; --release undoes it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, b, err := openArchive(cmd)
			if err != nil {
				return err
			}
			if err := catalog.SetKeep(cmd.Context(), b, cfg.ClusterName, args[0], !release); err != nil {
				return err
			}
			state := "kept"
			if release {
				state = "released"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "backup %s %s\n", args[0], state)
			return nil
		},
	}
	cmd.Flags().BoolVar(&release, "release", false, "release a kept backup")
	return cmd
}

func newVerifyBackupCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify-backup ID|latest",
		Short: "Re-read a backup and check every file against its checksums and backup_manifest, and the WAL it needs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, b, err := openArchiveToRead(cmd)
			if err != nil {
				return err
			}
			d, err := catalog.ResolveBackup(cmd.Context(), b, cfg.ClusterName, args[0])
			if err != nil {
				return err
			}
			bar := newProgressBar(cmd, "verifying "+d.ID, !asJSON)
			report, err := backup.Verify(cmd.Context(), b, cfg.ClusterName, d, bar.Update)
			bar.Done()
			if err != nil && len(report.Problems) == 0 {
				return err
			}
			// The WAL from the backup's start to its consistency point: a
			// restore cannot start without it.
			var walReport walfetch.Report
			if d.Status == catalog.StatusDone {
				walBar := newProgressBar(cmd, "verifying the WAL of "+d.ID, !asJSON)
				walReport, err = walfetch.VerifyBackupWAL(cmd.Context(), b, cfg.ClusterName, d, walBar.Update)
				walBar.Done()
				if err != nil {
					return err
				}
				for _, p := range walReport.Problems {
					report.Problems = append(report.Problems, "wals/"+p.String())
				}
			}
			if asJSON {
				if report.Problems == nil {
					report.Problems = []string{}
				}
				if jerr := printJSON(cmd.OutOrStdout(), report); jerr != nil {
					return jerr
				}
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "backup %s: %d files, %s checked\n", d.ID, report.Files, humanBytes(report.Bytes))
				if d.Status == catalog.StatusDone {
					fmt.Fprintf(cmd.OutOrStdout(), "WAL to consistency: %d files, %s checked\n", walReport.Files, humanBytes(walReport.Bytes))
				}
				for _, p := range report.Problems {
					fmt.Fprintf(cmd.OutOrStdout(), "  PROBLEM: %s\n", p)
				}
			}
			if len(report.Problems) > 0 {
				return fmt.Errorf("backup %s failed verification: %s", d.ID, report.Problems[0])
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}
