// Package catalog knows what an archive holds and where (DESIGN.md §2): the
// archive's identity, the WAL prefix, the recorded WAL gaps, and the base
// backup documents (IDs, status, keep, deletion, the WAL each backup
// needs). All I/O goes through storage.Backend.
//
// It is the one reader of the archive: ReadArchive reads a cluster's
// catalog at once; WALIndex (walindex.go) interprets a listing of the WAL
// prefix, and is the one place that says when a .partial counts as
// recoverable (served by wal-fetch, a hole, or the end of a backup's WAL);
// RecoverableWindows says what recovery can reach; CheckBackupWAL what a
// backup needs; OpenSegment reads an archived segment verified;
// Position.Reached says whether the archive has reached a timeline and
// LSN. Restore, status, check, retention, wal-fetch and the receiver ask
// here instead of reading the listing themselves.
//
// Other modules may import this package, but its API is not stable.
package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// FormatVersion is the archive layout version this barnacle writes and
// reads.
const FormatVersion = 1

// ErrIdentityMismatch is matched (errors.Is) by *IdentityMismatchError.
var ErrIdentityMismatch = errors.New("catalog: archive belongs to another database")

// Identity is <cluster>/archive.json: which PostgreSQL cluster an archive
// belongs to. WAL of two clusters must never mix: a restore would replay
// one cluster's WAL on the other's base backup.
type Identity struct {
	FormatVersion  int       `json:"formatVersion"`
	Cluster        string    `json:"cluster"`
	SystemID       string    `json:"systemIdentifier"`
	WALSegmentSize uint64    `json:"walSegmentSize"`
	CreatedAt      time.Time `json:"createdAt"`
}

// IdentityMismatchError says which identity field of the archive differs
// from the server's, and what to do about it.
type IdentityMismatchError struct {
	Object, Field, Archive, Server string
}

func (e *IdentityMismatchError) Error() string {
	return fmt.Sprintf("archive %s has %s %s but the server has %s: this archive belongs to another database; "+
		"use another archive-url or cluster-name (a re-initialized Stolon cluster gets a new system identifier)",
		e.Object, e.Field, e.Archive, e.Server)
}

// Is makes errors.Is(err, ErrIdentityMismatch) true.
func (e *IdentityMismatchError) Is(target error) bool { return target == ErrIdentityMismatch }

// IdentityObject is the name of the cluster's identity file.
func IdentityObject(cluster string) string { return cluster + "/archive.json" }

// WALPrefix is the prefix of the cluster's WAL objects (segments, .partial
// and .history files).
func WALPrefix(cluster string) string { return cluster + "/wals/" }

// GapsObject is the name of the cluster's WAL gap record.
func GapsObject(cluster string) string { return cluster + "/gaps.json" }

// EnsureIdentity makes sure the archive belongs to the server described by
// want: it writes archive.json when there is none (write-if-absent, so two
// agents racing agree on one), and otherwise compares format version,
// system identifier and segment size, returning an
// *IdentityMismatchError on a difference. It returns the stored identity.
func EnsureIdentity(ctx context.Context, b storage.Backend, want Identity) (Identity, error) {
	if want.Cluster == "" || want.SystemID == "" {
		return Identity{}, errors.New("catalog: identity needs the cluster name and system identifier")
	}
	if err := wal.ValidSegmentSize(want.WALSegmentSize); err != nil {
		return Identity{}, fmt.Errorf("catalog: %w", err)
	}
	want.FormatVersion = FormatVersion
	if want.CreatedAt.IsZero() {
		want.CreatedAt = time.Now().UTC()
	}
	name := IdentityObject(want.Cluster)
	data, err := json.MarshalIndent(want, "", "  ")
	if err != nil {
		return Identity{}, err
	}
	err = b.Put(ctx, name, bytes.NewReader(append(data, '\n')), storage.PutOptions{IfAbsent: true})
	if err == nil {
		return want, nil
	}
	if !errors.Is(err, storage.ErrExist) {
		return Identity{}, fmt.Errorf("write %s: %w", name, err)
	}
	have, err := ReadIdentity(ctx, b, want.Cluster)
	if err != nil {
		return Identity{}, err
	}
	obj := b.URL() + "/" + name
	switch {
	case have.FormatVersion != FormatVersion:
		return have, fmt.Errorf("archive %s has format version %d; this barnacle understands %d: use a barnacle release that matches the archive",
			obj, have.FormatVersion, FormatVersion)
	case have.SystemID != want.SystemID:
		return have, &IdentityMismatchError{Object: obj, Field: "system identifier", Archive: have.SystemID, Server: want.SystemID}
	case have.WALSegmentSize != want.WALSegmentSize:
		return have, &IdentityMismatchError{Object: obj, Field: "WAL segment size",
			Archive: fmt.Sprint(have.WALSegmentSize), Server: fmt.Sprint(want.WALSegmentSize)}
	}
	return have, nil
}

// ReadIdentity reads and checks archive.json. A missing file is an error
// wrapping storage.ErrNotExist.
func ReadIdentity(ctx context.Context, b storage.Backend, cluster string) (Identity, error) {
	name := IdentityObject(cluster)
	data, err := storage.ReadAll(ctx, b, name)
	if err != nil {
		return Identity{}, fmt.Errorf("read %s: %w", name, err)
	}
	var id Identity
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&id); err != nil {
		return Identity{}, fmt.Errorf("decode %s: %w", name, err)
	}
	if strings.TrimSpace(id.SystemID) == "" {
		return Identity{}, fmt.Errorf("%s has no systemIdentifier", name)
	}
	return id, nil
}
