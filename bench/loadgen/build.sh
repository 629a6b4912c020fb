#!/usr/bin/env bash
# Build the load generator once per source version; print the binary's path.
#
# The binary lives outside the repository, in ~/.cache/netpol-agent/bin/loadgen-<hash>,
# where <hash> covers main.go, go.mod and the Go version: an unchanged source is never
# rebuilt, a changed one gets a new binary. Standard library only: no module download.
# Built with the project's Go toolchain (scripts/go-toolchain.sh), not a `go` on PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${NETPOL_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-agent}/bin"
go="$(bash "$here/../../scripts/go-toolchain.sh" | tail -n1)"
hash="$( { cat "$here/go.mod" "$here/main.go"; "$go" env GOVERSION GOARCH; } | sha256sum | cut -c1-16)"
bin="$cache/loadgen-$hash"
if [[ ! -x "$bin" ]]; then
    mkdir -p "$cache"
    tmp="$(mktemp "$cache/.loadgen-build.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    (cd "$here" && env -u GOROOT CGO_ENABLED=0 GOFLAGS=-mod=mod GOPROXY=off GOTOOLCHAIN=local "$go" build -trimpath -o "$tmp" .)
    chmod 0755 "$tmp"
    mv -f "$tmp" "$bin"
    trap - EXIT
fi
echo "$bin"
