// Package drill proves that the archive restores: it restores the newest
// backup and all archived WAL into a scratch directory below restore-root,
// starts PostgreSQL on it (a free local port, no TCP listener from outside,
// small memory, no archiving), waits until it has replayed to the end and
// promoted, checks it (pg_amcheck on the catalogs and a bounded sample; the
// LSN the archive promised is reached), stops it and removes the directory,
// always.
//
// SKELETON (drill-base branch): the drill-core helper implements Run and
// may add options; the drill-surface helper builds on these names.
package drill

import (
	"context"

	"github.com/hashicorp/go-hclog"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/restore"
	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// Options configures Run.
type Options struct {
	ID      string // the drill's ID: the request ID, or a new one
	Node    string // recorded as catalog.Drill.Node
	Backend storage.Backend
	Cluster string
	// ArchiveURL and Executable make the restored server's restore_command
	// (restore.WALFetchCommand).
	ArchiveURL string
	Executable string
	// ScratchRoot is restore-root: the drill works in a new directory
	// below it, removed when Run returns.
	ScratchRoot string
	PGBinDir    string
	Owner       *restore.Owner // the OS user the server runs as, when root
	Logger      hclog.Logger
}

// Run runs one drill and records it in the archive (catalog.WriteDrill)
// whether it succeeds or fails; the returned record is the one written.
// A drill that could not start (no backup, no space) is a failed record too.
func Run(ctx context.Context, opts Options) (catalog.Drill, error) {
	panic("drill.Run: skeleton")
}
