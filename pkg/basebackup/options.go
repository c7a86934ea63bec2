package basebackup

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// MinServerVersion is the first PostgreSQL major version whose BASE_BACKUP
// sends the whole backup as one COPY stream, the only framing Run reads.
const MinServerVersion = 15

// The server's bounds for MAX_RATE, in kilobytes per second
// (MAX_RATE_LOWER and MAX_RATE_UPPER in basebackup.h).
const (
	minMaxRate = 32
	maxMaxRate = 1048576
)

// ManifestChecksumAlgorithms are the values of MANIFEST_CHECKSUMS that
// PostgreSQL 15 accepts (pg_checksum_parse_type in checksum_helper.c).
var ManifestChecksumAlgorithms = []string{"NONE", "CRC32C", "SHA224", "SHA256", "SHA384", "SHA512"}

// ParseManifestChecksums returns the MANIFEST_CHECKSUMS value for s, an
// algorithm named in any case; empty means CRC32C.
func ParseManifestChecksums(s string) (string, error) {
	if s == "" {
		return "CRC32C", nil
	}
	if alg := strings.ToUpper(s); slices.Contains(ManifestChecksumAlgorithms, alg) {
		return alg, nil
	}
	return "", fmt.Errorf("manifest checksum algorithm %q is unknown: use one of %s",
		s, strings.Join(ManifestChecksumAlgorithms, ", "))
}

// ErrUnsupportedVersion is returned by Run for a server older than
// MinServerVersion.
var ErrUnsupportedVersion = errors.New("basebackup: PostgreSQL 15 or later is required")

// Options selects the BASE_BACKUP options. The zero value is a backup with
// a spread checkpoint, no manifest, no progress estimate and no throttling.
//
// The server is always told WAIT false: it must not wait for the WAL up to
// the stop position to be archived by archive_command, because barnacle
// streams the WAL itself. The caller must therefore not consider the backup
// restorable before its own archive holds the WAL up to Result.Stop.
// https://www.postgresql.org/docs/15/protocol-replication.html#PROTOCOL-REPLICATION-BASE-BACKUP
type Options struct {
	// Label is the backup label stored in backup_label; empty means the
	// server's default ("base backup"). It must not contain a NUL byte.
	Label string
	// Fast requests an immediate checkpoint (CHECKPOINT 'fast') instead of
	// a spread one, which can take up to checkpoint_timeout *
	// checkpoint_completion_target before any data flows.
	Fast bool
	// Manifest requests a backup manifest (MANIFEST 'yes'), which
	// pg_verifybackup checks. Run then fails if the server sends no
	// manifest.
	Manifest bool
	// ManifestChecksums is the manifest's per-file checksum algorithm
	// (MANIFEST_CHECKSUMS): one of ManifestChecksumAlgorithms, in any case;
	// empty means CRC32C, the server's and pg_basebackup's default. The
	// server computes it over every byte it sends, so the choice costs the
	// server CPU: SHA256 took about 1.9 s more than CRC32C for 3 GB on a
	// 2-core machine.
	ManifestChecksums string
	// MaxRate throttles the server to this many kilobytes per second; 0
	// means no limit. Otherwise it must be within 32..1048576, the
	// server's bounds.
	MaxRate int64
	// TablespaceMap makes the server write a tablespace_map file into
	// base.tar instead of pg_tblspc symbolic links (TABLESPACE_MAP).
	TablespaceMap bool
	// Progress makes the server estimate each tablespace's size before it
	// starts sending (Tablespace.Size), at the cost of an extra pass over
	// the data directory (PROGRESS). Progress events ('p' messages) arrive
	// at the end of each archive even without it, and about once a second
	// with it.
	Progress bool
}

// sql returns the BASE_BACKUP command for a server of major version
// serverVersion. It is the one place that knows the version differences:
// the parenthesised option syntax and the single-COPY framing both start
// with PostgreSQL 15, and older servers are refused.
func (o Options) sql(serverVersion int) (string, error) {
	if serverVersion < MinServerVersion {
		return "", fmt.Errorf("%w: server is version %d", ErrUnsupportedVersion, serverVersion)
	}
	if strings.IndexByte(o.Label, 0) >= 0 {
		return "", errors.New("backup label contains a NUL byte")
	}
	if o.MaxRate != 0 && (o.MaxRate < minMaxRate || o.MaxRate > maxMaxRate) {
		return "", fmt.Errorf("max rate %d kB/s is outside %d..%d", o.MaxRate, minMaxRate, maxMaxRate)
	}
	checksums, err := ParseManifestChecksums(o.ManifestChecksums)
	if err != nil {
		return "", err
	}
	var opts []string
	if o.Label != "" {
		opts = append(opts, "LABEL "+quoteLiteral(o.Label))
	}
	if o.Progress {
		opts = append(opts, "PROGRESS")
	}
	if o.Fast {
		opts = append(opts, "CHECKPOINT 'fast'")
	} else {
		opts = append(opts, "CHECKPOINT 'spread'")
	}
	opts = append(opts, "WAIT false")
	if o.MaxRate != 0 {
		opts = append(opts, "MAX_RATE "+strconv.FormatInt(o.MaxRate, 10))
	}
	if o.TablespaceMap {
		opts = append(opts, "TABLESPACE_MAP")
	}
	if o.Manifest {
		opts = append(opts, "MANIFEST 'yes'", "MANIFEST_CHECKSUMS '"+checksums+"'")
	} else {
		opts = append(opts, "MANIFEST 'no'")
	}
	return "BASE_BACKUP (" + strings.Join(opts, ", ") + ")", nil
}

// quoteLiteral quotes s as a replication-grammar string constant. The
// replication scanner (repl_scanner.l) knows only doubled quotes, no
// backslash escapes.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
