#!/usr/bin/env bash
# Builds versitygw, the S3-compatible server that the tests start on
# loopback (internal/testenv/s3.go), once, into the user cache directory
# where testenv looks for it. It is built with `go install module@version`,
# outside this module, so it is no dependency of barnacle's go.mod.
# Keep VERSION in step with testenv.VersitygwVersion.
set -euo pipefail
VERSION=v1.8.0
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/barnacle/versitygw-$VERSION"
if [ -x "$DIR/versitygw" ]; then
	exit 0
fi
mkdir -p "$DIR"
echo "building versitygw $VERSION into $DIR (takes a few minutes the first time)"
# GOFLAGS from the caller (e.g. -mod=vendor) would not apply to this build.
GOFLAGS= GOBIN="$DIR" go install "github.com/versity/versitygw/cmd/versitygw@$VERSION"
