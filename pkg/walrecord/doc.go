// Package walrecord reads the records of PostgreSQL 15 WAL: it walks the
// pages of consecutive segments of one timeline (or of a timeline path, as
// the caller's Opener serves them), reassembles records that cross page and
// segment boundaries, verifies each record's CRC-32C and xl_prev link, and
// decodes the record header, its block references (relation, fork, block
// number, full-page image and block data) and its main data.
//
// It is pure: the bytes of a segment come from an Opener, which the caller
// builds over the archive (pkg/catalog's verified segment reader) or a
// directory. Restore uses it to find the restore point that
// recovery_target_name names; block-incremental backups will use the block
// references.
//
// The reader tells two endings apart, because doubt must stop a recovery:
//
//   - The end of valid WAL: a zeroed record header or page, a page left
//     over from a recycled segment, a segment that is shorter than the
//     segment size (a .partial) or missing, at the end of what is stored.
//     Next returns io.EOF and EndLSN says where the WAL ended.
//   - Damage: a CRC mismatch, an impossible length or resource manager, a
//     broken xl_prev link, a page header that does not fit, or WAL that
//     seems to end while the next segment is stored. Next returns a
//     *CorruptError naming the LSN; a failure of the Opener is returned
//     wrapped, naming the segment.
//
// The format follows src/include/access/xlogrecord.h, xlog_internal.h and
// DecodeXLogRecord in src/backend/access/transam/xlogreader.c of PostgreSQL
// 15 (XLOG_PAGE_MAGIC 0xD110, XLOG_BLCKSZ and BLCKSZ 8192).
//
// Other modules can import this package, but its API is not stable.
package walrecord
