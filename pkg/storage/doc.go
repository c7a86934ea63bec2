// Package storage is barnacle's one shared storage contract: the Backend
// interface that every archive backend implements, the sentinel and typed
// errors they return, and the archive's write-once rule (PutOnce).
//
// Implementations live in subpackages (fs, and later s3); backends maps an
// archive URL to one of them; storagetest is the conformance suite every
// implementation must pass. Optional features (SpaceReporter, Cleaner,
// Appender, DirLister) are one-method interfaces that callers find by type assertion,
// so the shared contract stays small.
//
// Object names are slash-separated and relative to the backend's root, for
// example "mycluster/wals/000000010000000000000005.zst"; CheckName states the
// rules. Every stored object carries a checksum of its bytes (BLAKE3, or
// SHA-256 for older objects; see Algorithm), recorded atomically with the
// data and verified when the object is read back.
//
// Other modules may import this package, but its API is not stable: it
// changes whenever barnacle needs it to.
package storage
