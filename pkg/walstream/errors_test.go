package walstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func TestIsRetryable(t *testing.T) {
	pgErr := func(code string) error { return &pgconn.PgError{Severity: "FATAL", Code: code, Message: "m"} }
	gap := &GapError{Timeline: 1, From: 0x2000000, Segment: "000000010000000000000002", Err: pgErr("58P01")}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"gap", gap, false},
		{"wrapped gap", fmt.Errorf("stream: %w", gap), false},
		{"wal removed outside a stream", pgErr("58P01"), true},
		{"archive conflict", fmt.Errorf("archive segment: %w", &storage.ConflictError{Name: "a", AsideName: "b"}), false},
		{"no pg_hba entry", pgErr("28000"), false},
		{"wrong password", fmt.Errorf("connect: %w", pgErr("28P01")), false},
		{"no replication privilege", pgErr("42501"), false},
		{"admin shutdown", pgErr("57P01"), true},
		{"crash shutdown", pgErr("57P02"), true},
		{"cannot connect now", pgErr("57P03"), true},
		{"too many connections", pgErr("53300"), true},
		{"slot in use", pgErr("55006"), true},
		{"internal error", pgErr("XX000"), true},
		{"missing slot", fmt.Errorf("%w: s", ErrNoSlot), true},
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true},
		{"connection reset", fmt.Errorf("receive: %w", syscall.ECONNRESET), true},
		{"eof", io.ErrUnexpectedEOF, true},
		{"deadline", context.DeadlineExceeded, true},
		{"storage not found", storage.ErrNotExist, true},
		{"joined with a gap", errors.Join(errors.New("final write failed"), gap), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, IsRetryable(tc.err))
		})
	}
}

func TestGapError(t *testing.T) {
	cause := &pgconn.PgError{Code: "58P01", Message: "requested WAL segment 000000010000000000000002 has already been removed"}
	var err error = fmt.Errorf("run: %w", &GapError{Timeline: 1, From: wal.LSN(0x200000), Segment: "000000010000000000000002", Err: cause})
	var gap *GapError
	assert.ErrorAs(t, err, &gap)
	var pg *pgconn.PgError
	assert.ErrorAs(t, err, &pg, "the server's error stays reachable")
	assert.Contains(t, err.Error(), "0/200000")
	assert.Contains(t, err.Error(), "timeline 1")
}
