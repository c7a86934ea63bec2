package walstream

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/barnacle-pg/barnacle/pkg/pgversion"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// This file holds the replication-protocol exchanges the receiver needs that
// pglogrepl does not cover for physical streaming (slot-less
// START_REPLICATION, READ_REPLICATION_SLOT, a context-aware end of COPY),
// split like pglogrepl.go: functions that do I/O over a *pgconn.PgConn, and
// pure parse/format functions over bytes and strings.
// https://www.postgresql.org/docs/15/protocol-replication.html

// minSlotServerVersion is the first major version with READ_REPLICATION_SLOT,
// the only way to read a slot's restart_lsn on a physical replication
// connection (which refuses SQL).
const minSlotServerVersion = 15

// slotNamePattern is ReplicationSlotValidateName's rule: lower-case letters,
// digits and underscores, at most NAMEDATALEN-1 bytes.
var slotNamePattern = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// replicationConfig parses connString and makes it a physical replication
// connection: replication=true is added when missing, and any other
// replication mode ("database" is logical) is refused.
func replicationConfig(connString string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse connection string: %w", err)
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	mode, ok := cfg.RuntimeParams["replication"]
	switch {
	case !ok:
		cfg.RuntimeParams["replication"] = "true"
	case !isTrue(mode):
		return nil, fmt.Errorf("connection string has replication=%s: physical streaming needs replication=true", mode)
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "barnacle"
	}
	return cfg, nil
}

// isTrue accepts PostgreSQL's spellings of a true boolean parameter.
func isTrue(s string) bool {
	switch strings.ToLower(s) {
	case "true", "on", "yes", "1", "t", "y":
		return true
	}
	return false
}

// systemInfo is the part of IDENTIFY_SYSTEM the receiver uses.
type systemInfo struct {
	SystemID string
	Timeline wal.Timeline
	XLogPos  wal.LSN
}

func identifySystem(ctx context.Context, conn *pgconn.PgConn) (systemInfo, error) {
	res, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return systemInfo{}, fmt.Errorf("identify system: %w", err)
	}
	if res.Timeline <= 0 {
		return systemInfo{}, fmt.Errorf("identify system: invalid timeline %d", res.Timeline)
	}
	return systemInfo{SystemID: res.SystemID, Timeline: wal.Timeline(res.Timeline), XLogPos: wal.LSN(res.XLogPos)}, nil
}

// segmentSize runs SHOW wal_segment_size, which a physical replication
// connection accepts (it refuses other SQL), and validates the answer.
func segmentSize(ctx context.Context, conn *pgconn.PgConn) (uint64, error) {
	v, err := singleValue(ctx, conn, "SHOW wal_segment_size")
	if err != nil {
		return 0, fmt.Errorf("show wal_segment_size: %w", err)
	}
	if v == nil {
		return 0, errors.New("show wal_segment_size: null result")
	}
	size, err := parseByteSize(string(v))
	if err != nil {
		return 0, fmt.Errorf("show wal_segment_size: %w", err)
	}
	if err := wal.ValidSegmentSize(size); err != nil {
		return 0, fmt.Errorf("show wal_segment_size: %w", err)
	}
	return size, nil
}

// singleValue runs a command that returns one row with one column.
func singleValue(ctx context.Context, conn *pgconn.PgConn, sql string) ([]byte, error) {
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) != 1 {
		return nil, errors.New("want one row with one column")
	}
	return results[0].Rows[0][0], nil
}

// parseByteSize parses a GUC memory value as SHOW prints it: an integer
// followed by one of PostgreSQL's memory units (B, kB, MB, GB, TB; case
// matters, as in postgresql.conf). A bare integer is bytes.
func parseByteSize(s string) (uint64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	unit := strings.TrimSpace(s[len(num):])
	num = strings.TrimSpace(num)
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("parse size %q: want an integer and a unit like 16MB", s)
	}
	var mult uint64
	switch unit {
	case "", "B":
		mult = 1
	case "kB":
		mult = 1 << 10
	case "MB":
		mult = 1 << 20
	case "GB":
		mult = 1 << 30
	case "TB":
		mult = 1 << 40
	default:
		return 0, fmt.Errorf("parse size %q: unknown unit %q", s, unit)
	}
	if n > ^uint64(0)/mult {
		return 0, fmt.Errorf("parse size %q: too large", s)
	}
	return n * mult, nil
}

// slotInfo is what READ_REPLICATION_SLOT says about a slot.
type slotInfo struct {
	Exists   bool
	Physical bool
	// RestartLSN and RestartTimeline are zero when the slot has not
	// reserved WAL yet.
	RestartLSN      wal.LSN
	RestartTimeline wal.Timeline
}

// quoteIdent quotes a replication-grammar identifier. Slot names are
// validated against slotNamePattern, but one may start with a digit, which
// the unquoted IDENT token does not allow.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// readSlot runs READ_REPLICATION_SLOT (PostgreSQL 15+).
func readSlot(ctx context.Context, conn *pgconn.PgConn, slot string) (slotInfo, error) {
	if v := conn.ParameterStatus("server_version"); v != "" {
		major, err := pgversion.Major(v)
		if err != nil {
			return slotInfo{}, fmt.Errorf("read replication slot %s: %w", slot, err)
		}
		if major < minSlotServerVersion {
			return slotInfo{}, fmt.Errorf("read replication slot %s: server version %s has no READ_REPLICATION_SLOT; PostgreSQL %d or later is required",
				slot, v, minSlotServerVersion)
		}
	}
	results, err := conn.Exec(ctx, "READ_REPLICATION_SLOT "+quoteIdent(slot)).ReadAll()
	if err != nil {
		return slotInfo{}, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 {
		return slotInfo{}, fmt.Errorf("read replication slot %s: want one row", slot)
	}
	info, err := parseReadReplicationSlot(results[0].Rows[0])
	if err != nil {
		return slotInfo{}, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	return info, nil
}

// parseReadReplicationSlot parses READ_REPLICATION_SLOT's row: slot_type,
// restart_lsn, restart_tli, all NULL (nil) when the slot does not exist.
func parseReadReplicationSlot(row [][]byte) (slotInfo, error) {
	if len(row) != 3 {
		return slotInfo{}, fmt.Errorf("want 3 columns, got %d", len(row))
	}
	if row[0] == nil {
		return slotInfo{}, nil
	}
	info := slotInfo{Exists: true, Physical: string(row[0]) == "physical"}
	if row[1] != nil {
		lsn, err := wal.ParseLSN(string(row[1]))
		if err != nil {
			return slotInfo{}, fmt.Errorf("restart_lsn: %w", err)
		}
		info.RestartLSN = lsn
	}
	if row[2] != nil {
		tli, err := strconv.ParseUint(string(row[2]), 10, 32)
		if err != nil || tli == 0 {
			return slotInfo{}, fmt.Errorf("restart_tli %q is not a timeline", row[2])
		}
		info.RestartTimeline = wal.Timeline(tli)
	}
	return info, nil
}

// createSlot creates a physical slot that reserves WAL at once, so the
// server keeps WAL from now on even before streaming starts. A slot that
// already exists (someone else won the race) is success.
func createSlot(ctx context.Context, conn *pgconn.PgConn, slot string) error {
	_, err := conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+quoteIdent(slot)+" PHYSICAL RESERVE_WAL").ReadAll()
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == sqlstateDuplicateObject {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create replication slot %s: %w", slot, err)
	}
	return nil
}

// createTemporarySlot creates a physical slot that lives as long as conn
// and reserves WAL at once.
func createTemporarySlot(ctx context.Context, conn *pgconn.PgConn, slot string) error {
	if _, err := conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+quoteIdent(slot)+" TEMPORARY PHYSICAL RESERVE_WAL").ReadAll(); err != nil {
		return fmt.Errorf("create temporary replication slot %s: %w", slot, err)
	}
	return nil
}

// timelineHistory fetches the history file of tli (TIMELINE_HISTORY),
// checking the file name the server gives.
func timelineHistory(ctx context.Context, conn *pgconn.PgConn, tli wal.Timeline) ([]byte, error) {
	res, err := pglogrepl.TimelineHistory(ctx, conn, int32(tli))
	if err != nil {
		return nil, fmt.Errorf("timeline history %d: %w", tli, err)
	}
	if want := wal.HistoryFileName(tli); res.FileName != want {
		return nil, fmt.Errorf("timeline history %d: server sent file %q, want %q", tli, res.FileName, want)
	}
	if _, err := wal.ParseHistory(res.Content); err != nil {
		return nil, fmt.Errorf("timeline history %d: %w", tli, err)
	}
	return res.Content, nil
}

// startReplicationSQL formats START_REPLICATION for a physical stream. The
// timeline is always given, so that the server streams an older timeline
// of its history up to its switch point instead of refusing.
func startReplicationSQL(slot string, start wal.LSN, tli wal.Timeline) string {
	var b strings.Builder
	b.WriteString("START_REPLICATION ")
	if slot != "" {
		b.WriteString("SLOT " + quoteIdent(slot) + " ")
	}
	fmt.Fprintf(&b, "PHYSICAL %s TIMELINE %d", start, uint32(tli))
	return b.String()
}

// timelineEnd is the result set the server sends when a timeline it
// streamed (or was asked to start on) ends: the next timeline and where it
// begins, which is the old timeline's switch point.
type timelineEnd struct {
	Next  wal.Timeline
	Start wal.LSN
}

// parseTimelineEnd parses the (next_tli, next_tli_startpos) row.
func parseTimelineEnd(row [][]byte) (timelineEnd, error) {
	if len(row) != 2 || row[0] == nil || row[1] == nil {
		return timelineEnd{}, errors.New("want next_tli and next_tli_startpos")
	}
	tli, err := strconv.ParseUint(string(row[0]), 10, 32)
	if err != nil || tli == 0 {
		return timelineEnd{}, fmt.Errorf("next_tli %q is not a timeline", row[0])
	}
	lsn, err := wal.ParseLSN(string(row[1]))
	if err != nil {
		return timelineEnd{}, fmt.Errorf("next_tli_startpos: %w", err)
	}
	return timelineEnd{Next: wal.Timeline(tli), Start: lsn}, nil
}

// startReplication sends START_REPLICATION and waits for the server's
// answer: nil, nil when the COPY stream began; a *timelineEnd when tli is a
// historic timeline that ends exactly at start, so there is nothing to
// stream (the server answers with the next timeline at once); or the
// server's error.
func startReplication(ctx context.Context, conn *pgconn.PgConn, slot string, start wal.LSN, tli wal.Timeline) (*timelineEnd, error) {
	conn.Frontend().SendQuery(&pgproto3.Query{String: startReplicationSQL(slot, start, tli)})
	if err := conn.Frontend().Flush(); err != nil {
		return nil, fmt.Errorf("send start replication: %w", err)
	}
	end, copying, err := readUntilReady(ctx, conn, true)
	if err != nil {
		return nil, err
	}
	if copying {
		return nil, nil
	}
	if end == nil {
		return nil, errors.New("start replication: server ended the command without streaming or naming a next timeline")
	}
	return end, nil
}

// endCopy answers the server's CopyDone at the end of a timeline with our
// CopyDone and reads the next timeline from the result set that follows.
func endCopy(ctx context.Context, conn *pgconn.PgConn) (timelineEnd, error) {
	conn.Frontend().Send(&pgproto3.CopyDone{})
	if err := conn.Frontend().Flush(); err != nil {
		return timelineEnd{}, fmt.Errorf("send copy done: %w", err)
	}
	end, _, err := readUntilReady(ctx, conn, false)
	if err != nil {
		return timelineEnd{}, fmt.Errorf("end of timeline: %w", err)
	}
	if end == nil {
		return timelineEnd{}, errors.New("end of timeline: server sent no next timeline")
	}
	return *end, nil
}

// readUntilReady reads a replication command's response until ReadyForQuery
// (or, when acceptCopy is set, a CopyBothResponse, reported as copying). A
// (next_tli, next_tli_startpos) row is returned as a *timelineEnd. The first
// ErrorResponse is returned as a *pgconn.PgError.
func readUntilReady(ctx context.Context, conn *pgconn.PgConn, acceptCopy bool) (end *timelineEnd, copying bool, err error) {
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return nil, false, fmt.Errorf("receive: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyBothResponse:
			if !acceptCopy {
				return nil, false, errors.New("unexpected CopyBothResponse")
			}
			return nil, true, nil
		case *pgproto3.ErrorResponse:
			return nil, false, pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.DataRow:
			te, err := parseTimelineEnd(msg.Values)
			if err != nil {
				return nil, false, err
			}
			end = &te
		case *pgproto3.ReadyForQuery:
			return end, false, nil
		case *pgproto3.RowDescription, *pgproto3.CommandComplete, *pgproto3.CopyDone,
			*pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return nil, false, fmt.Errorf("unexpected message %T", msg)
		}
	}
}

// sendStatus reports pos as written, flushed and applied. pos must be
// durable in the archive: with a slot, the server may remove WAL before it.
func sendStatus(ctx context.Context, conn *pgconn.PgConn, pos wal.LSN) error {
	p := pglogrepl.LSN(pos)
	err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: p,
		WALFlushPosition: p,
		WALApplyPosition: p,
		ClientTime:       time.Now(),
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	return nil
}

// ServerPosition asks the server at connString (a replication connection)
// for its end of WAL, giving up after timeout: the agent's archive lag
// while it does not stream and barnacle status's lag both need it.
func ServerPosition(ctx context.Context, connString string, timeout time.Duration) (wal.LSN, error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := pgconn.Connect(cctx, connString)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(cctx))
	sys, err := pglogrepl.IdentifySystem(cctx, conn)
	if err != nil {
		return 0, err
	}
	return wal.LSN(sys.XLogPos), nil
}
