// Package walstream archives PostgreSQL WAL by streaming it from a server
// over the physical replication protocol, the way pg_receivewal does, into a
// storage.Backend.
//
// A Receiver assembles one segment at a time in memory. The segment being
// received is written to the archive as "<segment>.partial" every
// Options.FlushInterval (and whenever the server asks for a reply); a full
// segment is written once, under its own name, and only then is its
// .partial deleted. The position reported to PostgreSQL as written, flushed
// and applied is only ever what the archive holds durably, so a replication
// slot never lets the server drop WAL that is not archived.
//
// Complete segments may be stored compressed (Options.Compression) as
// "<segment>.zst" or "<segment>.lz4"; a segment is archived under one name
// only, whatever the setting was when it was written, and catalog.OpenSegment reads
// any of them back. A .partial is always stored as is.
//
// At a timeline switch the last segment of the old timeline stays in the
// archive as a .partial and the new timeline's history file is archived
// before any of its segments, as in PostgreSQL's own archive.
//
// Protocol reference:
// https://www.postgresql.org/docs/15/protocol-replication.html
package walstream
