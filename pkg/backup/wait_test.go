package backup

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/basebackup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func TestWaitArchived(t *testing.T) {
	stop := basebackup.Position{Timeline: 1, LSN: 0x3000100}
	var (
		mu  sync.Mutex
		tli wal.Timeline = 1
		lsn wal.LSN
		err error
	)
	archived := func() (catalog.Position, error) {
		mu.Lock()
		defer mu.Unlock()
		return catalog.Position{Timeline: tli, LSN: lsn}, err
	}
	set := func(l wal.LSN, e error) {
		mu.Lock()
		tli, lsn, err = 1, l, e
		mu.Unlock()
	}

	t.Run("woken when the archive reaches stop", func(t *testing.T) {
		set(0x2000000, nil)
		wake := make(chan struct{}, 1) // as TakeStreaming's: a wake never blocks its sender
		done := make(chan error, 1)
		// An hour's poll: only wake can end the wait in time.
		go func() { done <- WaitArchived(archived, wake, time.Hour)(t.Context(), stop) }()
		set(0x3000100, nil)
		wake <- struct{}{}
		require.NoError(t, <-done)
	})
	t.Run("polled without wake", func(t *testing.T) {
		set(0x2000000, nil)
		done := make(chan error, 1)
		go func() { done <- WaitArchived(archived, nil, time.Millisecond)(t.Context(), stop) }()
		set(0x3000200, nil)
		require.NoError(t, <-done)
	})
	t.Run("a later timeline counts", func(t *testing.T) {
		set(0x2000000, errors.New("stream ended"))
		mu.Lock()
		tli, lsn = 2, 0x1000000 // past stop's timeline, whose WAL it archived to the switch
		mu.Unlock()
		require.NoError(t, WaitArchived(archived, nil, time.Hour)(t.Context(), stop))
	})
	t.Run("reached wins over a stopped stream", func(t *testing.T) {
		set(0x3000100, errors.New("stream ended"))
		require.NoError(t, WaitArchived(archived, nil, time.Hour)(t.Context(), stop))
	})
	t.Run("stream stopped short", func(t *testing.T) {
		boom := errors.New("slot in use")
		set(0x2000000, boom)
		err := WaitArchived(archived, nil, time.Hour)(t.Context(), stop)
		require.ErrorIs(t, err, boom)
		assert.ErrorContains(t, err, "the WAL stream stopped before reaching 0/3000100")
	})
	t.Run("context ends", func(t *testing.T) {
		set(0x2000000, nil)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		require.ErrorIs(t, WaitArchived(archived, nil, time.Hour)(ctx, stop), context.Canceled)
	})
}
