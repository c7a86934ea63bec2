#!/usr/bin/env bash
# Benchmarks. First the Go micro-benchmarks of the parsers on the hot paths
# (seconds), then the WAL streaming benchmark of test/bench: one PostgreSQL
# cluster with a pgbench database, the same pgbench load with no receiver,
# with pg_receivewal (async, --synchronous) and with barnacle's receiver,
# reporting tps and the receivers' flush lag (the RPO). At the defaults it
# takes about 12 minutes and 2 GB of disk.
#
# Knobs (environment): BENCH_SCALE (pgbench scale, default 100),
# BENCH_SECONDS (per phase, default 60), BENCH_CLIENTS (default 4),
# BENCH_JOBS (default 2), BENCH_SKIP_MICRO=1 to run only the WAL benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${BENCH_SKIP_MICRO:-}" != 1 ]]; then
	go test -run '^$' -bench . -benchmem ./pkg/...
fi
go test -run '^$' -bench WALStreaming -benchtime 1x -timeout 60m ./test/bench
