#!/usr/bin/env bash
# gofmt, go vet, and the architecture tests (layout_test.go: import rules and
# package docs).
set -euo pipefail
cd "$(dirname "$0")/.."
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi
go vet ./...
go test -count=1 -run 'TestLayout|TestPackageDocs' .
