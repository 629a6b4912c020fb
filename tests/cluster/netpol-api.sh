#!/usr/bin/env bash
# The ClusterNetworkPolicy API (sigs.k8s.io/network-policy-api) at the version pinned by
# tests/cluster/gobuild/netpolapi/go.mod, fetched through the Go module proxy.
#
#   bash tests/cluster/netpol-api.sh crd   print the path of the experimental CRD YAML
#   bash tests/cluster/netpol-api.sh dir   print the module's directory (read-only)
#
# The experimental CRD, not the standard one: the standard one prunes the fields the
# experimental channel adds (`nodes` peers, `destinationNamedPort`, `domainNames`), and the
# agent must see them (to enforce them, or to fail closed on the ones it does not support).
# The CRD serves v1alpha2 and v1beta1 (stored as v1beta1); the agent watches v1alpha2.
#
# The module is downloaded once into the Go module cache (GOMODCACHE, ~/go/pkg/mod by
# default) and checked against go.sum; later runs read it from there. The Go toolchain is
# the one scripts/go-toolchain.sh provides. Only the module proxy is needed.
#
# On success the last line on stdout is the path; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
moddir="${here}/gobuild/netpolapi"
module=sigs.k8s.io/network-policy-api

log() { printf 'netpol-api.sh: %s\n' "$*" >&2; }

what="${1:-}"
case "${what}" in
    crd | dir) ;;
    *)
        log "usage: netpol-api.sh crd|dir"
        exit 2
        ;;
esac

gocmd="$(bash "${repo}/scripts/go-toolchain.sh" | tail -n1)"
[[ -x "${gocmd}" ]] || {
    log "scripts/go-toolchain.sh gave no Go toolchain"
    exit 1
}

# -mod=readonly: the version and its hash are the ones go.mod and go.sum pin, never newer.
json="$(cd "${moddir}" && env -u GOROOT GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
    "${gocmd}" mod download -json "${module}")" || {
    log "go mod download ${module} failed"
    exit 1
}
dir="$(printf '%s\n' "${json}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
[[ -n "${dir}" && -d "${dir}" ]] || {
    log "go mod download gave no module directory: ${json}"
    exit 1
}

if [[ "${what}" == dir ]]; then
    echo "${dir}"
    exit 0
fi
crd="${dir}/config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml"
[[ -f "${crd}" ]] || {
    log "no experimental ClusterNetworkPolicy CRD in ${dir}"
    exit 1
}
echo "${crd}"
