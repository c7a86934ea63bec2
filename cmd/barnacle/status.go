package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/pgaddr"
	"github.com/barnacle-pg/barnacle/pkg/redact"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
	"github.com/barnacle-pg/barnacle/pkg/storage/backends"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

func newStatusCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster, its master, the leader and every agent",
		Long: `Show Stolon's master and keepers beside barnacle's leader and agents, and the
problems to act on, then what the archive can recover: the window per
timeline (from the oldest done backup's stop point to the end of the WAL
archived without a hole), the last backup, recorded WAL gaps, and how far
the archive is behind the master. Needs cluster-name and store-endpoints;
the archive part needs archive-url, and the lag asks the master with the
pg-* settings (else it uses the leader's record).

Exit code 1 when it reports a problem (the Problems list, or an archive-url
that cannot be read), also with --json, whose "problems" list and
"archive.error" hold the detail; 0 otherwise.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, config.Needs{Keys: []string{"cluster-name", "store-endpoints"}})
			if err != nil {
				return err
			}
			cli, err := coordinator.NewClient(coordinator.ClientOptionsFor(cfg))
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			r, err := coordinator.ReadReport(ctx, cli, cfg.StorePrefix, cfg.ClusterName, coordinator.NewKeys(cfg.BarnaclePrefix, cfg.ClusterName))
			if err != nil {
				return fmt.Errorf("%w (is etcd reachable at %s?)", err, redact.URLs(cfg.StoreEndpoints))
			}
			out := statusOutput{Report: r, Archive: readArchiveStatus(ctx, cfg, r)}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(out); err != nil {
					return err
				}
			} else {
				if err := printReport(cmd.OutOrStdout(), r); err != nil {
					return err
				}
				if err := printArchiveStatus(cmd.OutOrStdout(), out.Archive); err != nil {
					return err
				}
			}
			if n := out.problems(); n > 0 {
				return exitCodeError{code: exitFailure, err: fmt.Errorf("status reports %d problem(s)", n)}
			}
			return nil
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
			if a.ArchivedLSN != wal.InvalidLSN {
				tli, archived = fmt.Sprint(a.Timeline), a.ArchivedLSN.String()
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

// statusOutput is `barnacle status --json`: the etcd report's fields, and
// the archive's under "archive".
type statusOutput struct {
	coordinator.Report
	Archive archiveStatus `json:"archive"`
}

// problems counts what status reports as wrong, for its exit code: the
// report's problems and an archive that could not be read. An unset
// archive-url is a hint, not a problem: status works without it.
func (o statusOutput) problems() int {
	n := len(o.Problems)
	if o.Archive.Error != "" && !o.Archive.unset {
		n++
	}
	return n
}

func printArchiveStatus(w io.Writer, a archiveStatus) error {
	fmt.Fprintln(w)
	switch {
	case a.Lag == nil:
		fmt.Fprintln(w, "Lag:      unknown (no leader has archived yet)")
	case a.Lag.Source == "master":
		fmt.Fprintf(w, "Lag:      %d bytes (master at %s, archived %s)\n", a.Lag.Bytes, a.Lag.MasterLSN, a.Lag.Archived)
	default:
		why := a.Lag.MasterError
		if why == "" {
			why = "master unreachable"
		}
		fmt.Fprintf(w, "Lag:      %d bytes received but not archived (%s; archived %s)\n", a.Lag.Bytes, why, a.Lag.Archived)
	}
	if a.Error != "" {
		fmt.Fprintf(w, "Archive:  %s\n", a.Error)
		return nil
	}
	if a.LastBackup != nil {
		fmt.Fprintf(w, "Last backup: %s, %s, %s ago\n", a.LastBackup.ID, a.LastBackup.Status, a.LastBackup.Age)
	} else {
		fmt.Fprintln(w, "Last backup: none")
	}
	switch {
	case a.DrillsError != "":
		fmt.Fprintf(w, "Last drill: unknown (%s)\n", a.DrillsError)
	case a.LastDrill != nil && a.LastSuccessfulDrill != nil && a.LastDrill.ID == a.LastSuccessfulDrill.ID:
		printDrillLine(w, "Last drill:", a.LastDrill)
	default:
		printDrillLine(w, "Last drill:", a.LastDrill)
		printDrillLine(w, "Last successful drill:", a.LastSuccessfulDrill)
	}
	if len(a.Windows) == 0 {
		fmt.Fprintln(w, "Recoverable: nothing (no done backup with its WAL)")
	} else {
		fmt.Fprintln(w, "Recoverable:")
		for _, win := range a.Windows {
			from := win.From
			if win.FromTime != nil {
				from += " (" + win.FromTime.UTC().Format(time.RFC3339) + ")"
			}
			line := fmt.Sprintf("  timeline %d: %s .. %s", win.Timeline, from, win.To)
			if win.StopsAt != "" {
				line += " (stops at " + win.StopsAt + ")"
			}
			fmt.Fprintln(w, line)
		}
	}
	if len(a.Gaps) > 0 {
		fmt.Fprintln(w, "WAL gaps:")
		for _, g := range a.Gaps {
			fmt.Fprintf(w, "  timeline %d: %s .. %s, detected %s\n", g.Timeline, g.StartLSN, g.EndLSN, g.DetectedAt.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// archiveStatus is what `barnacle status` adds from the archive and the
// master: the recoverable window per timeline, the lag, the last backup
// and the recorded gaps.
type archiveStatus struct {
	// Error says why the archive part is missing (archive-url not set, or
	// unreadable); the other fields are then empty.
	Error      string           `json:"error,omitempty"`
	Windows    []timelineWindow `json:"recoverableWindows"`
	LastBackup *lastBackup      `json:"lastBackup,omitempty"`
	// LastDrill is the newest restore drill of any outcome,
	// LastSuccessfulDrill the newest that succeeded (drills/ in the
	// archive); DrillsError says why they could not be read.
	LastDrill           *drillSummary `json:"lastDrill,omitempty"`
	LastSuccessfulDrill *drillSummary `json:"lastSuccessfulDrill,omitempty"`
	DrillsError         string        `json:"drillsError,omitempty"`
	Gaps                []catalog.Gap `json:"gaps"`
	Lag                 *archiveLag   `json:"lag,omitempty"`
	// unset: Error only says that archive-url is not set.
	unset bool
}

// drillSummary is one restore drill as status shows it.
type drillSummary struct {
	ID          string     `json:"id"`
	Node        string     `json:"node"`
	Status      string     `json:"status"`
	BackupID    string     `json:"backupID,omitempty"`
	ReachedLSN  string     `json:"reachedLSN,omitempty"`
	ReachedTime *time.Time `json:"reachedTime,omitempty"`
	FinishedAt  time.Time  `json:"finishedAt"`
	Age         string     `json:"age"`
	// RTO is the drill's measured recovery time (restore, replay and
	// check), as a duration such as 1m30s.
	RTO   string `json:"rto"`
	Error string `json:"error,omitempty"`
}

// summarizeDrills returns the newest drill and the newest successful one
// (by finish time), nil when there is none.
func summarizeDrills(drills []catalog.Drill, now time.Time) (last, lastOK *drillSummary) {
	var l, ok *catalog.Drill
	for i := range drills {
		d := &drills[i]
		if l == nil || d.FinishedAt.After(l.FinishedAt) {
			l = d
		}
		if d.Status == catalog.DrillDone && (ok == nil || d.FinishedAt.After(ok.FinishedAt)) {
			ok = d
		}
	}
	sum := func(d *catalog.Drill) *drillSummary {
		if d == nil {
			return nil
		}
		s := &drillSummary{ID: d.ID, Node: d.Node, Status: d.Status, BackupID: d.BackupID, FinishedAt: d.FinishedAt,
			Age: now.Sub(d.FinishedAt).Round(time.Second).String(), RTO: d.Phases.RTO().Round(time.Millisecond).String(),
			Error: d.Error}
		if d.Reached.LSN != wal.InvalidLSN {
			s.ReachedLSN = d.Reached.LSN.String()
		}
		if !d.ReachedTime.IsZero() {
			t := d.ReachedTime
			s.ReachedTime = &t
		}
		return s
	}
	return sum(l), sum(ok)
}

// printDrillLine prints one drill summary for status's text output.
func printDrillLine(w io.Writer, label string, d *drillSummary) {
	if d == nil {
		fmt.Fprintf(w, "%s none\n", label)
		return
	}
	line := fmt.Sprintf("%s %s on %s, %s, %s ago", label, d.ID, d.Node, d.Status, d.Age)
	if d.Status == catalog.DrillDone {
		line += fmt.Sprintf(": backup %s restored to %s", d.BackupID, d.ReachedLSN)
		if d.ReachedTime != nil {
			line += " (" + d.ReachedTime.UTC().Format(time.RFC3339) + ")"
		}
		line += ", RTO " + d.RTO
	} else if d.Error != "" {
		line += ": " + d.Error
	}
	fmt.Fprintln(w, line)
}

// timelineWindow is the range of WAL positions on one timeline that the
// oldest done backup and the archived WAL can recover to.
type timelineWindow struct {
	Timeline wal.Timeline `json:"timeline"`
	// From is where recovery on this timeline can begin: the oldest done
	// backup's stop point on its own timeline, the switch point on a later
	// one. FromTime is the backup's stop time (only on its timeline).
	From     string     `json:"from"`
	FromTime *time.Time `json:"fromTime,omitempty"`
	// To is the end of the WAL archived without a hole from From on.
	To string `json:"to"`
	// StopsAt says why the window ends before the timeline's archived end:
	// the first missing segment or a recorded gap. Empty when it reaches
	// the end.
	StopsAt string `json:"stopsAt,omitempty"`
}

// lastBackup is the newest backup of any status.
type lastBackup struct {
	ID     string    `json:"id"`
	Status string    `json:"status"`
	Time   time.Time `json:"time"` // stop time, or start time while running
	Age    string    `json:"age"`
}

// archiveLag is how far the archive is behind the master, in bytes.
type archiveLag struct {
	Bytes int64 `json:"bytes"`
	// Source is "master" (its current position minus the leader's
	// archived one) or "leader record" (received minus archived, when the
	// master could not be asked).
	Source    string `json:"source"`
	MasterLSN string `json:"masterLSN,omitempty"`
	Archived  string `json:"archivedLSN"`
	// MasterError says why the master could not be asked (source "leader
	// record"), and what to pass when it refused the credentials.
	MasterError string `json:"masterError,omitempty"`
}

// readArchiveStatus reads the archive and asks the master for its
// position. It does not fail: what it cannot read, it reports.
func readArchiveStatus(ctx context.Context, cfg config.Config, r coordinator.Report) archiveStatus {
	st := archiveStatus{Windows: []timelineWindow{}, Gaps: []catalog.Gap{}}
	st.Lag = readLag(ctx, cfg, r)
	if cfg.ArchiveURL == "" {
		st.Error = "archive-url is not set: set it to show the recoverable window, the last backup and gaps"
		st.unset = true
		return st
	}
	b, err := backends.OpenReadOnly(ctx, cfg.ArchiveURL)
	if err != nil {
		st.Error = err.Error() // names archive-url
		return st
	}
	a, err := catalog.ReadArchive(ctx, b, cfg.ClusterName)
	if err != nil {
		st.Error = err.Error()
		return st
	}
	st.Gaps = append(st.Gaps, a.Gaps...)
	st.Windows = recoverableWindows(a)
	if len(a.Backups) > 0 {
		d := a.Backups[0] // newest first
		at := d.StopTime
		if at.IsZero() {
			at = d.StartTime
		}
		st.LastBackup = &lastBackup{ID: d.ID, Status: string(d.Status), Time: at, Age: time.Since(at).Round(time.Second).String()}
	}
	if drills, err := catalog.ListDrills(ctx, b, cfg.ClusterName); err != nil {
		st.DrillsError = err.Error()
	} else {
		st.LastDrill, st.LastSuccessfulDrill = summarizeDrills(drills, time.Now())
	}
	return st
}

// readLag asks the master for its current position (IDENTIFY_SYSTEM over a
// replication connection, as the agents connect) and subtracts the
// leader's archived position; without the master, the leader's own record
// gives received minus archived. Nil when no leader archives.
func readLag(ctx context.Context, cfg config.Config, r coordinator.Report) *archiveLag {
	var leader *coordinator.AgentStatus
	for i := range r.Agents {
		if r.Agents[i].Name == r.Leader {
			leader = &r.Agents[i]
		}
	}
	if leader == nil || leader.ArchivedLSN == wal.InvalidLSN {
		return nil
	}
	archived := leader.ArchivedLSN
	masterErr := "clusterdata names no master"
	if r.Master != nil {
		addr, err := reportMasterAddress(cfg, *r.Master)
		if err != nil {
			masterErr = err.Error()
		} else if pos, err := masterPosition(ctx, cfg, addr); err != nil {
			masterErr = describeMasterError(err, cfg, addr.String())
		} else {
			return &archiveLag{Bytes: lagBytes(pos, archived), Source: "master", MasterLSN: pos.String(), Archived: archived.String()}
		}
	}
	received := leader.ReceivedLSN
	if received == wal.InvalidLSN {
		return nil
	}
	return &archiveLag{Bytes: lagBytes(received, archived), Source: "leader record", Archived: archived.String(), MasterError: masterErr}
}

// describeMasterError says why status could not ask the master for its
// position: a refused login (SQLSTATE class 28: no pg_hba line, unknown
// role, wrong or missing password) is not an unreachable master, and the
// fix is to pass the agents' credentials.
func describeMasterError(err error, cfg config.Config, address string) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "28") {
		user := cfg.PGUser
		if user == "" {
			user = "the OS user (pg-user is not set)"
		} else {
			user = fmt.Sprintf("%q", user)
		}
		return fmt.Sprintf("master at %s is up but refused to authenticate %s for replication (%s, SQLSTATE %s): "+
			"pass the agents' --pg-user and --pg-password-file (or PGPASSWORD/PGPASSFILE) to see the lag from the master",
			address, user, pgErr.Message, pgErr.Code)
	}
	return fmt.Sprintf("master at %s unreachable: %v", address, err)
}

func lagBytes(ahead, behind wal.LSN) int64 {
	if ahead <= behind {
		return 0
	}
	return int64(ahead - behind) //nolint:gosec // an LSN difference fits
}

// reportMasterAddress is where status asks the master for its position:
// the report's master, by the rule of package pgaddr.
func reportMasterAddress(cfg config.Config, m coordinator.ReportMaster) (pgaddr.Address, error) {
	host, portStr, err := net.SplitHostPort(m.Address)
	if err != nil {
		return pgaddr.Address{}, fmt.Errorf("master address %q: %w", m.Address, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return pgaddr.Address{}, fmt.Errorf("master address %q: bad port", m.Address)
	}
	return pgaddr.Master(cfg, &stolon.Master{KeeperUID: m.KeeperUID, Host: host, Port: port})
}

func masterPosition(ctx context.Context, cfg config.Config, addr pgaddr.Address) (wal.LSN, error) {
	cs, err := cfg.PGConnString(addr.Host, addr.Port, true)
	if err != nil {
		return 0, err
	}
	return walstream.ServerPosition(ctx, cs, 5*time.Second)
}

// recoverableWindows is the status view of catalog.RecoverableWindows.
func recoverableWindows(a catalog.Archive) []timelineWindow {
	out := []timelineWindow{}
	for _, w := range catalog.RecoverableWindows(a) {
		tw := timelineWindow{Timeline: w.Timeline, From: w.FromLSN.String(), To: w.ToLSN.String(), StopsAt: w.StopsAt}
		if !w.FromTime.IsZero() {
			t := w.FromTime
			tw.FromTime = &t
		}
		out = append(out, tw)
	}
	return out
}
