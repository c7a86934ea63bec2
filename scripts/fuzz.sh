#!/usr/bin/env bash
# Runs every Fuzz* target of the module for FUZZ_TIME each (new targets are
# found by name: any `func FuzzX` in a _test.go file).
#
# FUZZ_MINIMIZE_TIME caps how long the fuzzer minimizes each new input. Go's
# default (60s per input) stalls targets whose executions touch the
# filesystem, such as pkg/restore FuzzUnpack: every input that finds new
# coverage was minimized for up to a minute, with no executions counted, so
# a 20-30 s run stopped after a few dozen executions. A count keeps runs
# comparable; raise it (or use a duration) to minimize a crasher further.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_TIME=${FUZZ_TIME:-30s}
FUZZ_MINIMIZE_TIME=${FUZZ_MINIMIZE_TIME:-100x}
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "== $pkg $target ($FUZZ_TIME)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZ_TIME" -fuzzminimizetime "$FUZZ_MINIMIZE_TIME" "$pkg"
  done
done
