package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walfetch"
)

func newVerifyWALCommand() *cobra.Command {
	var (
		asJSON bool
		from   string
	)
	cmd := &cobra.Command{
		Use:   "verify-wal",
		Short: "Read every archived WAL file and check it as a restore would use it",
		Long: `Read every WAL file of cluster-name in archive-url (segments in any compression,
.partial and .history files) and check it as wal-fetch serves it: the bytes against the
checksum stored with them, complete segments decompressed to exactly the segment size,
.partial files no longer than a segment, .history files parseable. --from SEGMENT|LSN
leaves out segments before that one (on any timeline); .history files are always read.

Progress goes to stderr on a terminal. Each damaged or unreadable file is listed
("PROBLEM: <file>: <what>"); the exit code is 1 when any is, 0 when all checked out.
With --json: {"files": N, "bytes": N, "problems": [{"file": "...", "problem": "..."}]}.
The archive is opened read-only.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, b, err := openArchiveToRead(cmd)
			if err != nil {
				return err
			}
			var start wal.SegmentNo
			if from != "" {
				id, err := catalog.ReadIdentity(cmd.Context(), b, cfg.ClusterName)
				if err != nil {
					return fmt.Errorf("read the archive's identity: %w", err)
				}
				if start, err = parseFrom(from, id.WALSegmentSize); err != nil {
					return usageError{err}
				}
			}
			bar := newProgressBar(cmd, "verifying WAL", true)
			report, err := walfetch.VerifyWAL(cmd.Context(), b, cfg.ClusterName, start, bar.Update)
			bar.Done()
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), report); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "WAL of %s in %s: %d files, %s checked\n", cfg.ClusterName, b.URL(), report.Files, humanBytes(report.Bytes))
				for _, p := range report.Problems {
					fmt.Fprintf(cmd.OutOrStdout(), "  PROBLEM: %s\n", p)
				}
			}
			if n := len(report.Problems); n > 0 {
				return fmt.Errorf("%d WAL files failed verification, first %s", n, report.Problems[0])
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	cmd.Flags().StringVar(&from, "from", "", "start at this segment (000000010000000A000000FF) or at the segment of this LSN (A/FF000028)")
	return cmd
}

// parseFrom reads --from: a segment file name or an LSN.
func parseFrom(s string, segSize uint64) (wal.SegmentNo, error) {
	if wal.IsSegmentFileName(s) {
		_, seg, err := wal.ParseSegmentFileName(s, segSize)
		if err != nil {
			return 0, fmt.Errorf("--from %q: %w", s, err)
		}
		return seg, nil
	}
	if strings.Contains(s, "/") {
		lsn, err := wal.ParseLSN(s)
		if err != nil {
			return 0, fmt.Errorf("--from %q: %w", s, err)
		}
		return wal.SegmentOf(lsn, segSize), nil
	}
	return 0, fmt.Errorf("--from %q: want a WAL segment name (000000010000000A000000FF) or an LSN (A/FF000028)", s)
}
