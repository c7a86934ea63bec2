// Package basebackup takes a PostgreSQL base backup over a physical
// replication connection (BASE_BACKUP) and hands every archive, and the
// backup manifest, to a Consumer as a stream of bytes. It knows nothing
// about storage: where the bytes go is the Consumer's business.
//
// Only the PostgreSQL 15+ framing is supported: the whole backup arrives as
// one COPY stream whose CopyData messages start with a type byte ('n' new
// archive, 'd' data, 'p' progress, 'm' manifest), demultiplexed by Demux.
// Older servers send each tablespace as its own COPY stream; Run refuses
// them with ErrUnsupportedVersion.
//
// Memory use does not depend on the size of the backup: each CopyData
// message is written to the Consumer before the next one is read.
//
// Protocol references:
// https://www.postgresql.org/docs/15/protocol-replication.html (BASE_BACKUP)
// and PostgreSQL's src/backend/backup/basebackup_copy.c (the copystream
// sink), whose framing pg_basebackup's ReceiveArchiveStreamChunk parses.
package basebackup
