#!/usr/bin/env bash
# Builds kube-apiserver, the real Kubernetes API server that the kubekeeper
# tests start on loopback over the embedded etcd (internal/testenv/kubeapi.go),
# once, into the user cache directory where testenv looks for it. There is no
# Debian package of it and no image registry here, so it is built from
# k8s.io/kubernetes on the Go module proxy, in a module of its own (its
# staging modules replaced by their published versions), so it is no
# dependency of barnacle's go.mod. Keep VERSION in step with
# testenv.KubeAPIServerVersion; the staging modules are v0.<minor>.<patch>.
set -euo pipefail
VERSION=v1.37.2
STAGING=v0.37.2
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/barnacle/kube-apiserver-$VERSION"
if [ -x "$DIR/kube-apiserver" ]; then
	exit 0
fi
echo "building kube-apiserver $VERSION into $DIR (takes many minutes the first time)"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
export GOFLAGS=
go mod download -json "k8s.io/kubernetes@$VERSION" >/dev/null
MOD=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$VERSION.mod
{
	printf 'module kubeapiserverbuild\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$VERSION"
	grep '=> ./staging' "$MOD" | awk -v v="$STAGING" '{print "\t" $1 " => " $1 " " v}'
	printf ')\n'
} >go.mod
printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\nfunc main() {}\n' >main.go
go mod tidy
mkdir -p "$DIR"
go build -o "$DIR/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
