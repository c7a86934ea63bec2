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
#    8 GB of disk;
#  - restore: the same database backed up by pg_basebackup -Ft (none,
#    client-zstd:1) and barnacle backup --local (none, lz4, zstd into
#    file://; none, zstd into s3:// on a local versitygw), then restored:
#    tar -x and zstd -d | tar -x, each with sync -f, beside barnacle
#    restore, reporting MB/s, the ratios to tar, peak RSS, and backup and
#    restore rates of file:// and s3:// side by side; at the defaults
#    about 12 minutes and 18 GB of disk (needs zstd and `make versitygw`);
#  - replay: PostgreSQL's archive recovery of BENCH_SEGMENTS segments with
#    restore_command = barnacle wal-fetch --prefetch 0 and with the default
#    prefetch, from file:// and s3:// archives; about 6 minutes;
#  - many relations: BENCH_RELATIONS small tables (default 20,000, six
#    files each) backed up by pg_basebackup -Ft client-zstd:1 and barnacle
#    (zstd), restored by zstd -d | tar -x with sync -f and by barnacle,
#    BENCH_ROUNDS times (default 3 here), with time, system time and peak
#    RSS; then list, index, lookup, retention plan and wal-fetch timed on
#    BENCH_SEGMENTS_ARCHIVED (default 100,000) archived segments; about
#    15 minutes.
#
# Knobs (environment): BENCH_SCALE (pgbench scale, default 100),
# BENCH_SECONDS (per WAL phase, default 60), BENCH_CLIENTS (default 4),
# BENCH_JOBS (default 2), BENCH_ROUNDS (base backup and restore series,
# fastest kept for the table and the goals; from 2 rounds on, each barnacle
# row also gets its speed-up over its comparison in every round, with the
# median, default 1), BENCH_SEGMENTS (WAL segments replayed, default
# 64), BENCH_BARNACLE (a barnacle binary to measure instead of one built
# from this tree), BENCH_BARNACLE_ALT (a second binary whose restores and
# replays are measured beside, as "(alt)" rows), BENCH_SKIP_MICRO=1,
# BENCH_SKIP_WAL=1, BENCH_SKIP_BASEBACKUP=1, BENCH_SKIP_RESTORE=1,
# BENCH_SKIP_REPLAY=1, BENCH_SKIP_MANYREL=1 to leave a part out.
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
if [[ "${BENCH_SKIP_RESTORE:-}" != 1 ]]; then
	go test -run '^$' -bench 'Restore$' -benchtime 1x -timeout 60m ./test/bench
fi
if [[ "${BENCH_SKIP_REPLAY:-}" != 1 ]]; then
	go test -run '^$' -bench ReplayPrefetch -benchtime 1x -timeout 60m ./test/bench
fi
if [[ "${BENCH_SKIP_MANYREL:-}" != 1 ]]; then
	go test -run '^$' -bench ManyRelations -benchtime 1x -timeout 90m ./test/bench
fi
