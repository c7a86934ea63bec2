package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/pgaddr"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
)

// localPostgres is a connection to the PostgreSQL beside this agent. It
// reconnects when the address changes or the connection breaks. Each user
// (the role loop, the standby slot keeper) has its own, so it needs no
// lock.
type localPostgres struct {
	cfg  config.Config
	conn *pgx.Conn
	addr string
}

// localAddress is where this agent's own PostgreSQL listens, by the rule
// of package pgaddr.
func localAddress(cfg config.Config, st coordinator.State) (string, int, error) {
	a, err := pgaddr.Local(cfg, st.ClusterData)
	return a.Host, a.Port, err
}

// masterAddress is where the master listens, by the rule of package
// pgaddr. Callers check st.HasMaster first.
func masterAddress(cfg config.Config, st coordinator.State) (string, int) {
	var m *stolon.Master
	if st.HasMaster {
		m = &st.Master
	}
	a, _ := pgaddr.Master(cfg, m) // fails only without a master
	return a.Host, a.Port
}

// connection returns the open connection to the local PostgreSQL,
// (re)connecting when there is none or its address changed.
func (l *localPostgres) connection(ctx context.Context, st coordinator.State) (*pgx.Conn, error) {
	host, port, err := localAddress(l.cfg, st)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("%s:%d", host, port)
	if l.conn != nil && (l.addr != addr || l.conn.IsClosed()) {
		l.close()
	}
	if l.conn == nil {
		conn, err := connect(ctx, l.cfg, host, port)
		if err != nil {
			return nil, err
		}
		l.conn, l.addr = conn, addr
	}
	return l.conn, nil
}

func (l *localPostgres) isPrimary(ctx context.Context, st coordinator.State) (bool, error) {
	conn, err := l.connection(ctx, st)
	if err != nil {
		return false, err
	}
	var inRecovery bool
	if err := conn.QueryRow(ctx, "select pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		l.close()
		return false, fmt.Errorf("ask %s whether it is in recovery: %w", l.addr, err)
	}
	return !inRecovery, nil
}

func (l *localPostgres) close() {
	if l.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = l.conn.Close(ctx)
		l.conn = nil
	}
}

// connect opens a connection as pg-user to pg-dbname (see
// config.PGConnString for where the password comes from).
func connect(ctx context.Context, cfg config.Config, host string, port int) (*pgx.Conn, error) {
	cs, err := cfg.PGConnString(host, port, false)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, cs)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres at %s:%d as %s: %w", host, port, cfg.PGUser, err)
	}
	return conn, nil
}
