package basebackup

import (
	"bufio"
	"context"
	"io"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// readBufferSize is how much of the socket a connection made by Connect
// reads at once. pgx reads through an 8 KiB buffer, sized after what a
// server sends per message in ordinary queries; a backup stream arrives as
// fast as the walsender can read files, and with 8 KiB reads a 1.6 GB
// backup took 210,000 read(2) calls, over a quarter of the client's CPU
// on a cluster of 120,000 small files (issue 21). With 256 KiB reads it takes
// a few thousand; the bytes are then copied once more, from this buffer
// into pgx's, which costs far less than the calls.
const readBufferSize = 256 << 10

// Connect opens a connection for Run from connString (which must ask for
// replication=true), reading the socket through a buffer of
// readBufferSize.
func Connect(ctx context.Context, connString string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	return connectConfig(ctx, cfg)
}

func connectConfig(ctx context.Context, cfg *pgconn.Config) (*pgconn.PgConn, error) {
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		return pgproto3.NewFrontend(bufio.NewReaderSize(r, readBufferSize), w)
	}
	return pgconn.ConnectConfig(ctx, cfg)
}
