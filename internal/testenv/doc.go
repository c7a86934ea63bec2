// Package testenv starts the real services that barnacle's tests run
// against, all on 127.0.0.1 and free ports, all stopped by the test that
// started them: PostgreSQL 15 clusters (a primary and streaming standbys),
// an embedded etcd server, and a simulator that plays Stolon's part by
// writing clusterdata in Stolon's exact format and failing over the way the
// sentinel and keeper do.
//
// Nothing here is mocked. A missing PostgreSQL installation fails the test
// with a message that says how to install it; it never skips.
package testenv
