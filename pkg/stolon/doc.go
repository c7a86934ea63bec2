// Package stolon decodes the cluster state that Stolon
// (github.com/sorintlab/stolon) keeps in etcd and answers the questions
// barnacle asks of it: which DB is the master, on which keeper, at which
// address and timeline, and whether its promotion has converged.
//
// Stolon's own types live under its internal/ tree and cannot be imported,
// so this package declares only the fields barnacle uses, with Stolon's JSON
// spellings kept exactly (including the "systemdID" typo in DB status). It is
// pure: it reads bytes handed to it and has no etcd client.
//
// Other modules may import this package, but its API is not stable: barnacle
// makes no compatibility promise for it.
package stolon
