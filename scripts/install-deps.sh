#!/usr/bin/env bash
# Installs what barnacle's tests and demo need when it is missing:
# PostgreSQL 15 server binaries (initdb, pg_ctl, pg_basebackup, pgbench, ...)
# and strace.
# Go itself must already be installed (https://go.dev/doc/install).
set -euo pipefail
pg_bindir=/usr/lib/postgresql/15/bin
missing=()
if [ ! -x "$pg_bindir/initdb" ] && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql-15)
fi
# strace: pkg/restore's TestRestoreSystemCallsPerFile counts a restore's
# system calls with it (and fails without it).
if ! command -v strace >/dev/null 2>&1; then
  missing+=(strace)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${missing[*]}; run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
fi
# As root the tests run PostgreSQL as the postgres OS user, which the package
# creates; make sure it exists even where PostgreSQL came from elsewhere.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
  echo "Go is missing: install Go 1.26 (https://go.dev/doc/install)" >&2
  exit 1
fi
