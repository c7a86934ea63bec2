package walstream

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// SQLSTATE codes the receiver acts on
// (https://www.postgresql.org/docs/15/errcodes-appendix.html).
const (
	// sqlstateUndefinedFile is what the walsender reports when the WAL it
	// must send is gone: "requested WAL segment %s has already been
	// removed" (errcode_for_file_access on ENOENT).
	sqlstateUndefinedFile = "58P01"
	// sqlstateInsufficientPrivilege is also "must be superuser or
	// replication role to start walsender".
	sqlstateInsufficientPrivilege = "42501"
	// sqlstateClassInvalidAuthorization covers pg_hba rejections (28000)
	// and wrong passwords (28P01).
	sqlstateClassInvalidAuthorization = "28"
	// sqlstateDuplicateObject answers CREATE_REPLICATION_SLOT for a slot
	// that exists.
	sqlstateDuplicateObject = "42710"
)

// ErrNoSlot means Options.Slot does not exist on the server and
// Options.CreateSlot is off. It is retryable: the slot may be created by
// someone else (an agent creates it on a new master after a failover).
var ErrNoSlot = errors.New("walstream: replication slot does not exist")

// GapError reports that WAL the archive needs has been removed from the
// server (SQLSTATE 58P01, "requested WAL segment ... has already been
// removed"), so the archive cannot be continued without a hole. Everything
// from From on Timeline up to whatever the server still holds is missing;
// the receiver does not skip ahead by itself. The caller records the gap and
// starts a new base backup. Run returns it as is, so errors.As works.
type GapError struct {
	// Timeline is the timeline that was being streamed.
	Timeline wal.Timeline
	// From is the first byte the archive lacks: the position streaming
	// started or had reached.
	From wal.LSN
	// Segment is the name of the segment that holds From.
	Segment string
	// Err is the server's error (a *pgconn.PgError).
	Err error
}

// Error names the timeline, position and segment that are missing.
func (e *GapError) Error() string {
	return fmt.Sprintf("walstream: wal gap on timeline %d from %s (segment %s): the server no longer has it: %v",
		e.Timeline, e.From, e.Segment, e.Err)
}

// Unwrap returns the server's error.
func (e *GapError) Unwrap() error { return e.Err }

// IsRetryable reports whether running the receiver again later can succeed
// without an operator: network errors, server shutdowns and restarts, a
// slot in use by another connection and other transient failures are
// retryable. Not retryable are a *GapError (the WAL is gone for good),
// authentication and permission errors (SQLSTATE class 28, 42501, a role
// without REPLICATION) and storage.ErrConflict (the archive holds other
// bytes under a segment's name). Errors it does not know are retryable: the
// caller backs off and alarms on repeated failure rather than stopping the
// archive on a surprise. nil is not retryable (there is nothing to retry).
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	var gap *GapError
	if errors.As(err, &gap) {
		return false
	}
	if errors.Is(err, storage.ErrConflict) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, sqlstateClassInvalidAuthorization):
			return false
		case pgErr.Code == sqlstateInsufficientPrivilege:
			return false
		}
	}
	return true
}

// isWALRemoved reports whether err is the walsender's "requested WAL
// segment has already been removed". Only meaningful for errors that come
// from START_REPLICATION and the stream that follows it.
func isWALRemoved(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == sqlstateUndefinedFile
}
