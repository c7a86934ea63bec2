// Package backup takes a base backup into the archive and verifies stored
// backups. Take runs BASE_BACKUP (pkg/basebackup) over a replication
// connection, streams each tar archive through a compressor straight into
// storage.Backend.Put, stores PostgreSQL's backup_manifest beside them, and
// records the backup in the catalog (backups/<ID>/backup.json). A backup is
// marked done only when every archive is durable and the archive holds the
// WAL up to the backup's stop position; any failure marks it failed with
// the reason. Verify re-reads a stored backup and checks it against its
// checksums and its manifest, as pg_verifybackup does for a directory.
//
// Memory use does not depend on the size of the backup: the bytes of an
// archive pass through a few MiB of buffers and the compressor's on their way
// to the backend, and Verify hashes each file as it streams past.
//
// Other modules may import this package, but its API is not stable.
package backup
