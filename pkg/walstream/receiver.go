package walstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/barnacle-pg/barnacle/pkg/compress"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// Defaults for Options.
const (
	// DefaultStatusInterval keeps status updates well inside PostgreSQL's
	// default wal_sender_timeout (60s), like pg_receivewal's 10s
	// --status-interval.
	DefaultStatusInterval = 10 * time.Second
	// DefaultFlushInterval bounds how much received WAL is lost if the
	// receiver dies, and how far the flushed position reported to the
	// server (which synchronous replication and the slot wait for) trails
	// what was received: at most this much time's worth. It applies to
	// backends that implement storage.Appender, where a flush appends only
	// the new bytes: one pwrite and two syncs, about 0.7 ms on a local ext4
	// disk (BenchmarkGrowSegment in pkg/storage/fs). Ten flushes a second
	// then cost about 1% of the receive loop's time, whatever the WAL rate,
	// and keep the lag under 1.1 MB at 11 MB/s of WAL (a busy pgbench).
	// pg_receivewal's default 10 s status interval is no model: it fsyncs
	// only when a segment ends, so its flushed position trails by up to a
	// segment.
	DefaultFlushInterval = 100 * time.Millisecond
	// DefaultRewriteFlushInterval is the default for backends without
	// storage.Appender (object storage such as s3://), where each flush
	// rewrites the whole .partial, up to a segment, in one PUT. A flush
	// then costs what the segment holds so far, not what it gained, so
	// under a steady load that fills a segment in more than the interval
	// the rewrites upload about segment size / (2 × interval) bytes a
	// second whatever the WAL rate: 1.6 MiB/s for 16 MiB segments at 5 s
	// (8 MiB/s at 1 s, more than most WAL rates), on top of the complete
	// segments. A faster load completes segments before the interval and
	// rewrites nothing. The price is the RPO of object storage: up to this
	// much received WAL, and never more than one segment, is not yet in
	// the archive, and the flushed position reported to the server (which
	// the slot keeps the WAL for) trails by as much.
	DefaultRewriteFlushInterval = 5 * time.Second
)

// finalFlushTimeout bounds the last .partial write after Run's context
// ended: long enough for one segment-sized Put, short enough not to hold up
// a shutdown or a leadership hand-over.
const finalFlushTimeout = 15 * time.Second

// closeTimeout bounds closing the connection (sending Terminate).
const closeTimeout = 5 * time.Second

// Options configures a Receiver.
type Options struct {
	// ConnString is a libpq connection string (keyword/value or URL) to the
	// server to stream from. replication=true is added when missing; any
	// other replication mode is refused.
	ConnString string
	// Slot is the physical replication slot to stream through; it keeps
	// the server from removing WAL the archive lacks. "" streams without a
	// slot (tests only: WAL may then be removed before it is archived).
	// Slot names are lower-case letters, digits and underscores.
	Slot string
	// CreateSlot creates Slot, reserving WAL immediately, when it does not
	// exist. Without it a missing slot makes Run fail with ErrNoSlot.
	CreateSlot bool
	// TemporarySlot creates Slot as a temporary slot on the streaming
	// connection (CREATE_REPLICATION_SLOT ... TEMPORARY): it keeps WAL only
	// while Run streams and the server drops it when the connection ends,
	// as pg_basebackup's own slot, so nothing pins WAL afterwards. The
	// name must be free: an existing slot of that name is an error.
	// Needs CreateSlot.
	TemporarySlot bool
	// OnStreaming, if set, is called from Run's goroutine whenever the
	// server has accepted START_REPLICATION: from then on the slot is held
	// by this receiver and keeps the WAL it has not received. It must
	// return quickly.
	OnStreaming func()
	// Backend is the archive.
	Backend storage.Backend
	// Prefix starts every object name the receiver reads or writes, e.g.
	// "mycluster/wals/". It is "" or ends with "/".
	Prefix string
	// Compression is how complete segments are stored: "" or
	// CompressionNone as PostgreSQL wrote them, CompressionZstd as
	// "<segment>.zst", CompressionLZ4 as "<segment>.lz4" (see
	// wal.SplitFileName). A .partial is never compressed: it grows
	// every FlushInterval and is read back to resume. The setting may change
	// between runs: a segment already archived under any of the three
	// names is not archived again (see FindSegment, catalog.OpenSegment).
	// Compression runs in Run's goroutine as each segment completes.
	Compression string
	// StatusInterval is the longest time between two standby status
	// updates; 0 means DefaultStatusInterval.
	StatusInterval time.Duration
	// FlushInterval is how often newly received WAL is written to the
	// segment's .partial; 0 means DefaultFlushInterval, or
	// DefaultRewriteFlushInterval when Backend does not implement
	// storage.Appender. It is counted from the end of the previous write,
	// so writes never overlap and a slow archive stretches the cadence
	// instead of queueing writes. With an appending backend the .partial
	// is also written whenever 512 KiB are waiting; a rewriting backend
	// waits for the interval, because each of its writes uploads the
	// whole .partial. Either way it is written when the server asks for a
	// reply.
	FlushInterval time.Duration
	// Logger receives the receiver's logs under the name "walstream"; nil
	// discards them.
	Logger hclog.Logger
	// OnProgress, if set, is called from Run's goroutine after every write
	// that made WAL durable (a .partial or a complete segment). It must
	// return quickly: streaming waits for it.
	OnProgress func(Progress)
	// OnConnect, if set, is called once the server is identified and
	// before anything is read from or written to the archive; an error
	// stops Run. The caller checks there that the archive belongs to this
	// server (system identifier, segment size).
	OnConnect func(ctx context.Context, info ServerInfo) error
	// OnGap, if set, is called when the server no longer has the WAL where
	// the archive ends. The receiver has found the oldest WAL the server
	// still has (Gap.ResumeAt); if OnGap returns nil (it has recorded the
	// gap durably), streaming continues there. Without OnGap, or when it
	// returns an error, Run returns a *GapError. WAL is never skipped
	// without OnGap's consent.
	OnGap func(ctx context.Context, gap Gap) error
	// Synchronous writes the .partial and reports the flushed position as
	// soon as the server pauses between WAL messages (at most 10 ms after
	// the first unwritten byte) instead of every FlushInterval, so that
	// the receiver can serve as a synchronous standby. Each write is an
	// append to the .partial (two syncs) or, with a backend without
	// storage.Appender, a rewrite of the in-progress segment: one PUT of
	// up to a segment per commit, which suits only small WAL rates.
	Synchronous bool
}

// ServerInfo identifies the server the receiver streams from.
type ServerInfo struct {
	SystemID    string
	Timeline    wal.Timeline
	XLogPos     wal.LSN
	SegmentSize uint64
}

// Gap is WAL the archive lacks for good: from From on Timeline (where the
// archive ends) to ResumeAt on ResumeTimeline (the oldest WAL the server
// still has, a segment start).
type Gap struct {
	Timeline       wal.Timeline
	From           wal.LSN
	ResumeTimeline wal.Timeline
	ResumeAt       wal.LSN
	// Err is the server's error that revealed the gap.
	Err error
}

// Progress describes the receiver's position after a durable write.
type Progress struct {
	// Timeline is the timeline being streamed.
	Timeline wal.Timeline
	// Received is the end of the WAL received from the server.
	Received wal.LSN
	// Flushed is the end of the WAL durable in the archive, the position
	// reported to the server. Flushed <= Received.
	Flushed wal.LSN
	// LastSegment is the file name (without prefix) of the last complete
	// segment archived by this Run, "" if none yet.
	LastSegment string
	// SegmentSize is the server's wal_segment_size.
	SegmentSize uint64
	// ServerWALEnd is the end of WAL on the server, as of its last message;
	// ServerWALEnd - Flushed is what a crash of the server now would lose.
	ServerWALEnd wal.LSN
	// Durable is true when the report follows a write to the archive (then
	// Flushed == Received). Between writes the receiver also reports what
	// it received, at most every progressInterval, so that the lag between
	// the server and the archive is seen while it exists, not only at the
	// moments it is zero.
	Durable bool
}

// progressInterval bounds how often WAL arriving between archive writes is
// reported.
const progressInterval = 50 * time.Millisecond

// Receiver streams WAL from one server into the archive. Its methods are
// not safe for concurrent use: run one Run at a time.
type Receiver struct {
	opts    Options
	connCfg *pgconn.Config
	log     hclog.Logger
	// encoder compresses complete segments; it keeps its buffers from one
	// segment to the next (and across Runs, which never overlap).
	encoder *compress.Encoder
	// suffix is the name suffix of a complete segment, with its dot, or "".
	suffix string
	// appends means Backend implements storage.Appender: a flush writes
	// only the new bytes, so flushing by size (flushBytes) is cheap.
	appends bool
}

// New validates opts and returns a Receiver. It does not connect.
func New(opts Options) (*Receiver, error) {
	if opts.Backend == nil {
		return nil, errors.New("walstream: options: backend is required")
	}
	if opts.Prefix != "" {
		if !strings.HasSuffix(opts.Prefix, "/") {
			return nil, fmt.Errorf("walstream: options: prefix %q must end with /", opts.Prefix)
		}
		if err := storage.CheckName(opts.Prefix + wal.HistoryFileName(1)); err != nil {
			return nil, fmt.Errorf("walstream: options: prefix %q: %w", opts.Prefix, err)
		}
	}
	if opts.Slot != "" && !slotNamePattern.MatchString(opts.Slot) {
		return nil, fmt.Errorf("walstream: options: slot name %q: want 1 to 63 lower-case letters, digits or underscores", opts.Slot)
	}
	if opts.CreateSlot && opts.Slot == "" {
		return nil, errors.New("walstream: options: create slot needs a slot name")
	}
	if opts.TemporarySlot && !opts.CreateSlot {
		return nil, errors.New("walstream: options: a temporary slot needs create slot")
	}
	var alg string
	switch opts.Compression {
	case "", CompressionNone:
		alg = CompressionNone
	case CompressionZstd, CompressionLZ4:
		alg = opts.Compression
	default:
		return nil, fmt.Errorf("walstream: options: compression %q is not supported (want %q, %q or %q)",
			opts.Compression, CompressionNone, CompressionZstd, CompressionLZ4)
	}
	enc, err := compress.NewEncoder(alg)
	if err != nil {
		return nil, fmt.Errorf("walstream: options: %w", err)
	}
	if opts.StatusInterval < 0 || opts.FlushInterval < 0 {
		return nil, errors.New("walstream: options: intervals must not be negative")
	}
	if opts.StatusInterval == 0 {
		opts.StatusInterval = DefaultStatusInterval
	}
	_, appends := opts.Backend.(storage.Appender)
	if opts.FlushInterval == 0 {
		opts.FlushInterval = DefaultFlushInterval
		if !appends {
			opts.FlushInterval = DefaultRewriteFlushInterval
		}
	}
	cfg, err := replicationConfig(opts.ConnString)
	if err != nil {
		return nil, fmt.Errorf("walstream: options: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	log := opts.Logger.Named("walstream")
	if opts.Slot != "" {
		log = log.With("slot", opts.Slot)
	}
	return &Receiver{opts: opts, connCfg: cfg, log: log, encoder: enc, suffix: suffixOf(alg), appends: appends}, nil
}

// Run connects, works out where the archive ends and streams from there
// until ctx ends or an error occurs. It blocks.
//
// When ctx ends Run writes the WAL received so far to the archive (with a
// fresh context bounded by a few seconds) and returns nil, or the error of
// that last write. The same last write is attempted when the connection
// fails. Otherwise it returns the first error, wrapped with what failed:
// a *GapError when the server no longer has the WAL the archive needs,
// ErrNoSlot, a *storage.ConflictError (errors.Is storage.ErrConflict) when
// the archive holds other bytes under a segment's name, server and network
// errors. Use IsRetryable to decide whether to run again.
func (r *Receiver) Run(ctx context.Context) error {
	if ctx.Err() != nil {
		return nil
	}
	r.log.Info("connecting", "host", r.connCfg.Host, "port", r.connCfg.Port)
	conn, err := pgconn.ConnectConfig(ctx, r.connCfg.Copy())
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	s := &stream{r: r, conn: conn, log: r.log}
	err = s.run(ctx)
	if ferr := s.finish(ctx); ferr != nil {
		err = errors.Join(err, ferr)
	}
	if ctx.Err() != nil && IsRetryable(err) {
		// Cancellation is the normal way to stop, and what failed after it
		// was most likely interrupted by it; only the final write counts.
		// An error that needs an operator is reported even so.
		return s.finishErr
	}
	return err
}

// stream is the state of one Run: one connection, one segment in memory.
type stream struct {
	r    *Receiver
	conn *pgconn.PgConn
	log  hclog.Logger

	segSize uint64
	tli     wal.Timeline
	seg     wal.SegmentNo
	// buf holds seg's bytes from its start up to the received position;
	// its capacity is one segment and it is reused.
	buf []byte
	// dirty means buf holds bytes that are not in the archive yet.
	dirty bool
	// dirtySince is when buf last became dirty: synchronous mode bounds
	// how long received WAL waits for the next write.
	dirtySince time.Time
	// partialStored means seg's .partial exists in the archive.
	partialStored bool
	// partialLen is how many of buf's bytes the .partial holds, where the
	// next append goes; meaningful when partialStored.
	partialLen int
	// hash is a running checksum of buf[:hashed], which a write of the
	// .partial passes as its checksum; nil until the first write.
	hash   *storage.Hash
	hashed int
	// flushed is the end of the durable WAL: all that may be reported.
	flushed     wal.LSN
	lastSegment string
	streaming   bool
	// historyStored lists the timelines whose history this Run archived.
	historyStored map[wal.Timeline]bool
	// archiveFailed stops the final write; see archiveFailing.
	archiveFailed bool
	finishErr     error

	nextStatus time.Time
	lastFlush  time.Time
	// sys is the server's identity, from IDENTIFY_SYSTEM at connect.
	sys systemInfo
	// serverEnd is the server's end of WAL as of its last message.
	serverEnd wal.LSN
	// lastReport is when OnProgress was last called.
	lastReport time.Time
}

func (s *stream) received() wal.LSN {
	return wal.SegmentStart(s.seg, s.segSize) + wal.LSN(len(s.buf))
}

func (s *stream) run(ctx context.Context) error {
	sys, err := identifySystem(ctx, s.conn)
	if err != nil {
		return err
	}
	if s.segSize, err = segmentSize(ctx, s.conn); err != nil {
		return err
	}
	s.buf = make([]byte, 0, s.segSize)
	s.sys, s.serverEnd = sys, sys.XLogPos
	s.log.Debug("server identified", "system_id", sys.SystemID, "timeline", sys.Timeline,
		"xlog_pos", sys.XLogPos.String(), "segment_size", s.segSize)
	if s.r.opts.OnConnect != nil {
		info := ServerInfo{SystemID: sys.SystemID, Timeline: sys.Timeline, XLogPos: sys.XLogPos, SegmentSize: s.segSize}
		if err := s.r.opts.OnConnect(ctx, info); err != nil {
			return err
		}
	}

	var slot slotInfo
	if s.r.opts.Slot != "" {
		if slot, err = s.prepareSlot(ctx); err != nil {
			return err
		}
	}
	start, err := s.planStart(ctx, sys, slot)
	if err != nil {
		return err
	}
	if err := s.load(ctx, start); err != nil {
		return err
	}
	return s.streamTimelines(ctx)
}

// prepareSlot reads the slot, creating it first if asked to.
func (s *stream) prepareSlot(ctx context.Context) (slotInfo, error) {
	slot, err := readSlot(ctx, s.conn, s.r.opts.Slot)
	if err != nil {
		return slotInfo{}, err
	}
	if s.r.opts.TemporarySlot {
		if slot.Exists {
			return slotInfo{}, fmt.Errorf("replication slot %s exists already: a temporary slot needs a free name", s.r.opts.Slot)
		}
		if err := createTemporarySlot(ctx, s.conn, s.r.opts.Slot); err != nil {
			return slotInfo{}, err
		}
		s.log.Debug("temporary replication slot created")
		return readSlot(ctx, s.conn, s.r.opts.Slot)
	}
	if !slot.Exists {
		if !s.r.opts.CreateSlot {
			return slotInfo{}, fmt.Errorf("%w: %s", ErrNoSlot, s.r.opts.Slot)
		}
		if err := createSlot(ctx, s.conn, s.r.opts.Slot); err != nil {
			return slotInfo{}, err
		}
		s.log.Info("replication slot created")
		if slot, err = readSlot(ctx, s.conn, s.r.opts.Slot); err != nil {
			return slotInfo{}, err
		}
		if !slot.Exists {
			return slotInfo{}, fmt.Errorf("%w: %s (dropped right after it was created)", ErrNoSlot, s.r.opts.Slot)
		}
	}
	if !slot.Physical {
		return slotInfo{}, fmt.Errorf("replication slot %s is not a physical slot", s.r.opts.Slot)
	}
	return slot, nil
}

// startReplication runs START_REPLICATION through the slot. PostgreSQL
// drops a temporary slot on any error in its session, such as "requested
// WAL segment has already been removed" while a gap is found, so a
// temporary slot is created again first when it is gone.
func (s *stream) startReplication(ctx context.Context, start wal.LSN, tli wal.Timeline) (*timelineEnd, error) {
	if s.r.opts.TemporarySlot {
		slot, err := readSlot(ctx, s.conn, s.r.opts.Slot)
		if err != nil {
			return nil, err
		}
		if !slot.Exists {
			if err := createTemporarySlot(ctx, s.conn, s.r.opts.Slot); err != nil {
				return nil, err
			}
		}
	}
	return startReplication(ctx, s.conn, s.r.opts.Slot, start, tli)
}

// planStart works out where to start: at the end of the archive, or, for
// an empty archive, at the start of the segment holding the slot's
// restart_lsn or else the server's current position. Starting at a segment
// boundary makes the first archived segment complete.
func (s *stream) planStart(ctx context.Context, sys systemInfo, slot slotInfo) (resumePoint, error) {
	prefix := s.r.opts.Prefix
	objs, err := s.r.opts.Backend.List(ctx, prefix)
	if err != nil {
		return resumePoint{}, fmt.Errorf("list archive %s: %w", prefix, err)
	}
	scan, err := scanArchive(objs, prefix, s.segSize)
	if err != nil {
		return resumePoint{}, err
	}
	for _, name := range scan.Superseded {
		if err := s.r.opts.Backend.Delete(ctx, name); err != nil {
			return resumePoint{}, fmt.Errorf("delete superseded %s: %w", name, err)
		}
		s.log.Debug("superseded partial deleted", "object", name)
	}
	start, found, err := resumeFromScan(ctx, scan, s.segSize, s.r.archivedSwitchFinder(scan.Histories))
	if err != nil {
		return resumePoint{}, err
	}
	if !found {
		start = resumePoint{Timeline: sys.Timeline, Start: sys.XLogPos}
		if slot.RestartLSN != wal.InvalidLSN {
			start.Start = slot.RestartLSN
			if slot.RestartTimeline != 0 {
				start.Timeline = slot.RestartTimeline
			}
		}
		start.Start = wal.SegmentStart(wal.SegmentOf(start.Start, s.segSize), s.segSize)
		s.log.Info("archive is empty", "timeline", start.Timeline, "start_lsn", start.Start.String())
		return start, nil
	}
	switch {
	case start.Timeline > sys.Timeline:
		return resumePoint{}, fmt.Errorf("archive reaches timeline %d, but the server is on timeline %d: is it an old master?",
			start.Timeline, sys.Timeline)
	case start.Timeline < sys.Timeline:
		return s.checkServerHistory(ctx, sys, start)
	}
	return start, nil
}

// checkServerHistory checks an archive end on an older timeline against the
// server's history. If the archive holds WAL of that timeline beyond the
// point where the server's history left it (the old master wrote more than
// the promoted standby had received), that tail is a dead branch: it stays
// archived, and streaming continues on the next timeline from the segment
// holding the switch point.
func (s *stream) checkServerHistory(ctx context.Context, sys systemInfo, start resumePoint) (resumePoint, error) {
	data, err := timelineHistory(ctx, s.conn, sys.Timeline)
	if err != nil {
		return resumePoint{}, err
	}
	hist, err := wal.ParseHistory(data)
	if err != nil {
		return resumePoint{}, fmt.Errorf("timeline history %d: %w", sys.Timeline, err)
	}
	sp, ok := wal.SwitchPoint(hist, start.Timeline)
	if !ok {
		return resumePoint{}, fmt.Errorf("archive timeline %d is not in the history of the server's timeline %d", start.Timeline, sys.Timeline)
	}
	if start.Start <= sp {
		return start, nil
	}
	next := nextTimelineAfter(hist, sys.Timeline, start.Timeline)
	s.log.Warn("archive has wal past the timeline switch; it stays as a dead branch",
		"timeline", start.Timeline, "switch_point", sp.String(), "archive_end", start.Start.String(), "next_timeline", next)
	return resumePoint{Timeline: next, Start: wal.SegmentStart(wal.SegmentOf(sp, s.segSize), s.segSize)}, nil
}

// load sets the in-memory segment to start, pre-filled from its .partial
// so that the next .partial and the complete segment hold the whole
// segment.
func (s *stream) load(ctx context.Context, start resumePoint) error {
	s.tli = start.Timeline
	s.seg = wal.SegmentOf(start.Start, s.segSize)
	s.resetSegment()
	if start.Partial != "" {
		// The .partial names the segment: a full one ends where the next
		// segment starts, so start.Start alone would point past it.
		base, _, _ := wal.SplitFileName(strings.TrimPrefix(start.Partial, s.r.opts.Prefix))
		_, seg, err := wal.ParseSegmentFileName(base, s.segSize)
		if err != nil {
			return fmt.Errorf("resume from %s: %w", start.Partial, err)
		}
		s.seg = seg
		data, err := storage.ReadAll(ctx, s.r.opts.Backend, start.Partial)
		if err != nil {
			return fmt.Errorf("read %s: %w", start.Partial, err)
		}
		if want := start.Start - wal.SegmentStart(seg, s.segSize); uint64(len(data)) != uint64(want) {
			return fmt.Errorf("read %s: %d bytes, listed as %d", start.Partial, len(data), want)
		}
		s.buf = append(s.buf, data...)
		// The next flush appends after these bytes, hashing them first
		// (hashed is 0) so that the running hash covers the whole object.
		s.partialStored, s.partialLen = true, len(data)
	}
	s.flushed = s.received()
	s.log.Info("start point", "timeline", s.tli, "start_lsn", s.flushed.String(), "partial", start.Partial)
	if uint64(len(s.buf)) == s.segSize {
		// A full .partial: the crash came between receiving the last
		// byte and storing the segment.
		return s.completeSegment(ctx)
	}
	return nil
}

// streamTimelines runs START_REPLICATION and the receive loop, once per
// timeline, until ctx ends or an error occurs.
func (s *stream) streamTimelines(ctx context.Context) error {
	for {
		if err := s.storeHistory(ctx, s.tli); err != nil {
			return err
		}
		start := s.received()
		s.log.Info("streaming", "timeline", s.tli, "start_lsn", start.String())
		end, err := s.startReplication(ctx, start, s.tli)
		if err != nil && isWALRemoved(err) && s.r.opts.OnGap != nil {
			if err := s.skipGap(ctx, start, err); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return s.streamError(fmt.Errorf("start replication at %s on timeline %d: %w", start, s.tli, err))
		}
		if end == nil {
			s.streaming = true
			s.nextStatus = time.Time{} // report our position at once
			if s.r.opts.OnStreaming != nil {
				s.r.opts.OnStreaming()
			}
			if err := s.receive(ctx); !errors.Is(err, errEndOfTimeline) {
				// The walsender reports a removed segment only once it opens
				// it, after the stream has begun.
				var gap *GapError
				if errors.As(err, &gap) && s.r.opts.OnGap != nil && s.received() == start {
					s.streaming = false
					if _, _, derr := readUntilReady(ctx, s.conn, false); derr != nil {
						return errors.Join(err, derr)
					}
					if err := s.skipGap(ctx, start, gap.Err); err != nil {
						return err
					}
					continue
				}
				return err
			}
			s.streaming = false
			// Finish the protocol exchange first: the walsender waits for
			// our CopyDone, and the final .partial can take a while.
			te, err := endCopy(ctx, s.conn)
			if err != nil {
				return s.streamError(fmt.Errorf("timeline %d: %w", s.tli, err))
			}
			end = &te
			if err := s.endTimeline(ctx); err != nil {
				return err
			}
		}
		if err := s.switchTimeline(ctx, *end); err != nil {
			return err
		}
	}
}

// errEndOfTimeline is receive's signal that the server sent CopyDone.
var errEndOfTimeline = errors.New("walstream: end of timeline")

// streamError turns the server's "WAL already removed" into a *GapError.
func (s *stream) streamError(err error) error {
	if isWALRemoved(err) {
		from := s.received()
		return &GapError{
			Timeline: s.tli,
			From:     from,
			Segment:  wal.SegmentFileName(s.tli, wal.SegmentOf(from, s.segSize), s.segSize),
			Err:      err,
		}
	}
	return err
}

// Synchronous mode writes what it received as soon as the server pauses
// (no message for syncGather), as pg_receivewal --synchronous does after
// draining its socket, and at the latest syncMaxDelay after the first
// unwritten byte, so that one write and its syncs cover a burst of
// messages instead of each one.
const (
	syncGather   = time.Millisecond
	syncMaxDelay = 10 * time.Millisecond
)

// flushBytes bounds the WAL received but not yet durable, whatever the
// interval, on a backend that appends: a write burst then costs at most
// this much RPO. A rewriting backend has no such bound (see
// DefaultRewriteFlushInterval): every write there uploads the whole
// .partial, so flushing every flushBytes would upload up to a segment per
// 512 KiB of WAL, 16 times the WAL rate on average.
const flushBytes = 512 << 10

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// flushDue reports whether the received WAL should be written now.
func (s *stream) flushDue(now time.Time, idle bool) bool {
	if s.r.appends && uint64(s.received()-s.flushed) >= flushBytes {
		return true
	}
	if s.r.opts.Synchronous {
		return idle || !now.Before(s.dirtySince.Add(syncMaxDelay))
	}
	return !now.Before(s.lastFlush.Add(s.r.opts.FlushInterval))
}

// receive is the COPY loop. It returns errEndOfTimeline when the server
// ends the timeline, ctx's error when ctx ends, or the error that stopped
// it.
func (s *stream) receive(ctx context.Context) error {
	opts := s.r.opts
	// idle: the last read found nothing within its deadline.
	idle := false
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		now := time.Now()
		if s.dirty && s.flushDue(now, idle) {
			if err := s.flushPartial(ctx); err != nil {
				return err
			}
		}
		if !now.Before(s.nextStatus) {
			if err := s.sendStatus(ctx); err != nil {
				return err
			}
		}
		// Wake up for the next status update, or the next flush when data
		// is waiting. The deadline only interrupts this read; the
		// connection stays usable (pgconn.Timeout).
		deadline := s.nextStatus
		if s.dirty {
			next := s.lastFlush.Add(opts.FlushInterval)
			if opts.Synchronous {
				next = earliest(now.Add(syncGather), s.dirtySince.Add(syncMaxDelay))
			}
			deadline = earliest(deadline, next)
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		msg, err := s.conn.ReceiveMessage(rctx)
		cancel()
		idle = false
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				idle = true
				continue
			}
			return fmt.Errorf("receive wal on timeline %d at %s: %w", s.tli, s.received(), err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.handleCopyData(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.CopyDone:
			return errEndOfTimeline
		case *pgproto3.ErrorResponse:
			return s.streamError(fmt.Errorf("stream timeline %d at %s: %w", s.tli, s.received(), pgconn.ErrorResponseToPgError(msg)))
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return fmt.Errorf("stream timeline %d: unexpected message %T", s.tli, msg)
		}
	}
}

func (s *stream) handleCopyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return errors.New("stream: empty CopyData message")
	}
	switch data[0] {
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("stream: %w", err)
		}
		s.serverEnd = max(s.serverEnd, wal.LSN(xld.ServerWALEnd))
		if err := s.appendWAL(ctx, wal.LSN(xld.WALStart), xld.WALData); err != nil {
			return err
		}
		if s.received() > s.flushed && time.Since(s.lastReport) >= progressInterval {
			s.report(false)
		}
		return nil
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("stream: %w", err)
		}
		s.serverEnd = max(s.serverEnd, wal.LSN(pkm.ServerWALEnd))
		s.log.Trace("keepalive", "server_wal_end", wal.LSN(pkm.ServerWALEnd).String(), "reply_requested", pkm.ReplyRequested)
		if !pkm.ReplyRequested {
			return nil
		}
		// The server wants to know what we hold (wal_sender_timeout is
		// near, or it is shutting down): make what we received durable
		// first, so the answer is as far ahead as it can truthfully be.
		if s.dirty {
			if err := s.flushPartial(ctx); err != nil {
				return err
			}
		}
		return s.sendStatus(ctx)
	default:
		return fmt.Errorf("stream: unknown CopyData message type %q", data[0])
	}
}

// appendWAL adds WAL that starts at start to the in-memory segment,
// archiving each segment it completes. The server sends WAL contiguously;
// anything else is a protocol error, never papered over.
func (s *stream) appendWAL(ctx context.Context, start wal.LSN, data []byte) error {
	if want := s.received(); start != want {
		return fmt.Errorf("stream: wal data starts at %s, want %s", start, want)
	}
	for len(data) > 0 {
		n := min(int(s.segSize)-len(s.buf), len(data))
		s.buf = append(s.buf, data[:n]...)
		data = data[n:]
		if !s.dirty {
			s.dirtySince = time.Now()
		}
		s.dirty = true
		if uint64(len(s.buf)) == s.segSize {
			if err := s.completeSegment(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// completeSegment stores the full in-memory segment once (storeSegment)
// and then deletes its .partial, in that order, so that a crash in between
// leaves the segment archived twice rather than not at all.
func (s *stream) completeSegment(ctx context.Context) error {
	base := wal.SegmentFileName(s.tli, s.seg, s.segSize)
	existed, err := s.storeSegment(ctx, base)
	if err != nil {
		s.archiveFailing(ctx)
		return fmt.Errorf("archive segment %s: %w", base, err)
	}
	if s.partialStored {
		if err := s.r.opts.Backend.Delete(ctx, s.r.partialObject(s.tli, s.seg, s.segSize)); err != nil {
			s.archiveFailing(ctx)
			return fmt.Errorf("delete %s%s after archiving the segment: %w", base, partialSuffix, err)
		}
	}
	s.log.Debug("segment archived", "segment", base, "object", s.r.segmentObject(base), "existed", existed)
	s.seg++
	s.resetSegment()
	s.lastSegment = base
	s.durable()
	return nil
}

// resetSegment empties the in-memory segment, for a new seg.
func (s *stream) resetSegment() {
	s.buf = s.buf[:0]
	s.dirty, s.partialStored = false, false
	s.partialLen, s.hashed = 0, 0
	if s.hash != nil {
		s.hash.Reset()
	}
}

// flushPartial makes the in-memory segment durable as its .partial, which
// always holds the segment from its start: by appending the bytes the
// .partial lacks when the backend can (storage.Appender), else by
// rewriting it whole.
func (s *stream) flushPartial(ctx context.Context) error {
	if len(s.buf) == 0 {
		s.dirty = false
		return nil
	}
	name := s.r.partialObject(s.tli, s.seg, s.segSize)
	if err := s.writePartial(ctx, name); err != nil {
		s.archiveFailing(ctx)
		return fmt.Errorf("write %s: %w", name, err)
	}
	s.dirty, s.partialStored, s.partialLen = false, true, len(s.buf)
	s.durable()
	return nil
}

// writePartial appends to the .partial, falling back to a whole rewrite
// when the append fails for any reason but ctx's end: the .partial may not
// be what this stream thinks (another writer, a restored archive), or the
// backend may refuse this object, and a Put replaces whatever is there.
func (s *stream) writePartial(ctx context.Context, name string) error {
	if s.hash == nil {
		s.hash = storage.NewHash(storage.DefaultAlgorithm)
	}
	s.hash.Write(s.buf[s.hashed:])
	s.hashed = len(s.buf)
	sum := s.hash.Checksum()
	if a, ok := s.r.opts.Backend.(storage.Appender); ok {
		off := 0
		if s.partialStored {
			off = s.partialLen
		}
		err := a.Append(ctx, name, int64(off), s.buf[off:], sum)
		if err == nil || ctx.Err() != nil {
			return err
		}
		s.log.Warn("appending to the partial segment failed; rewriting it whole", "object", name, "offset", off, "error", err)
		// The next append rewrites the object whole, should this Put fail;
		// partialStored stays, as the object may exist and must be deleted
		// once its segment is archived.
		s.partialLen = 0
	}
	// The digest lets the backend stream the bytes without hashing them
	// first, and catches a buffer changed under the write.
	return s.r.opts.Backend.Put(ctx, name, bytes.NewReader(s.buf), storage.PutOptions{Checksum: sum})
}

// durable records that everything received is in the archive.
func (s *stream) durable() {
	s.flushed = s.received()
	s.lastFlush = time.Now()
	// Tell the server soon, so that the slot lets go of the WAL.
	s.nextStatus = time.Time{}
	s.report(true)
}

// report calls OnProgress with the stream's positions.
func (s *stream) report(durable bool) {
	if s.r.opts.OnProgress == nil {
		return
	}
	s.lastReport = time.Now()
	s.r.opts.OnProgress(Progress{
		Timeline:     s.tli,
		Received:     s.received(),
		Flushed:      s.flushed,
		LastSegment:  s.lastSegment,
		SegmentSize:  s.segSize,
		ServerWALEnd: max(s.serverEnd, s.received()),
		Durable:      durable,
	})
}

// archiveFailing records a storage error that ctx's end did not cause:
// then Run makes no final write, which would most likely fail again or, for
// a conflict, store yet another copy aside.
func (s *stream) archiveFailing(ctx context.Context) {
	if ctx.Err() == nil {
		s.archiveFailed = true
	}
}

func (s *stream) sendStatus(ctx context.Context) error {
	if err := sendStatus(ctx, s.conn, s.flushed); err != nil {
		return err
	}
	s.log.Trace("status sent", "flushed", s.flushed.String())
	s.nextStatus = time.Now().Add(s.r.opts.StatusInterval)
	return nil
}

// endTimeline stores the last segment of a timeline that the server ended
// as a .partial, where it stays: the next timeline's copy of that segment
// holds the same bytes up to the switch point, then the new timeline's.
func (s *stream) endTimeline(ctx context.Context) error {
	if !s.dirty {
		return nil
	}
	return s.flushPartial(ctx)
}

// switchTimeline moves to the next timeline after the server ended the
// current one at end.Start. The new timeline is streamed from the start of
// the segment holding the switch point, as pg_receivewal does, so that its
// first segment is archived whole.
func (s *stream) switchTimeline(ctx context.Context, end timelineEnd) error {
	received := s.received()
	if end.Next <= s.tli {
		return fmt.Errorf("server ended timeline %d and named timeline %d as the next one", s.tli, end.Next)
	}
	if received != end.Start {
		return fmt.Errorf("server ended timeline %d at %s, but the next timeline %d starts at %s", s.tli, received, end.Next, end.Start)
	}
	s.log.Info("timeline switch", "timeline", s.tli, "next_timeline", end.Next, "switch_point", end.Start.String())
	// The history goes before any segment of the new timeline: restore
	// needs it to know where to leave the old timeline.
	if err := s.storeHistory(ctx, end.Next); err != nil {
		return err
	}
	s.tli = end.Next
	s.seg = wal.SegmentOf(end.Start, s.segSize)
	s.resetSegment()
	// Nothing of the new timeline is archived yet; the bytes before the
	// switch point are, in the old timeline's objects, but report no more
	// than the segment start, which never lies.
	s.flushed = s.received()
	return nil
}

// storeHistory archives tli's history file (write-once; the same bytes
// again are success) unless tli is 1, which has none.
func (s *stream) storeHistory(ctx context.Context, tli wal.Timeline) error {
	if tli <= 1 || s.historyStored[tli] {
		return nil
	}
	data, err := timelineHistory(ctx, s.conn, tli)
	if err != nil {
		return err
	}
	name := s.r.historyObject(tli)
	existed, err := storage.PutOnce(ctx, s.r.opts.Backend, name, data)
	if err != nil {
		s.archiveFailing(ctx)
		return fmt.Errorf("archive history %s: %w", wal.HistoryFileName(tli), err)
	}
	if !existed {
		s.log.Info("history archived", "timeline", tli)
	}
	if s.historyStored == nil {
		s.historyStored = map[wal.Timeline]bool{}
	}
	s.historyStored[tli] = true
	return nil
}

// finish is Run's last step: write what was received and not yet archived,
// with a fresh, bounded context because ctx may have ended, and tell the
// server. Errors go to s.finishErr and are returned.
func (s *stream) finish(ctx context.Context) error {
	if s.buf == nil || s.archiveFailed {
		return nil
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlushTimeout)
	defer cancel()
	var err error
	switch {
	case uint64(len(s.buf)) == s.segSize:
		err = s.completeSegment(fctx)
	case s.dirty:
		err = s.flushPartial(fctx)
	}
	if err != nil {
		s.finishErr = fmt.Errorf("final write: %w", err)
		return s.finishErr
	}
	if s.streaming && !s.conn.IsClosed() {
		// Best effort: the connection may be what failed.
		_ = sendStatus(fctx, s.conn, s.flushed)
	}
	return nil
}
