// Package restore lays out a PostgreSQL data directory from a base backup in
// the archive and prepares it for point-in-time recovery (DESIGN.md §4, §5).
//
// It has three parts:
//
//   - pure decisions, table-tested: which backup a recovery target needs
//     (ChooseBackup; ChooseBackupAt for a restore point whose record
//     Prepare found in the archived WAL with pkg/walrecord), whether a
//     target lies in the archive's recoverable window (CheckTarget), and
//     the recovery settings PostgreSQL reads (RenderRecoverySettings);
//   - Restore, which streams a backup's stored tar archives from a
//     storage.Backend, checks them against their checksums while it unpacks
//     them into the data directory and the tablespace directories, and makes
//     the result durable;
//   - the safety rules around it: a data directory in use by a running
//     postmaster is never touched, a non-empty one only with Force and then
//     moved aside (never deleted), nothing in an archive can write
//     outside the directories it is restored into nor more than backup.json
//     records for it, and with a Fence (the agent's restore-root) every
//     directory lies below it and is written through one handle opened on
//     it (os.Root), so no symbolic link swapped in later redirects a write.
//
// A data directory whose restore failed has no global/pg_control (it is
// written under a temporary name and renamed last), so PostgreSQL refuses to
// start on it instead of running on half a backup.
//
// Other modules may import this package, but its API is not stable.
package restore
