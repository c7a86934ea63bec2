package basebackup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/barnacle-pg/barnacle/pkg/pgversion"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// abandonTimeout bounds the cancel request and the close Run does when it
// gives up on a connection in the middle of a backup. A walsender waiting
// for a checkpoint notices a closed socket only when the checkpoint is
// over, so the cancel request comes first; neither may hold up the caller,
// whose context may already be done, for long.
const abandonTimeout = 5 * time.Second

// Position is a WAL position on a timeline.
type Position struct {
	LSN      wal.LSN
	Timeline wal.Timeline
}

// Tablespace is a row of the tablespace list the server sends before the
// archives.
type Tablespace struct {
	// OID is the tablespace's OID, 0 for the data directory (the
	// pg_default and pg_global tablespaces, archived as base.tar).
	OID uint32
	// Location is the tablespace directory on the server, empty for the
	// data directory.
	Location string
	// Size is the server's estimate in bytes (it counts in kilobytes), or
	// -1 when Options.Progress was off.
	Size int64
}

// ArchiveInfo describes an archive Run passed to the Consumer.
type ArchiveInfo struct {
	// Name is the server's archive name: "base.tar" or "<oid>.tar".
	Name string
	// Location is the tablespace directory on the server, empty for
	// base.tar.
	Location string
	// Bytes is the archive's length.
	Bytes int64
}

// Result describes a finished base backup.
type Result struct {
	// Start is where recovery from this backup starts (the checkpoint's
	// redo position) and Stop the position recovery must reach before the
	// backup is consistent. WAL from Start to Stop is needed to restore.
	Start, Stop Position
	// Tablespaces is the server's list, in its order, including the data
	// directory.
	Tablespaces []Tablespace
	// Archives are the archives in the order they were received.
	Archives []ArchiveInfo
	// ManifestBytes is the manifest's length, 0 without a manifest.
	ManifestBytes int64
	// ServerVersion is the server's major version (15, 16, ...).
	ServerVersion int
}

// Consumer receives a backup. Run calls its methods from the goroutine
// that called Run, one at a time, in stream order: Begin once, then for
// each archive NewArchive and its writes, then Manifest and its writes
// when a manifest was requested, with Progress calls in between.
//
// Each writer returned by NewArchive or Manifest is closed exactly once:
// when its data is complete, or when the backup fails (a failed backup's
// archives, complete or not, are of no use on their own; Run's error is
// what decides whether the backup exists). A writer that implements
// Aborter learns about the failure before it is closed.
type Consumer interface {
	// Begin is called when the server has done its checkpoint and the
	// backup starts at start. An error aborts the backup.
	Begin(start Position) error
	// NewArchive returns the writer for the next archive, named as the
	// server names it ("base.tar" for the data directory, "<oid>.tar" for
	// a tablespace whose directory on the server is tablespaceLocation).
	NewArchive(name, tablespaceLocation string) (io.WriteCloser, error)
	// Manifest returns the writer for the backup manifest (JSON).
	Manifest() (io.WriteCloser, error)
	// Progress reports the total bytes the server has sent, non-decreasing.
	Progress(done int64)
}

// Planner is an optional interface of a Consumer: Run calls Plan once,
// after Begin and before the first NewArchive, with the server's
// tablespace list (the data directory included), so that the consumer
// knows the archives to expect and, with Options.Progress, their estimated
// sizes (see EstimatedBytes). An error aborts the backup.
type Planner interface {
	Plan(tablespaces []Tablespace) error
}

// EstimatedBytes returns the server's estimate of the bytes its archives
// will hold, the sum of the tablespaces' sizes, or -1 when a size is
// unknown (Options.Progress was off). The estimate is taken before the
// server sends anything: files that grow or appear meanwhile, and the
// manifest, are not in it, so the real count may end somewhat above.
func EstimatedBytes(tablespaces []Tablespace) int64 {
	if len(tablespaces) == 0 {
		return -1
	}
	var sum int64
	for _, ts := range tablespaces {
		if ts.Size < 0 {
			return -1
		}
		sum += ts.Size
	}
	return sum
}

// Aborter is an optional interface of the writers a Consumer returns:
// Abort(err) is called, before Close, when the backup failed with err while
// the writer was open, so that Close can discard the partial data rather
// than keep it as a finished archive.
type Aborter interface {
	Abort(err error)
}

// Run takes a base backup over conn, a physical replication connection
// (replication=true) that is idle, and streams it to c. It blocks until
// the backup is complete and the server is ready for the next command, and
// returns the start and stop positions.
//
// Run fails with ErrUnsupportedVersion for servers older than
// PostgreSQL 15. Server errors are returned as *pgconn.PgError, after
// which conn is idle and usable. When ctx is done, a Consumer call fails,
// or the server breaks the protocol (ErrProtocol) while the backup runs,
// Run sends the server a cancel request and closes conn, since the server
// may still be streaming; with ctx done the error wraps ctx.Err(). A
// blocked Consumer call is not interrupted by ctx.
func Run(ctx context.Context, conn *pgconn.PgConn, opts Options, c Consumer) (Result, error) {
	return run(ctx, conn, opts, c, nil)
}

// run is Run with a tap that sees every CopyData payload, for capturing
// test data.
func run(ctx context.Context, conn *pgconn.PgConn, opts Options, c Consumer, tap func([]byte)) (Result, error) {
	version, err := pgversion.Major(conn.ParameterStatus("server_version"))
	if err != nil {
		return Result{}, fmt.Errorf("base backup: %w", err)
	}
	sql, err := opts.sql(version)
	if err != nil {
		return Result{}, fmt.Errorf("base backup: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("base backup: %w", err)
	}
	s := &session{conn: conn, opts: opts, c: c, tap: tap, res: Result{ServerVersion: version}}
	conn.Frontend().SendQuery(&pgproto3.Query{String: sql})
	if err := conn.Frontend().Flush(); err != nil {
		s.abandon()
		return Result{}, fmt.Errorf("base backup: send command: %w", err)
	}
	if err := s.receive(ctx); err != nil {
		if s.cur != nil {
			if a, ok := s.cur.(Aborter); ok {
				a.Abort(err)
			}
			err = errors.Join(err, s.closeCurrent())
		}
		if s.serverFailed {
			// The server ended the command; it sends ReadyForQuery next.
			if derr := s.drain(ctx); derr != nil {
				s.abandon()
			}
		} else {
			s.abandon()
		}
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return Result{}, fmt.Errorf("base backup: %w", err)
	}
	return s.res, nil
}

// session is the state of one Run.
type session struct {
	conn *pgconn.PgConn
	opts Options
	c    Consumer
	tap  func([]byte)
	res  Result

	demux Demux
	// cur is the open archive or manifest writer, counting into *curBytes.
	cur      io.WriteCloser
	curBytes *int64
	// baseSeen is set when the data directory's archive arrived.
	baseSeen     bool
	sawManifest  bool
	copyFinished bool
	// serverFailed is set when the server sent an ErrorResponse: it has
	// ended the command and sends ReadyForQuery next.
	serverFailed bool
}

// receive reads the whole response to BASE_BACKUP: the start position,
// the tablespace list, the COPY stream, the stop position, ReadyForQuery.
func (s *session) receive(ctx context.Context) error {
	rows, err := s.resultSet(ctx, "recptr", "tli")
	if err != nil {
		return fmt.Errorf("read start position: %w", err)
	}
	if len(rows) != 1 {
		return fmt.Errorf("%w: start position has %d rows, want 1", ErrProtocol, len(rows))
	}
	if s.res.Start, err = parsePosition(rows[0]); err != nil {
		return fmt.Errorf("%w: start position: %w", ErrProtocol, err)
	}
	if err := s.c.Begin(s.res.Start); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	rows, err = s.resultSet(ctx, "spcoid", "spclocation", "size")
	if err != nil {
		return fmt.Errorf("read tablespace list: %w", err)
	}
	for _, row := range rows {
		ts, err := parseTablespace(row)
		if err != nil {
			return fmt.Errorf("%w: tablespace list: %w", ErrProtocol, err)
		}
		s.res.Tablespaces = append(s.res.Tablespaces, ts)
	}
	if p, ok := s.c.(Planner); ok {
		if err := p.Plan(s.res.Tablespaces); err != nil {
			return fmt.Errorf("plan: %w", err)
		}
	}
	if err := s.copyStream(ctx); err != nil {
		return err
	}
	rows, err = s.resultSet(ctx, "recptr", "tli")
	if err != nil {
		return fmt.Errorf("read stop position: %w", err)
	}
	if len(rows) != 1 {
		return fmt.Errorf("%w: stop position has %d rows, want 1", ErrProtocol, len(rows))
	}
	if s.res.Stop, err = parsePosition(rows[0]); err != nil {
		return fmt.Errorf("%w: stop position: %w", ErrProtocol, err)
	}
	if s.res.Stop.LSN < s.res.Start.LSN {
		return fmt.Errorf("%w: stop position %s is before start position %s", ErrProtocol, s.res.Stop.LSN, s.res.Start.LSN)
	}
	return s.drain(ctx)
}

// copyStream reads the COPY stream from CopyOutResponse to CopyDone.
func (s *session) copyStream(ctx context.Context) error {
	msg, err := s.next(ctx)
	if err != nil {
		return fmt.Errorf("start of COPY: %w", err)
	}
	if _, ok := msg.(*pgproto3.CopyOutResponse); !ok {
		return fmt.Errorf("%w: got %T, want CopyOutResponse", ErrProtocol, msg)
	}
	for {
		msg, err := s.next(ctx)
		if err != nil {
			return fmt.Errorf("receive backup stream: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if s.tap != nil {
				s.tap(msg.Data)
			}
			ev, err := s.demux.Feed(msg.Data)
			if err != nil {
				return err
			}
			if err := s.handle(ev); err != nil {
				return err
			}
		case *pgproto3.CopyDone:
			s.copyFinished = true
			if err := s.demux.End(); err != nil {
				return err
			}
			if err := s.closeCurrent(); err != nil {
				return err
			}
			if s.opts.Manifest && !s.sawManifest {
				return fmt.Errorf("%w: server sent no manifest", ErrProtocol)
			}
			if !s.baseSeen {
				return fmt.Errorf("%w: server sent no archive of the data directory", ErrProtocol)
			}
			if got, want := len(s.res.Archives), len(s.res.Tablespaces); got != want {
				return fmt.Errorf("%w: server sent %d archives for %d tablespaces", ErrProtocol, got, want)
			}
			return nil
		default:
			return fmt.Errorf("%w: unexpected %T in the backup stream", ErrProtocol, msg)
		}
	}
}

// handle passes one demultiplexed event to the consumer.
func (s *session) handle(ev Event) error {
	switch ev.Kind {
	case EventArchive:
		if err := s.closeCurrent(); err != nil {
			return err
		}
		if err := s.checkLocation(ev.Location); err != nil {
			return err
		}
		w, err := s.c.NewArchive(ev.Name, ev.Location)
		if err != nil {
			return fmt.Errorf("open archive %s: %w", ev.Name, err)
		}
		if w == nil {
			return fmt.Errorf("open archive %s: consumer returned no writer", ev.Name)
		}
		s.res.Archives = append(s.res.Archives, ArchiveInfo{Name: ev.Name, Location: ev.Location})
		s.cur, s.curBytes = w, &s.res.Archives[len(s.res.Archives)-1].Bytes
	case EventManifest:
		if !s.opts.Manifest {
			return fmt.Errorf("%w: server sent a manifest that was not requested", ErrProtocol)
		}
		if err := s.closeCurrent(); err != nil {
			return err
		}
		w, err := s.c.Manifest()
		if err != nil {
			return fmt.Errorf("open manifest: %w", err)
		}
		if w == nil {
			return errors.New("open manifest: consumer returned no writer")
		}
		s.sawManifest = true
		s.cur, s.curBytes = w, &s.res.ManifestBytes
	case EventArchiveData, EventManifestData:
		n, err := s.cur.Write(ev.Data)
		*s.curBytes += int64(n)
		if err == nil && n != len(ev.Data) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", s.curName(), err)
		}
	case EventProgress:
		s.c.Progress(ev.Done)
	}
	return nil
}

// checkLocation matches a new archive's tablespace location against the
// tablespace list: the data directory once, every tablespace once (Demux
// already refuses a repeated archive name).
func (s *session) checkLocation(location string) error {
	if location == "" {
		if s.baseSeen {
			return fmt.Errorf("%w: second archive of the data directory", ErrProtocol)
		}
		s.baseSeen = true
		return nil
	}
	for _, ts := range s.res.Tablespaces {
		if ts.OID != 0 && ts.Location == location {
			return nil
		}
	}
	return fmt.Errorf("%w: archive for tablespace location %q, which is not in the tablespace list", ErrProtocol, location)
}

func (s *session) curName() string {
	if s.curBytes == &s.res.ManifestBytes {
		return "manifest"
	}
	return "archive " + s.res.Archives[len(s.res.Archives)-1].Name
}

// closeCurrent closes the open writer, if any.
func (s *session) closeCurrent() error {
	if s.cur == nil {
		return nil
	}
	w, name := s.cur, s.curName()
	s.cur, s.curBytes = nil, nil
	if err := w.Close(); err != nil {
		return fmt.Errorf("close %s: %w", name, err)
	}
	return nil
}

// next receives one message, skipping those that may come at any time.
// An ErrorResponse is returned as the error (a *pgconn.PgError).
func (s *session) next(ctx context.Context) (pgproto3.BackendMessage, error) {
	for {
		msg, err := s.conn.ReceiveMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		switch msg := msg.(type) {
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus, *pgproto3.NotificationResponse:
			continue
		case *pgproto3.ErrorResponse:
			s.serverFailed = true
			return nil, pgconn.ErrorResponseToPgError(msg)
		default:
			return msg, nil
		}
	}
}

// resultSet reads a result set whose columns must be named cols, up to
// its CommandComplete, and returns copies of its rows.
func (s *session) resultSet(ctx context.Context, cols ...string) ([][][]byte, error) {
	msg, err := s.next(ctx)
	if err != nil {
		return nil, err
	}
	rd, ok := msg.(*pgproto3.RowDescription)
	if !ok {
		return nil, fmt.Errorf("%w: got %T, want RowDescription", ErrProtocol, msg)
	}
	if err := checkColumns(rd, cols); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	var rows [][][]byte
	for {
		msg, err := s.next(ctx)
		if err != nil {
			return nil, err
		}
		switch msg := msg.(type) {
		case *pgproto3.DataRow:
			if len(msg.Values) != len(cols) {
				return nil, fmt.Errorf("%w: row has %d columns, want %d", ErrProtocol, len(msg.Values), len(cols))
			}
			// The values alias pgconn's read buffer.
			row := make([][]byte, len(msg.Values))
			for i, v := range msg.Values {
				if v != nil {
					row[i] = append([]byte{}, v...)
				}
			}
			rows = append(rows, row)
		case *pgproto3.CommandComplete:
			return rows, nil
		default:
			return nil, fmt.Errorf("%w: got %T in a result set", ErrProtocol, msg)
		}
	}
}

func checkColumns(rd *pgproto3.RowDescription, cols []string) error {
	names := make([]string, len(rd.Fields))
	for i, f := range rd.Fields {
		names[i] = string(f.Name)
	}
	if strings.Join(names, ",") != strings.Join(cols, ",") {
		return fmt.Errorf("result columns are (%s), want (%s)", strings.Join(names, ", "), strings.Join(cols, ", "))
	}
	return nil
}

// drain reads up to ReadyForQuery, after the command completed or failed.
func (s *session) drain(ctx context.Context) error {
	for {
		msg, err := s.conn.ReceiveMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		switch msg := msg.(type) {
		case *pgproto3.ReadyForQuery:
			return nil
		case *pgproto3.CommandComplete, *pgproto3.NoticeResponse, *pgproto3.ParameterStatus,
			*pgproto3.NotificationResponse:
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		default:
			return fmt.Errorf("%w: unexpected %T after the backup", ErrProtocol, msg)
		}
	}
}

// abandon stops the server's backup and closes the connection, which is
// in an unknown state.
func (s *session) abandon() {
	ctx, cancel := context.WithTimeout(context.Background(), abandonTimeout)
	defer cancel()
	if !s.copyFinished && !s.serverFailed && !s.conn.IsClosed() {
		_ = s.conn.CancelRequest(ctx)
	}
	_ = s.conn.Close(ctx)
}

// parsePosition parses a (recptr, tli) row.
func parsePosition(row [][]byte) (Position, error) {
	if len(row) != 2 || row[0] == nil || row[1] == nil {
		return Position{}, errors.New("want recptr and tli")
	}
	lsn, err := wal.ParseLSN(string(row[0]))
	if err != nil {
		return Position{}, fmt.Errorf("recptr: %w", err)
	}
	tli, err := strconv.ParseUint(string(row[1]), 10, 32)
	if err != nil || tli == 0 {
		return Position{}, fmt.Errorf("tli %q is not a timeline", row[1])
	}
	return Position{LSN: lsn, Timeline: wal.Timeline(tli)}, nil
}

// parseTablespace parses a (spcoid, spclocation, size) row. The data
// directory's row has NULL spcoid and spclocation; size is in kilobytes,
// NULL without PROGRESS.
func parseTablespace(row [][]byte) (Tablespace, error) {
	if len(row) != 3 {
		return Tablespace{}, fmt.Errorf("want 3 columns, got %d", len(row))
	}
	ts := Tablespace{Size: -1}
	if (row[0] == nil) != (row[1] == nil) {
		return Tablespace{}, errors.New("spcoid and spclocation must both be NULL or both be set")
	}
	if row[0] != nil {
		oid, err := strconv.ParseUint(string(row[0]), 10, 32)
		if err != nil || oid == 0 {
			return Tablespace{}, fmt.Errorf("spcoid %q is not an OID", row[0])
		}
		if len(row[1]) == 0 {
			return Tablespace{}, fmt.Errorf("tablespace %d has an empty location", oid)
		}
		ts.OID, ts.Location = uint32(oid), string(row[1])
	}
	if row[2] != nil {
		kb, err := strconv.ParseInt(string(row[2]), 10, 64)
		if err != nil || kb < 0 || kb > (1<<63-1)/1024 {
			return Tablespace{}, fmt.Errorf("size %q is not a size in kilobytes", row[2])
		}
		ts.Size = kb * 1024
	}
	return ts, nil
}
