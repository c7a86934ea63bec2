package catalog

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// BackupStatus is the state of a base backup in its backup.json.
type BackupStatus string

// Backup states. A backup is created running; only done backups can be
// restored.
const (
	StatusRunning BackupStatus = "running"
	StatusDone    BackupStatus = "done"
	StatusFailed  BackupStatus = "failed"
)

// BackupIDFormat is the time layout of a backup ID (UTC, second
// precision); a same-second collision gets a "-N" suffix.
const BackupIDFormat = "20060102T150405"

// LatestBackup is the name ResolveBackup accepts for the newest done
// backup.
const LatestBackup = "latest"

// backupDocName is the metadata object inside a backup's prefix.
const backupDocName = "backup.json"

// maxIDSuffix bounds the same-second suffixes CreateBackup tries; reaching
// it means something creates backups in a loop.
const maxIDSuffix = 1000

var (
	// ErrNoBackup means the backup does not exist (or, for "latest", that
	// no backup is done).
	ErrNoBackup = errors.New("catalog: no such backup")
	// ErrBackupKept means DeleteBackup refused a backup marked keep.
	ErrBackupKept = errors.New("catalog: backup is kept")
	// ErrBackupRunning means DeleteBackup refused a backup still running.
	ErrBackupRunning = errors.New("catalog: backup is running")
	// ErrInvalidBackupID means an ID that cannot name a backup (empty, or
	// not a single path component); nothing was read.
	ErrInvalidBackupID = errors.New("catalog: invalid backup ID")
)

// Backup is <cluster>/backups/<ID>/backup.json: what a base backup holds
// and what it needs. Field names in the JSON are camelCase like the rest of
// the archive's documents.
type Backup struct {
	ID     string       `json:"id"`
	Status BackupStatus `json:"status"`
	Label  string       `json:"label"`
	// Error says why the backup failed; empty unless Status is failed.
	Error string `json:"error,omitempty"`

	// StartLSN and StopLSN are the WAL positions BASE_BACKUP reported,
	// written in PostgreSQL's X/X form; InvalidLSN ("") until reported. The
	// WAL from the start to the stop position must be archived for the
	// backup to be consistent.
	StartLSN      wal.LSN      `json:"startLSN"`
	StopLSN       wal.LSN      `json:"stopLSN"`
	StartTimeline wal.Timeline `json:"startTimeline"`
	StopTimeline  wal.Timeline `json:"stopTimeline"`
	StartTime     time.Time    `json:"startTime"`
	StopTime      time.Time    `json:"stopTime"`

	PGVersion      int    `json:"pgVersion"` // server_version_num
	SystemID       string `json:"systemIdentifier"`
	WALSegmentSize uint64 `json:"walSegmentSize"`
	// Compression is how the archives are stored: none, zstd or lz4.
	Compression string `json:"compression"`

	// Files lists every object stored for the backup except backup.json.
	Files []BackupFile `json:"files"`
	// Bytes is the sum of the uncompressed archive bytes; StoredBytes the
	// sum of the stored object sizes.
	Bytes       int64 `json:"bytes"`
	StoredBytes int64 `json:"storedBytes"`

	// Agent, KeeperUID and Host say where the backup ran; From whether it
	// was taken from the master or a standby.
	Agent     string `json:"agent"`
	KeeperUID string `json:"keeperUID"`
	Host      string `json:"host"`
	From      string `json:"from"`

	// Keep exempts the backup from retention and from DeleteBackup without
	// force.
	Keep bool `json:"keep,omitempty"`

	// UpdatedAt is when PutBackup last wrote the document.
	UpdatedAt time.Time `json:"updatedAt"`
}

// BackupFile is one stored object of a backup.
type BackupFile struct {
	// Name is the object's name inside the backup's prefix: base.tar.zst,
	// 16385.tar.zst, backup_manifest.
	Name        string `json:"name"`
	Bytes       int64  `json:"bytes"` // uncompressed
	StoredBytes int64  `json:"storedBytes"`
	// Checksum is the stored object's checksum (as stored, so after
	// compression), in the form storage.Algorithm describes.
	Checksum string `json:"checksum"`
	// TablespaceOID and TablespaceLocation are set for a tablespace
	// archive; zero and empty for base.tar and the manifest.
	TablespaceOID      uint32 `json:"tablespaceOID,omitempty"`
	TablespaceLocation string `json:"tablespaceLocation,omitempty"`
}

// UnmarshalJSON also reads the field "sha256", which held the checksum
// (always SHA-256) before BLAKE3 checksums came.
func (f *BackupFile) UnmarshalJSON(data []byte) error {
	type plain BackupFile
	var v struct {
		plain
		SHA256 string `json:"sha256"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	*f = BackupFile(v.plain)
	if f.Checksum == "" {
		f.Checksum = v.SHA256
	}
	return nil
}

// BackupsPrefix is the prefix of all of the cluster's backups.
func BackupsPrefix(cluster string) string { return cluster + "/backups/" }

// BackupPrefix is the prefix of every object of backup id ("<cluster>/backups/<id>/").
func BackupPrefix(cluster, id string) string { return BackupsPrefix(cluster) + id + "/" }

// BackupObject is the name of backup id's backup.json.
func BackupObject(cluster, id string) string { return BackupPrefix(cluster, id) + backupDocName }

// ParseBackupID splits a backup ID into its time and its same-second
// suffix (0 for none). It fails unless id is YYYYMMDDTHHMMSS, optionally
// followed by "-N" with N ≥ 1 written without leading zeros.
func ParseBackupID(id string) (time.Time, int, error) {
	base, suffix, hasSuffix := strings.Cut(id, "-")
	t, err := time.Parse(BackupIDFormat, base)
	if err != nil || len(base) != len(BackupIDFormat) {
		return time.Time{}, 0, fmt.Errorf("backup ID %q is not %s (UTC) with an optional -N suffix", id, "YYYYMMDDTHHMMSS")
	}
	if !hasSuffix {
		return t, 0, nil
	}
	n, err := strconv.Atoi(suffix)
	if err != nil || n < 1 || strconv.Itoa(n) != suffix {
		return time.Time{}, 0, fmt.Errorf("backup ID %q has an invalid suffix %q", id, suffix)
	}
	return t, n, nil
}

// backupIDCandidate is the nth ID tried for a backup started at now.
func backupIDCandidate(now time.Time, n int) string {
	id := now.UTC().Format(BackupIDFormat)
	if n > 0 {
		id += "-" + strconv.Itoa(n)
	}
	return id
}

// CompareBackupIDs orders IDs by time, then suffix (-1 after none, -10
// after -9), and puts anything that is not a valid ID after all valid ones,
// in byte order. It returns -1, 0 or +1 like cmp.Compare.
func CompareBackupIDs(a, b string) int {
	ta, na, erra := ParseBackupID(a)
	tb, nb, errb := ParseBackupID(b)
	switch {
	case erra != nil && errb != nil:
		return strings.Compare(a, b)
	case erra != nil:
		return 1
	case errb != nil:
		return -1
	}
	if c := ta.Compare(tb); c != 0 {
		return c
	}
	return cmp.Compare(na, nb)
}

// newestFirst orders valid IDs newest first, followed by anything that is
// not a valid ID, in byte order.
func newestFirst(a, b string) int {
	_, _, erra := ParseBackupID(a)
	_, _, errb := ParseBackupID(b)
	if (erra == nil) != (errb == nil) || (erra != nil && errb != nil) {
		return CompareBackupIDs(a, b)
	}
	return CompareBackupIDs(b, a)
}

// checkBackupID refuses an ID that cannot be a single path component.
func checkBackupID(id string) error {
	if id == "" || strings.Contains(id, "/") {
		return fmt.Errorf("%w %q: backup IDs look like 20261125T100000 (barnacle list-backups)", ErrInvalidBackupID, id)
	}
	if err := storage.CheckName(id); err != nil {
		return fmt.Errorf("%w %q: %v", ErrInvalidBackupID, id, err)
	}
	return nil
}

// NewBackupID returns the first ID for a backup started at now that no
// object of the cluster's archive uses: YYYYMMDDTHHMMSS (UTC), then "-1",
// "-2"... It only looks, and reserves nothing: two callers can get the same
// ID. Use CreateBackup to claim one.
func NewBackupID(ctx context.Context, b storage.Backend, cluster string, now time.Time) (string, error) {
	for n := range maxIDSuffix {
		id := backupIDCandidate(now, n)
		used, err := backupPrefixUsed(ctx, b, cluster, id)
		if err != nil {
			return "", err
		}
		if !used {
			return id, nil
		}
	}
	return "", fmt.Errorf("new backup ID: %d backups already started at %s", maxIDSuffix, now.UTC().Format(BackupIDFormat))
}

func backupPrefixUsed(ctx context.Context, b storage.Backend, cluster, id string) (bool, error) {
	objs, err := b.List(ctx, BackupPrefix(cluster, id))
	if err != nil {
		return false, fmt.Errorf("list backup %s: %w", id, err)
	}
	return len(objs) > 0, nil
}

// CreateBackup claims a new backup ID for a backup started at now and
// writes doc there with status running, returning the document as stored.
// doc's ID, Status and Error are overwritten; StartTime defaults to now.
// The claim is the write-if-absent of backup.json, so concurrent callers
// (even in other processes) always get distinct IDs; an ID whose prefix
// holds objects but no backup.json (debris) is skipped too.
func CreateBackup(ctx context.Context, b storage.Backend, cluster string, doc Backup, now time.Time) (Backup, error) {
	doc.Status, doc.Error = StatusRunning, ""
	if doc.StartTime.IsZero() {
		doc.StartTime = now.UTC()
	}
	for n := range maxIDSuffix {
		doc.ID = backupIDCandidate(now, n)
		used, err := backupPrefixUsed(ctx, b, cluster, doc.ID)
		if err != nil {
			return Backup{}, fmt.Errorf("create backup: %w", err)
		}
		if used {
			continue
		}
		err = writeBackup(ctx, b, cluster, &doc, storage.PutOptions{IfAbsent: true})
		if errors.Is(err, storage.ErrExist) {
			continue // another creator won this ID between List and Put
		}
		if err != nil {
			return Backup{}, fmt.Errorf("create backup: %w", err)
		}
		return doc, nil
	}
	return Backup{}, fmt.Errorf("create backup: %d backups already started at %s", maxIDSuffix, now.UTC().Format(BackupIDFormat))
}

// PutBackup replaces doc.ID's backup.json with doc (a status change),
// setting UpdatedAt. The replace is atomic; PutBackup does not check that
// the backup still exists, so it must not be used after DeleteBackup.
func PutBackup(ctx context.Context, b storage.Backend, cluster string, doc Backup) error {
	if err := checkBackupID(doc.ID); err != nil {
		return fmt.Errorf("put backup: %w", err)
	}
	if err := writeBackup(ctx, b, cluster, &doc, storage.PutOptions{}); err != nil {
		return fmt.Errorf("put backup %s: %w", doc.ID, err)
	}
	return nil
}

func writeBackup(ctx context.Context, b storage.Backend, cluster string, doc *Backup, opts storage.PutOptions) error {
	switch doc.Status {
	case StatusRunning, StatusDone, StatusFailed:
	default:
		return fmt.Errorf("invalid backup status %q", doc.Status)
	}
	doc.UpdatedAt = time.Now().UTC()
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	name := BackupObject(cluster, doc.ID)
	if err := b.Put(ctx, name, bytes.NewReader(append(data, '\n')), opts); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// ReadBackup reads backup id's backup.json. It returns an error wrapping
// ErrNoBackup when the document does not exist, and an error (not
// ErrNoBackup) when it cannot be read, decoded, or names another ID.
func ReadBackup(ctx context.Context, b storage.Backend, cluster, id string) (Backup, error) {
	if err := checkBackupID(id); err != nil {
		return Backup{}, fmt.Errorf("read backup: %w", err)
	}
	name := BackupObject(cluster, id)
	data, err := storage.ReadAll(ctx, b, name)
	if errors.Is(err, storage.ErrNotExist) {
		return Backup{}, fmt.Errorf("%w: %s", ErrNoBackup, id)
	}
	if err != nil {
		return Backup{}, fmt.Errorf("read %s: %w", name, err)
	}
	var doc Backup
	if err := json.Unmarshal(data, &doc); err != nil {
		return Backup{}, fmt.Errorf("decode %s: %w", name, err)
	}
	if doc.ID != id {
		return Backup{}, fmt.Errorf("%s names backup %q", name, doc.ID)
	}
	switch doc.Status {
	case StatusRunning, StatusDone, StatusFailed:
	default:
		return Backup{}, fmt.Errorf("%s has unknown status %q", name, doc.Status)
	}
	return doc, nil
}

// ListBackups returns every backup of the cluster, newest first (by ID,
// see CompareBackupIDs; directories whose name is not a backup ID come
// last). A backup whose backup.json is missing, unreadable
// or invalid is not dropped: it is returned with its ID, Status failed and
// Error saying what is wrong, so that it can be seen and deleted. Only
// failures to list or to reach the backend are errors.
func ListBackups(ctx context.Context, b storage.Backend, cluster string) ([]Backup, error) {
	prefix := BackupsPrefix(cluster)
	objs, err := b.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("list backups: %w", err)
	}
	var ids []string
	seen := map[string]bool{}
	for _, o := range objs {
		id, _, ok := strings.Cut(strings.TrimPrefix(o.Name, prefix), "/")
		if !ok || seen[id] {
			continue // an object directly under backups/ belongs to no backup
		}
		seen[id] = true
		ids = append(ids, id)
	}
	slices.SortFunc(ids, newestFirst)
	backups := make([]Backup, 0, len(ids))
	for _, id := range ids {
		doc, err := ReadBackup(ctx, b, cluster, id)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("list backups: %w", ctx.Err())
			}
			doc = Backup{ID: id, Status: StatusFailed, Error: "unreadable backup.json: " + err.Error()}
			if errors.Is(err, ErrNoBackup) {
				doc.Error = "backup.json is missing: an interrupted delete or a foreign object"
			}
		}
		backups = append(backups, doc)
	}
	return backups, nil
}

// ResolveBackup returns backup idOrLatest, or for "latest" the newest
// backup whose status is done. Either way a missing backup is an error
// wrapping ErrNoBackup.
func ResolveBackup(ctx context.Context, b storage.Backend, cluster, idOrLatest string) (Backup, error) {
	if idOrLatest != LatestBackup {
		return ReadBackup(ctx, b, cluster, idOrLatest)
	}
	backups, err := ListBackups(ctx, b, cluster)
	if err != nil {
		return Backup{}, err
	}
	for _, doc := range backups {
		if doc.Status == StatusDone {
			return doc, nil
		}
	}
	return Backup{}, fmt.Errorf("%w: no completed backup in cluster %s", ErrNoBackup, cluster)
}

// DeleteBackup deletes every object under backup id's prefix, backup.json
// last, so that a delete that stops half-way leaves a listed backup that can
// be deleted again. Without force it refuses a kept backup (ErrBackupKept),
// a running one (ErrBackupRunning) and one whose backup.json is unreadable
// (whether it is kept is unknown). A backup that does not exist at all is an
// error wrapping ErrNoBackup.
func DeleteBackup(ctx context.Context, b storage.Backend, cluster, id string, force bool) error {
	if err := checkBackupID(id); err != nil {
		return fmt.Errorf("delete backup: %w", err)
	}
	doc, readErr := ReadBackup(ctx, b, cluster, id)
	if !force {
		switch {
		case readErr != nil && !errors.Is(readErr, ErrNoBackup):
			return fmt.Errorf("delete backup %s: %w (use --force to delete it anyway)", id, readErr)
		case readErr == nil && doc.Keep:
			return fmt.Errorf("delete backup %s: %w: release it first (barnacle keep --release %s) or use --force", id, ErrBackupKept, id)
		case readErr == nil && doc.Status == StatusRunning:
			return fmt.Errorf("delete backup %s: %w: wait for it to end or use --force", id, ErrBackupRunning)
		}
	}
	prefix := BackupPrefix(cluster, id)
	objs, err := b.List(ctx, prefix)
	if err != nil {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	if len(objs) == 0 {
		return fmt.Errorf("delete backup: %w: %s", ErrNoBackup, id)
	}
	docName := prefix + backupDocName
	for _, o := range objs {
		if o.Name == docName {
			continue
		}
		if err := b.Delete(ctx, o.Name); err != nil {
			return fmt.Errorf("delete backup %s: delete %s: %w", id, o.Name, err)
		}
	}
	if err := b.Delete(ctx, docName); err != nil {
		return fmt.Errorf("delete backup %s: delete %s: %w", id, docName, err)
	}
	return nil
}

// SetKeep marks backup id as kept (exempt from retention and from
// DeleteBackup without force) or releases it. Only a done backup can be
// kept; releasing works in any state. It is a read-modify-write: do not
// race it with the agent that writes the backup.
func SetKeep(ctx context.Context, b storage.Backend, cluster, id string, keep bool) error {
	doc, err := ReadBackup(ctx, b, cluster, id)
	if err != nil {
		return fmt.Errorf("set keep: %w", err)
	}
	if keep && doc.Status != StatusDone {
		return fmt.Errorf("set keep: backup %s is %s: only a done backup can be kept", id, doc.Status)
	}
	if doc.Keep == keep {
		return nil
	}
	doc.Keep = keep
	return PutBackup(ctx, b, cluster, doc)
}

// MarkStaleRunning marks failed, with Error set to reason, every running
// backup for which isStale returns true: a backup whose agent died cannot
// finish, and left running it would block deletion and look in progress
// forever. It returns the IDs it marked, oldest first. isStale sees the
// freshly read document, so it can compare UpdatedAt, Agent and Host with
// what is alive. An error on one backup does not stop the others; the
// errors are joined.
func MarkStaleRunning(ctx context.Context, b storage.Backend, cluster string, isStale func(Backup) bool, reason string) ([]string, error) {
	backups, err := ListBackups(ctx, b, cluster)
	if err != nil {
		return nil, fmt.Errorf("mark stale backups: %w", err)
	}
	var marked []string
	var errs []error
	for _, listed := range slices.Backward(backups) {
		if listed.Status != StatusRunning {
			continue
		}
		// Read again: the listing may be old by now, and the agent may have
		// finished the backup meanwhile.
		doc, err := ReadBackup(ctx, b, cluster, listed.ID)
		if err != nil {
			errs = append(errs, fmt.Errorf("mark stale backup %s: %w", listed.ID, err))
			continue
		}
		if doc.Status != StatusRunning || !isStale(doc) {
			continue
		}
		doc.Status, doc.Error = StatusFailed, reason
		if err := PutBackup(ctx, b, cluster, doc); err != nil {
			errs = append(errs, fmt.Errorf("mark stale backup %s: %w", doc.ID, err))
			continue
		}
		marked = append(marked, doc.ID)
	}
	return marked, errors.Join(errs...)
}
