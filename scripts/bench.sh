#!/usr/bin/env bash
# Go benchmarks of the parsers on the hot paths. The side-by-side benchmarks
# against pg_receivewal and pg_basebackup come with the WAL receiver and the
# base backup.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench . -benchmem ./pkg/...
