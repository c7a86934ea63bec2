// Package wal holds PostgreSQL write-ahead-log arithmetic: LSNs, segment
// numbers and file names, and timeline history files.
//
// Everything here is pure computation over values and bytes; it performs no
// I/O and imports no other barnacle package, so the archive, the receiver and
// restore all agree on one definition of a segment name. The rules mirror
// PostgreSQL's src/include/access/xlog_internal.h and
// src/backend/access/transam/timeline.c.
//
// Other modules may import this package, but its API is not stable: barnacle
// makes no compatibility promise for it.
package wal
