#!/usr/bin/env bash
# Build (once per source version) the netpol-agent CNI plugin, and for the lab cnitool.
#
#   bash cni/build.sh [plugin] [cnitool]      (default: plugin)
#
# Binaries are static (CGO_ENABLED=0, -trimpath) and cached outside the repository, in
#   ${NETPOL_AGENT_CACHE:-${XDG_CACHE_HOME:-~/.cache}/netpol-agent}/bin/<name>-<hash>
# where <hash> covers the module's sources, go.mod, go.sum and the Go version: an unchanged
# source is never rebuilt. The Go toolchain is scripts/go-toolchain.sh's (GOTOOLCHAIN=local);
# modules come from the Go module proxy, checked against go.sum.
#
# The last lines on stdout are, one per binary asked for:
#   CNI_PLUGIN=/abs/path/to/netpol-agent
#   CNITOOL=/abs/path/to/cnitool
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/.." && pwd)"
cache="${NETPOL_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-agent}/bin"
go="$(bash "${repo}/scripts/go-toolchain.sh" | tail -n1)"

# build NAME MODDIR PACKAGE: print the cached binary's path, building it if needed.
build() {
    local name="$1" moddir="$2" pkg="$3" hash bin tmp
    hash="$( { cat "${moddir}"/go.mod "${moddir}"/go.sum "${moddir}"/*.go; \
        env -u GOROOT GOTOOLCHAIN=local "${go}" env GOVERSION GOARCH; } | sha256sum | cut -c1-16)"
    bin="${cache}/${name}-${hash}"
    if [[ ! -x "${bin}" ]]; then
        mkdir -p "${cache}"
        tmp="$(mktemp "${cache}/.${name}-build.XXXXXX")"
        # shellcheck disable=SC2064
        trap "rm -f '${tmp}'" EXIT
        printf 'build.sh: building %s\n' "${name}" >&2
        (cd "${moddir}" && env -u GOROOT GOTOOLCHAIN=local CGO_ENABLED=0 \
            GOFLAGS="-mod=readonly -buildvcs=false" \
            "${go}" build -trimpath -ldflags="-s -w" -o "${tmp}" "${pkg}")
        chmod 0755 "${tmp}"
        mv -f "${tmp}" "${bin}"
        trap - EXIT
    fi
    echo "${bin}"
}

(($#)) || set -- plugin
for what in "$@"; do
    case "${what}" in
        plugin) echo "CNI_PLUGIN=$(build netpol-agent-cni "${here}" .)" ;;
        cnitool) echo "CNITOOL=$(build cnitool "${repo}/tests/lab/cnitool" github.com/containernetworking/cni/cnitool)" ;;
        *)
            printf 'build.sh: unknown binary %s (plugin, cnitool)\n' "${what}" >&2
            exit 2
            ;;
    esac
done
