package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"

	"github.com/barnacle-pg/barnacle/coordinator"
	"github.com/barnacle-pg/barnacle/pkg/stolon"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// standbySlotInterval is how often a follower advances its standby's slot.
// The slot holds back WAL removal on the standby only; advancing it late
// costs disk space, never data.
const standbySlotInterval = 2 * time.Second

// standbySlot keeps a slot on this follower's standby (DESIGN.md §1),
// created with reserved WAL and advanced to the position the leader has
// archived, never past it. When the standby is promoted, the slot still
// holds every WAL byte the archive lacks, so the new leader resumes from
// the archive's end without a gap.
//
// PostgreSQL 15 allows this on a standby: pg_create_physical_replication_slot
// with immediately_reserve reserves from the replay position, restartpoints
// keep the WAL a slot needs, and pg_replication_slot_advance moves a physical
// slot up to the replay position.
type standbySlot struct {
	opts    standbySlotOptions
	log     hclog.Logger
	coord   *coordinator.Coordinator
	metrics *archiverMetrics
	local   *localPostgres
}

// standbySlotOptions is what the standby slot keeper takes from the
// configuration (all fixed keys: none of them reloads). The connection
// settings (pg-*) reach it through its localPostgres.
type standbySlotOptions struct {
	// Enabled is standby-slots.
	Enabled bool
	// KeeperUID is the keeper beside this agent; "" for none.
	KeeperUID string
	// Slot is the slot on standbys: slot-name. With slot-mode stolon it
	// is slot-name without Stolon's prefix: the keeper drops every
	// stolon_ slot on a standby.
	Slot string
}

func (s *standbySlot) name() string { return s.opts.Slot }

func (s *standbySlot) run(ctx context.Context) error {
	if !s.opts.Enabled || s.opts.KeeperUID == "" {
		return nil
	}
	defer s.local.close()
	tk := time.NewTicker(standbySlotInterval)
	defer tk.Stop()
	for {
		if err := s.step(ctx); err != nil && ctx.Err() == nil {
			s.metrics.standbySlotError.Inc()
			s.log.Warn("keeping the standby slot failed; retrying", "slot", s.name(), "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
		}
	}
}

func (s *standbySlot) step(ctx context.Context) error {
	st := s.coord.State()
	if st.Leading || st.ClusterData == nil {
		return nil
	}
	db, ok := st.ClusterData.DBForKeeper(s.opts.KeeperUID)
	if !ok || db.Spec.Role != stolon.RoleStandby {
		return nil
	}
	leader, ok := st.Agents[st.Leader]
	if !ok || leader.ArchivedLSN == wal.InvalidLSN {
		return nil // nobody archives yet: keep what the slot holds
	}
	archived := leader.ArchivedLSN
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := s.local.connection(cctx, st)
	if err != nil {
		return err
	}
	restart, err := s.ensure(cctx, conn)
	if err != nil {
		s.local.close()
		return err
	}
	if archived <= restart {
		return nil
	}
	var moved *string
	// Advance no further than replay: the slot cannot point at WAL the
	// standby has not replayed yet.
	err = conn.QueryRow(cctx, `select end_lsn::text from pg_replication_slot_advance($1,
		least($2::pg_lsn, pg_last_wal_replay_lsn()))`, s.name(), archived.String()).Scan(&moved)
	if err != nil {
		s.local.close()
		return fmt.Errorf("advance slot %s to %s: %w", s.name(), archived, err)
	}
	if moved != nil {
		if lsn, err := wal.ParseLSN(*moved); err == nil {
			s.metrics.standbySlotLSN.Set(float64(lsn))
			s.log.Trace("standby slot advanced", "slot", s.name(), "to", lsn.String())
		}
	}
	return nil
}

// ensure creates the slot with reserved WAL when it is missing and returns
// its restart_lsn.
func (s *standbySlot) ensure(ctx context.Context, conn *pgx.Conn) (wal.LSN, error) {
	var restart *string
	err := conn.QueryRow(ctx, `select restart_lsn::text from pg_replication_slots where slot_name = $1`, s.name()).Scan(&restart)
	if errors.Is(err, pgx.ErrNoRows) {
		err = conn.QueryRow(ctx, `select lsn::text from pg_create_physical_replication_slot($1, true)`, s.name()).Scan(&restart)
		if err != nil {
			return 0, fmt.Errorf("create slot %s on the standby: %w", s.name(), err)
		}
		s.log.Info("standby slot created", "slot", s.name(), "restart_lsn", deref(restart))
	} else if err != nil {
		return 0, fmt.Errorf("read slot %s: %w", s.name(), err)
	}
	if restart == nil {
		return 0, nil
	}
	lsn, err := wal.ParseLSN(*restart)
	if err != nil {
		return 0, err
	}
	s.metrics.standbySlotLSN.Set(float64(lsn))
	return lsn, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
