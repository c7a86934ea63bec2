package testenv

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// LoadOptions configures StartLoad.
type LoadOptions struct {
	// Interval is the pause between two inserts; default 10ms, negative
	// means none.
	Interval time.Duration
	// Table is created if missing; default "barnacle_load".
	Table string
}

// Load is a write load on one node: a goroutine owned by the test that
// inserts 1, 2, 3, ... into Table(id bigserial, v int, at timestamptz), one
// transaction per row.
type Load struct {
	node  *Node
	table string
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once

	// Written by the goroutine, read after done is closed.
	rows int64
	last int64
	err  error
}

// StartLoad creates the table on node (failing the test if it cannot) and
// starts inserting until Stop, which t.Cleanup also calls. The goroutine
// never fails the test: when the node goes away it stops counting and Stop
// returns the error.
func StartLoad(t testing.TB, node *Node, opts LoadOptions) *Load {
	t.Helper()
	if opts.Table == "" {
		opts.Table = "barnacle_load"
	}
	if opts.Interval == 0 {
		opts.Interval = 10 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	table := pgx.Identifier{opts.Table}.Sanitize()
	if err := node.Exec(ctx, fmt.Sprintf(
		"CREATE TABLE IF NOT EXISTS %s (id bigserial PRIMARY KEY, v int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
		table)); err != nil {
		t.Fatalf("create load table: %v", err)
	}
	conn, err := node.Connect(ctx)
	if err != nil {
		t.Fatalf("start load: %v", err)
	}
	l := &Load{node: node, table: opts.Table, stop: make(chan struct{}), done: make(chan struct{})}
	go l.run(conn, "INSERT INTO "+table+" (v) VALUES ($1)", opts.Interval)
	t.Cleanup(func() { _, _, _ = l.Stop() })
	return l
}

func (l *Load) run(conn *pgx.Conn, insert string, interval time.Duration) {
	defer close(l.done)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	}()
	for v := int64(1); ; v++ {
		select {
		case <-l.stop:
			return
		default:
		}
		// Not cancelled by Stop: a cancelled insert might commit without
		// being acknowledged, and the count would be wrong.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := conn.Exec(ctx, insert, v)
		cancel()
		if err != nil {
			l.err = fmt.Errorf("load on %s: insert %d: %w", l.node.Name, v, err)
			return
		}
		l.rows++
		l.last = v
		if interval > 0 {
			select {
			case <-l.stop:
				return
			case <-time.After(interval):
			}
		}
	}
}

// Done is closed when the load ended: after Stop, or by itself when an
// insert failed.
func (l *Load) Done() <-chan struct{} { return l.done }

// Table returns the table the load writes to.
func (l *Load) Table() string { return l.table }

// Stop stops the load and waits for the goroutine. rows is the number of
// inserts PostgreSQL acknowledged (committed) and last the last value
// acknowledged (rows == last). err is non-nil when the load ended early
// because an insert failed, e.g. the node went away; that insert is not
// counted, and it may or may not have committed.
func (l *Load) Stop() (rows, last int64, err error) {
	l.once.Do(func() { close(l.stop) })
	<-l.done
	return l.rows, l.last, l.err
}
