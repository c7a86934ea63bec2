package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/config"
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

// localAddress is where this agent's own PostgreSQL listens: pg-host and
// pg-port when set, else its keeper's DB address in clusterdata.
func localAddress(cfg config.Config, st coordinator.State) (string, int, error) {
	host, port := cfg.PGHost, cfg.PGPort
	if host == "" || port == 0 {
		if st.ClusterData == nil {
			return "", 0, errors.New("clusterdata not read yet")
		}
		db, ok := st.ClusterData.DBForKeeper(cfg.KeeperUID)
		if !ok {
			return "", 0, fmt.Errorf("clusterdata has no DB for keeper %s", cfg.KeeperUID)
		}
		h, p, err := db.Addr()
		if err != nil {
			return "", 0, err
		}
		if host == "" {
			host = h
		}
		if port == 0 {
			port = p
		}
	}
	return host, port, nil
}

// masterAddress is where the master listens: its address in clusterdata,
// or, when it is this agent's own PostgreSQL, pg-host/pg-port where set.
func masterAddress(cfg config.Config, st coordinator.State) (string, int) {
	host, port := st.Master.Host, st.Master.Port
	if st.MineIsMaster && cfg.PGHost != "" {
		host = cfg.PGHost
	}
	if st.MineIsMaster && cfg.PGPort != 0 {
		port = cfg.PGPort
	}
	return host, port
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
