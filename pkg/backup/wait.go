package backup

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/basebackup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/wal"
	"github.com/barnacle-pg/barnacle/pkg/walstream"
)

// WaitArchived returns an Options.WaitWAL that waits until archived says
// the archive holds the WAL up to the stop position, as
// catalog.Position.Reached says. archived returns how far the archive holds
// WAL (zero while unknown) and an error once it will get no further (the
// WAL stream stopped); it is called every poll and whenever wake receives
// (wake may be nil). The WaitWAL returns ctx's error when ctx ends first.
func WaitArchived(archived func() (catalog.Position, error), wake <-chan struct{}, poll time.Duration) func(context.Context, basebackup.Position) error {
	return func(ctx context.Context, stop basebackup.Position) error {
		target := catalog.Position{Timeline: stop.Timeline, LSN: stop.LSN}
		t := time.NewTicker(poll)
		defer t.Stop()
		for {
			at, err := archived()
			if at.Reached(target) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("the WAL stream stopped before reaching %s: %w", stop.LSN, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-wake:
			case <-t.C:
			}
		}
	}
}

// TakeFrom opens a replication connection with connString, runs Take over
// it and closes it.
func TakeFrom(ctx context.Context, connString string, opts Options) (catalog.Backup, error) {
	conn, err := basebackup.Connect(ctx, connString)
	if err != nil {
		return catalog.Backup{}, fmt.Errorf("connect to %s for the base backup: %w", opts.Host, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return Take(ctx, conn, opts)
}

// TakeStreaming takes a base backup as pg_basebackup -X stream does: a
// walstream receiver made from stream archives the server's WAL while
// Take runs over a second replication connection (connString), and the
// backup is done once the receiver has archived the WAL up to its stop
// position (opts.WaitWAL is set to that). BASE_BACKUP starts only once the
// receiver holds its slot: a slot that another process uses (another
// backup, an agent) then fails the backup before anything is copied.
// TakeStreaming sets stream.OnStreaming and stream.OnProgress, and stops
// the receiver and waits for it before it returns.
func TakeStreaming(ctx context.Context, connString string, stream walstream.Options, opts Options) (catalog.Backup, error) {
	var (
		mu      sync.Mutex
		flushed wal.LSN
		tli     wal.Timeline
	)
	advanced := make(chan struct{}, 1)
	streaming := make(chan struct{}, 1)
	stream.OnStreaming = func() {
		select {
		case streaming <- struct{}{}:
		default:
		}
	}
	stream.OnProgress = func(p walstream.Progress) {
		mu.Lock()
		flushed, tli = p.Flushed, p.Timeline
		mu.Unlock()
		select {
		case advanced <- struct{}{}:
		default:
		}
	}
	r, err := walstream.New(stream)
	if err != nil {
		return catalog.Backup{}, err
	}
	rctx, stopReceiver := context.WithCancel(ctx)
	defer stopReceiver()
	recvDone := make(chan error, 1)
	go func() { recvDone <- r.Run(rctx) }()
	var (
		recvErr     error
		recvStopped bool
	)
	// stopped reports the receiver's end without waiting for it. Not
	// safe for concurrent use: Take calls WaitWAL before it returns, and
	// the deferred stop runs after.
	stopped := func() (bool, error) {
		if !recvStopped {
			select {
			case recvErr = <-recvDone:
				recvStopped = true
			default:
			}
		}
		return recvStopped, recvErr
	}
	defer func() {
		stopReceiver()
		if !recvStopped {
			<-recvDone
		}
	}()

	select {
	case <-streaming:
	case recvErr = <-recvDone:
		recvStopped = true
		err := recvErr
		if err == nil {
			err = ctx.Err()
		}
		return catalog.Backup{}, fmt.Errorf("stream WAL through replication slot %s (nothing copied): %w", stream.Slot, err)
	case <-ctx.Done():
		return catalog.Backup{}, ctx.Err()
	}

	opts.WaitWAL = WaitArchived(func() (catalog.Position, error) {
		mu.Lock()
		at := catalog.Position{Timeline: tli, LSN: flushed}
		mu.Unlock()
		if done, err := stopped(); done {
			if err == nil {
				err = context.Canceled
			}
			return at, err
		}
		return at, nil
	}, advanced, 500*time.Millisecond)
	return TakeFrom(ctx, connString, opts)
}
