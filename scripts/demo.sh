#!/usr/bin/env bash
# make demo: runs the demo scenario (test/e2e TestDemo) on the embedded
# default — a local etcd, a primary and two standbys, an agent beside each —
# then a base backup, a restore drill (barnacle drill --wait), a write load, a
# failover under load and a point-in-time restore that is started and counted,
# and prints what happens and a summary.
# Everything runs on 127.0.0.1 in temporary directories, removed at the end.
# Installs PostgreSQL 15 first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$PATH:/usr/local/go/bin"
# -v shows the narrative; the filter drops go test's own bookkeeping lines.
go test -count=1 -timeout 5m -run '^TestDemo$' -v ./test/e2e/ | grep -v -E '^(=== (RUN|PAUSE|CONT)|--- PASS|PASS$|ok )' || {
  echo "demo failed; run 'go test -run TestDemo -v ./test/e2e/' for the full log" >&2
  exit 1
}
