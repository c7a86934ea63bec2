package walstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// skipGap handles "requested WAL segment has already been removed" at
// start: it finds the oldest segment the server still has, asks OnGap to
// record the hole, and moves the in-memory position there. A .partial at
// the old position stays in the archive as the last WAL before the gap.
func (s *stream) skipGap(ctx context.Context, from wal.LSN, cause error) error {
	gapErr := &GapError{
		Timeline: s.tli,
		From:     from,
		Segment:  wal.SegmentFileName(s.tli, wal.SegmentOf(from, s.segSize), s.segSize),
		Err:      cause,
	}
	resumeTLI := s.sys.Timeline
	lo := wal.SegmentOf(from, s.segSize) + 1
	if s.tli != resumeTLI {
		// The archive ends on an older timeline: look for the oldest WAL
		// on the server's own timeline, which starts at its switch point.
		data, err := timelineHistory(ctx, s.conn, resumeTLI)
		if err != nil {
			return errors.Join(gapErr, err)
		}
		hist, err := wal.ParseHistory(data)
		if err != nil {
			return errors.Join(gapErr, fmt.Errorf("timeline history %d: %w", resumeTLI, err))
		}
		if n := len(hist); n > 0 {
			lo = max(lo, wal.SegmentOf(hist[n-1].SwitchPoint, s.segSize))
		}
	}
	hi := wal.SegmentOf(s.sys.XLogPos, s.segSize)
	oldest, err := s.oldestAvailable(ctx, resumeTLI, lo, hi)
	if err != nil {
		return errors.Join(gapErr, err)
	}
	gap := Gap{Timeline: s.tli, From: from, ResumeTimeline: resumeTLI, ResumeAt: wal.SegmentStart(oldest, s.segSize), Err: cause}
	if err := s.r.opts.OnGap(ctx, gap); err != nil {
		return errors.Join(gapErr, fmt.Errorf("record gap: %w", err))
	}
	s.log.Warn("wal gap recorded; streaming continues after it",
		"timeline", gap.Timeline, "from", gap.From.String(), "resume_timeline", gap.ResumeTimeline, "resume_at", gap.ResumeAt.String())
	s.tli, s.seg = resumeTLI, oldest
	s.resetSegment()
	s.flushed = s.received()
	return nil
}

// oldestAvailable finds, by binary search over [lo, hi], the oldest
// segment of tli the server can still stream. The server removes WAL
// oldest first, so what it has is a contiguous range ending at hi, its
// current segment. Each probe is a START_REPLICATION that either fails
// with "already removed" or starts a stream, which is stopped at once.
func (s *stream) oldestAvailable(ctx context.Context, tli wal.Timeline, lo, hi wal.SegmentNo) (wal.SegmentNo, error) {
	if lo > hi {
		return hi, nil
	}
	for lo < hi {
		mid := lo + (hi-lo)/2
		ok, err := s.probe(ctx, tli, mid)
		if err != nil {
			return 0, err
		}
		if ok {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}

// probe reports whether the server can stream tli from the start of seg.
func (s *stream) probe(ctx context.Context, tli wal.Timeline, seg wal.SegmentNo) (bool, error) {
	start := wal.SegmentStart(seg, s.segSize)
	end, err := s.startReplication(ctx, start, tli)
	switch {
	case err != nil && isWALRemoved(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("probe %s on timeline %d: %w", start, tli, err)
	case end != nil:
		// tli ends exactly here; the WAL is there to be had.
		return true, nil
	}
	// The WAL may be removed only once the walsender opens the file, which
	// it reports as an error in the stream; read until we know.
	return s.stopProbe(ctx)
}

// probeWait is how long a probe waits for the first WAL message. A
// walsender that has nothing to send from that position (it is the end of
// WAL) sends nothing, which also proves the position is available.
const probeWait = 3 * time.Second

// stopProbe ends a probe's COPY stream: the first WAL message, or silence,
// proves the segment is there; an error in the stream says whether it is
// removed.
func (s *stream) stopProbe(ctx context.Context) (bool, error) {
	available := false
	sentDone := false
	stop := func() error {
		available = true
		if sentDone {
			return nil
		}
		sentDone = true
		s.conn.Frontend().Send(&pgproto3.CopyDone{})
		if err := s.conn.Frontend().Flush(); err != nil {
			return fmt.Errorf("probe: send copy done: %w", err)
		}
		return nil
	}
	deadline := time.Now().Add(probeWait)
	for {
		rctx, cancel := context.WithDeadline(ctx, deadline)
		msg, err := s.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && pgconn.Timeout(err) && !sentDone {
				if err := stop(); err != nil {
					return false, err
				}
				deadline = time.Now().Add(time.Minute)
				continue
			}
			return false, fmt.Errorf("probe: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) > 0 && msg.Data[0] == pglogrepl.XLogDataByteID {
				if err := stop(); err != nil {
					return false, err
				}
			}
		case *pgproto3.ErrorResponse:
			pgErr := pgconn.ErrorResponseToPgError(msg)
			if isWALRemoved(pgErr) {
				// Drain to ReadyForQuery; the connection stays usable.
				if _, _, err := readUntilReady(ctx, s.conn, false); err != nil {
					return false, fmt.Errorf("probe: %w", err)
				}
				return false, nil
			}
			return false, fmt.Errorf("probe: %w", pgErr)
		case *pgproto3.ReadyForQuery:
			return available, nil
		case *pgproto3.CopyDone, *pgproto3.CommandComplete, *pgproto3.DataRow, *pgproto3.RowDescription,
			*pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return false, fmt.Errorf("probe: unexpected message %T", msg)
		}
	}
}
