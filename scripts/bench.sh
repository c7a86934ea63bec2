#!/usr/bin/env bash
# Benchmarks. First the Go micro-benchmarks of the parsers on the hot paths
# (seconds), then the two benchmarks of test/bench, each on its own
# PostgreSQL cluster with a pgbench database:
#  - WAL streaming: the same pgbench load with no receiver, with
#    pg_receivewal (async, --synchronous) and with barnacle's receiver,
#    reporting tps and the receivers' flush lag (the RPO); at the defaults
#    about 12 minutes and 2 GB of disk;
#  - base backup: barnacle backup --local (none, lz4, zstd) beside
#    pg_basebackup -Ft -X stream (none, client-lz4, client-zstd:1) of pgbench
#    plus a table of random bytes of the same size, reporting MB/s, output
#    size, the ratios and peak RSS; at the defaults about 6 minutes and
#    8 GB of disk.
#
# Knobs (environment): BENCH_SCALE (pgbench scale, default 100),
# BENCH_SECONDS (per WAL phase, default 60), BENCH_CLIENTS (default 4),
# BENCH_JOBS (default 2), BENCH_ROUNDS (base backup series, fastest kept,
# default 1), BENCH_BARNACLE (a barnacle binary to measure instead of one
# built from this tree), BENCH_SKIP_MICRO=1, BENCH_SKIP_WAL=1,
# BENCH_SKIP_BASEBACKUP=1 to leave a part out.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${BENCH_SKIP_MICRO:-}" != 1 ]]; then
	go test -run '^$' -bench . -benchmem ./pkg/...
fi
if [[ "${BENCH_SKIP_WAL:-}" != 1 ]]; then
	go test -run '^$' -bench WALStreaming -benchtime 1x -timeout 60m ./test/bench
fi
if [[ "${BENCH_SKIP_BASEBACKUP:-}" != 1 ]]; then
	go test -run '^$' -bench BaseBackup -benchtime 1x -timeout 60m ./test/bench
fi
