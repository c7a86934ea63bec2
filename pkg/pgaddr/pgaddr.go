// Package pgaddr is where barnacle finds PostgreSQL: the one rule for
// "where is the master" and "where is my PostgreSQL", used by the agent
// (streaming, backups, the standby slot), `barnacle status`, `barnacle
// check` and `barnacle backup --local`. It is pure: the caller brings the
// configuration and what clusterdata says.
//
// The rule: pg-host and pg-port name the PostgreSQL of this process's
// keeper (keeper-uid). For a process without a keeper-uid (a command run
// from an operator's shell) they name the master instead. An agent with
// keeper-uid auto that serves no keeper is neither: it has a keeper-uid,
// only no keeper found, and its pg-host and pg-port name nothing
// (ForKeeper), never the master. Each of the two
// overrides on its own; what they leave unset comes from clusterdata, and
// where no clusterdata is read (backup --local) the port is libpq's
// default, 5432.
//
// Other modules may import this package, but its API is not stable.
package pgaddr

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/barnacle-pg/barnacle/pkg/config"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
)

// DefaultPort is libpq's default port, used when neither pg-port nor
// clusterdata gives one.
const DefaultPort = 5432

// Address is where a PostgreSQL server listens.
type Address struct {
	Host string
	Port int
}

// String returns host:port, with an IPv6 host in brackets.
func (a Address) String() string { return net.JoinHostPort(a.Host, strconv.Itoa(a.Port)) }

// override returns a with pg-host and pg-port put in where set.
func override(cfg config.Config, a Address) Address {
	if cfg.PGHost != "" {
		a.Host = cfg.PGHost
	}
	if cfg.PGPort != 0 {
		a.Port = cfg.PGPort
	}
	return a
}

// ForKeeper returns cfg for an agent that serves keeper uid, the choice
// of keeper-uid auto ("" when it found none). With none, pg-host and
// pg-port are cleared: they name the PostgreSQL beside this agent's
// keeper, and there is none, so they must not be read as the master's
// address, which is what they mean without a keeper-uid. The agent then
// works over the network, as a takeover candidate, with the master's
// address from clusterdata, and Local reports that no local PostgreSQL is
// known.
func ForKeeper(cfg config.Config, uid string) config.Config {
	cfg.KeeperUID = uid
	if uid == "" {
		cfg.PGHost, cfg.PGPort = "", 0
	}
	return cfg
}

// Master returns where the master's PostgreSQL listens. m is the master
// clusterdata names, nil when it is unknown (etcd unreachable, clusterdata
// unreadable, no master elected). pg-host and pg-port override the address
// in clusterdata when the master is this process's keeper, or when the
// process has no keeper-uid. Without m the master is known only from
// pg-host (with pg-port or 5432), and only without a keeper-uid; otherwise
// Master fails.
func Master(cfg config.Config, m *stolon.Master) (Address, error) {
	overrides := cfg.KeeperUID == "" || (m != nil && m.KeeperUID == cfg.KeeperUID)
	switch {
	case m != nil && overrides:
		return override(cfg, Address{Host: m.Host, Port: m.Port}), nil
	case m != nil:
		return Address{Host: m.Host, Port: m.Port}, nil
	case cfg.KeeperUID == "" && cfg.PGHost != "":
		return override(cfg, Address{Port: DefaultPort}), nil
	}
	return Address{}, errors.New("the master's address is unknown: clusterdata names no master")
}

// Local returns where the PostgreSQL beside this process listens: pg-host
// and pg-port where set; what they leave unset is the address clusterdata
// gives the DB of keeper-uid. cd is nil when the caller reads no
// clusterdata (backup --local) or has not read it yet; then pg-host is
// needed and the port defaults to 5432. Local fails when keeper-uid has no
// DB in cd or its address there is unusable.
func Local(cfg config.Config, cd *stolon.ClusterData) (Address, error) {
	a := Address{Host: cfg.PGHost, Port: cfg.PGPort}
	if a.Host != "" && a.Port != 0 {
		return a, nil
	}
	if cd != nil && cfg.KeeperUID != "" {
		db, ok := cd.DBForKeeper(cfg.KeeperUID)
		if !ok {
			return Address{}, fmt.Errorf("clusterdata has no DB for keeper %s", cfg.KeeperUID)
		}
		host, port, err := db.Addr()
		if err != nil {
			return Address{}, err
		}
		return override(cfg, Address{Host: host, Port: port}), nil
	}
	switch {
	case a.Host == "" && cfg.KeeperUID != "":
		return Address{}, fmt.Errorf("the address of keeper %s's PostgreSQL is unknown: clusterdata not read yet (or set pg-host and pg-port)", cfg.KeeperUID)
	case a.Host == "":
		return Address{}, errors.New("the address of the local PostgreSQL is unknown: set pg-host (and pg-port), or keeper-uid")
	case a.Port == 0:
		a.Port = DefaultPort
	}
	return a, nil
}
