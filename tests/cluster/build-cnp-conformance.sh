#!/usr/bin/env bash
# Build (once) the network-policy-api conformance suite's test binary.
#
#   bash tests/cluster/build-cnp-conformance.sh
#
# `go test -c sigs.k8s.io/network-policy-api/conformance`, unmodified, from the pin in
# tests/cluster/gobuild/netpolapi-conformance/go.mod (the suite the network-policy-api
# project and kube-network-policies' CI run with --conformance-profiles=ClusterNetworkPolicy),
# which must name the same version as tests/cluster/gobuild/netpolapi/go.mod when that
# exists (this script checks it): that one pins only the module, for its CRD; this one
# also records, in go.sum, every module the suite's test binary is built from.
# Cached beside the other binaries (tests/cluster/build.sh), in
#   ${NETPOL_AGENT_BIN_CACHE:-${XDG_CACHE_HOME:-~/.cache}/netpol-agent/bin}/cnp-conformance.test-<version>/
# where <version> is the sigs.k8s.io/network-policy-api version.
#
# On success the last lines on stdout are:
#   CNP_CONFORMANCE_TEST=/abs/path/cnp-conformance.test
#   TEST2JSON=/abs/path/test2json       (the Go toolchain's cmd/test2json, built beside it)
#   CNP_API_VERSION=v0.3.0
#   CNP_MODULE_DIR=/abs/path/to/the/module  (its config/crd/experimental is the CRD to install,
#                                            its conformance/base the suite's manifests)
# Everything else (progress, compiler output) goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
moddir="${here}/gobuild/netpolapi-conformance"
cache_root="${NETPOL_AGENT_BIN_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/netpol-agent/bin}"
module=sigs.k8s.io/network-policy-api

log() { printf 'build-cnp-conformance.sh: %s\n' "$*" >&2; }

version="$(awk -v m="${module}" '
    $1 == "require" && $2 == m { print $3; exit }
    $1 == m && $2 ~ /^v/ { print $2; exit }
' "${moddir}/go.mod")"
[[ -n "${version}" ]] || {
    log "cannot read the ${module} version from ${moddir}/go.mod"
    exit 1
}
# One pin: gobuild/netpolapi (the CRD the other tests install) must name the same version.
crd_pin="${here}/gobuild/netpolapi/go.mod"
if [[ -f "${crd_pin}" ]]; then
    crd_version="$(awk -v m="${module}" '$1 == "require" && $2 == m { print $3; exit }
        $1 == m && $2 ~ /^v/ { print $2; exit }' "${crd_pin}")"
    [[ "${crd_version}" == "${version}" ]] || {
        log "gobuild/netpolapi-conformance pins ${module} ${version}, gobuild/netpolapi ${crd_version}"
        exit 1
    }
fi
out="${cache_root}/cnp-conformance.test-${version}/cnp-conformance.test"

gocmd="$(bash "${repo}/scripts/go-toolchain.sh" | tail -n1)"
[[ -x "${gocmd}" ]] || {
    log "scripts/go-toolchain.sh gave no Go toolchain"
    exit 1
}
# gocmd ARGS...: the Go command in the module directory, with this toolchain only and no
# change to go.mod/go.sum.
gorun() {
    (cd "${moddir}" && env -u GOROOT GOTOOLCHAIN=local CGO_ENABLED=0 \
        GOFLAGS="-mod=readonly -buildvcs=false" "${gocmd}" "$@")
}

if [[ ! -x "${out}" ]]; then
    mkdir -p "${cache_root}"
    exec {lock_fd}>"${cache_root}/.cnp-conformance-${version}.lock"
    flock "${lock_fd}"
    if [[ ! -x "${out}" ]]; then
        start=${SECONDS}
        log "building cnp-conformance.test-${version} with $("${gocmd}" version)"
        tmp="$(mktemp -d "${cache_root}/.build-cnp-conformance.XXXXXX")"
        # shellcheck disable=SC2064
        trap "rm -rf '${tmp}'" EXIT
        gorun test -c -trimpath -ldflags="-s -w" -o "${tmp}/cnp-conformance.test" \
            "${module}/conformance" || {
            log "FAILED to build the conformance suite"
            exit 1
        }
        mkdir -p "$(dirname "${out}")"
        chmod 0755 "${tmp}/cnp-conformance.test"
        mv -f "${tmp}/cnp-conformance.test" "${out}"
        rm -rf "${tmp}"
        trap - EXIT
        log "built cnp-conformance.test in $((SECONDS - start))s"
    fi
fi

# test2json (the Go toolchain's cmd/test2json, which `go test` runs itself) turns the
# binary's -test.v=test2json output into one JSON event per line: every test and subtest
# with its verdict and time. Built once beside the binary, with the same toolchain.
test2json="$(dirname "${out}")/test2json"
if [[ ! -x "${test2json}" ]]; then
    gorun build -trimpath -ldflags="-s -w" -o "${test2json}.tmp.$$" cmd/test2json || {
        log "FAILED to build cmd/test2json"
        exit 1
    }
    mv -f "${test2json}.tmp.$$" "${test2json}"
fi
module_dir="$(gorun list -m -f '{{.Dir}}' "${module}")"
[[ -d "${module_dir}/config/crd/experimental" ]] || {
    log "no config/crd/experimental in ${module_dir} (go mod download ${module}@${version})"
    exit 1
}
echo "CNP_CONFORMANCE_TEST=${out}"
echo "TEST2JSON=${test2json}"
echo "CNP_API_VERSION=${version}"
echo "CNP_MODULE_DIR=${module_dir}"
exit 0
