#!/usr/bin/env bash
# Build (once) the real etcd and Kubernetes binaries used by the tests.
#
#   bash tests/cluster/build.sh [COMPONENT...]   (default: all of them)
#
# COMPONENT is etcd, or one of the Kubernetes binaries: kube-apiserver, kubectl (the
# apiserver tests), kubelet, kube-proxy, kube-controller-manager, kube-scheduler (the
# real-node tests). The versions are pinned by the go.mod/go.sum files under
# tests/cluster/gobuild/: every Kubernetes binary comes from the same k8s.io/kubernetes
# pin, and all the missing ones are built by one `go build`, so the packages they share
# compile and link in one process. Binaries are cached outside
# the repository, in
#   ${NETPOL_AGENT_BIN_CACHE:-${XDG_CACHE_HOME:-~/.cache}/netpol-agent/bin}/<component>-<version>/<component>
# so only the first run compiles; later runs only check that the files exist.
#
# The Go toolchain is the one scripts/go-toolchain.sh provides (the version in the
# go.mod `toolchain` line, fetched once into the project's cache); a `go` that happens
# to be on PATH is not used for building.
#
# On success the last lines on stdout are, one per component asked for, the component's
# name upper-cased with '-' as '_':
#   ETCD=/abs/path/to/etcd
#   KUBE_APISERVER=/abs/path/to/kube-apiserver
#   KUBECTL=/abs/path/to/kubectl
#   ...
# Everything else (progress, compiler output) goes to stderr.
#
# Only the Go module proxy is needed: no git, no GitHub, no release downloads.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
gobuild="${here}/gobuild"
cache_root="${NETPOL_AGENT_BIN_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/netpol-agent/bin}"

log() { printf 'build.sh: %s\n' "$*" >&2; }

kube_components=(kube-apiserver kubectl kubelet kube-proxy kube-controller-manager kube-scheduler)
want_etcd=0
wanted_kube=()
(($#)) || set -- etcd "${kube_components[@]}"
for component in "$@"; do
    if [[ "${component}" == etcd ]]; then
        want_etcd=1
    elif [[ " ${kube_components[*]} " == *" ${component} "* ]]; then
        wanted_kube+=("${component}")
    else
        log "unknown component '${component}' (etcd ${kube_components[*]})"
        exit 2
    fi
done

# module_version DIR MODULE: the version of MODULE that DIR/go.mod requires.
module_version() {
    awk -v m="$2" '
        $1 == "require" && $2 == m { print $3; exit }
        $1 == m && $2 ~ /^v/ { print $2; exit }
    ' "$1/go.mod"
}

kube_version="$(module_version "${gobuild}/kube-apiserver" k8s.io/kubernetes)"
etcd_version="$(module_version "${gobuild}/etcd" go.etcd.io/etcd/server/v3)"
[[ -n "${kube_version}" && -n "${etcd_version}" ]] || {
    log "cannot read pinned versions from ${gobuild}/*/go.mod"
    exit 1
}

etcd_bin="${cache_root}/etcd-${etcd_version}/etcd"
kube_bin() { echo "${cache_root}/$1-${kube_version}/$1"; }

gocmd=""
ensure_go() {
    [[ -n "${gocmd}" ]] && return
    gocmd="$(bash "${repo}/scripts/go-toolchain.sh" | tail -n1)"
    [[ -x "${gocmd}" ]] || {
        log "scripts/go-toolchain.sh gave no Go toolchain"
        exit 1
    }
}

# lock FILE: hold an exclusive lock on FILE until this script exits.
lock() {
    mkdir -p "$(dirname "$1")"
    local fd
    exec {fd}>"$1"
    flock "${fd}"
}

# build MODDIR LDFLAGS NAME=PACKAGE=OUTPUT...: one `go build` of every NAME's PACKAGE,
# each binary moved to its OUTPUT. With several packages, each one's last path element
# must be its NAME (go build names the binaries that way).
build() {
    local moddir="$1" ldflags="$2"
    shift 2
    local spec name pkg out tmp start target names=() pkgs=()
    for spec in "$@"; do
        IFS='=' read -r name pkg out <<<"${spec}"
        names+=("${name}")
        pkgs+=("${pkg}")
    done
    ensure_go
    mkdir -p "${cache_root}"
    tmp="$(mktemp -d "${cache_root}/.build.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '${tmp}'" EXIT
    target="${tmp}/"
    ((${#names[@]} > 1)) || target="${tmp}/${names[0]}"
    start=${SECONDS}
    log "building ${names[*]} with $("${gocmd}" version) (first time: many minutes)"
    # GOTOOLCHAIN=local: build with exactly this toolchain, never switch to another one.
    if ! (cd "${moddir}" && env -u GOROOT GOTOOLCHAIN=local CGO_ENABLED=0 \
        GOFLAGS="-mod=readonly -buildvcs=false" \
        "${gocmd}" build -trimpath -ldflags="-s -w ${ldflags}" -o "${target}" "${pkgs[@]}"); then
        log "FAILED to build ${names[*]}"
        exit 1
    fi
    for spec in "$@"; do
        IFS='=' read -r name pkg out <<<"${spec}"
        mkdir -p "$(dirname "${out}")"
        chmod 0755 "${tmp}/${name}"
        mv -f "${tmp}/${name}" "${out}"
    done
    rm -rf "${tmp}"
    trap - EXIT
    log "built ${names[*]} in $((SECONDS - start))s"
}

# Serialise concurrent builds (parallel test runs): one lock per go.mod.
if ((want_etcd)) && [[ ! -x "${etcd_bin}" ]]; then
    lock "${cache_root}/etcd-${etcd_version}/.lock"
    if [[ ! -x "${etcd_bin}" ]]; then
        build "${gobuild}/etcd" "" "etcd=go.etcd.io/etcd/server/v3=${etcd_bin}"
    fi
fi

kube_specs() {
    local component
    for component in "${wanted_kube[@]}"; do
        [[ -x "$(kube_bin "${component}")" ]] ||
            echo "${component}=k8s.io/kubernetes/cmd/${component}=$(kube_bin "${component}")"
    done
}
if [[ -n "$(kube_specs)" ]]; then
    lock "${cache_root}/kube-apiserver-${kube_version}/.lock"
    mapfile -t specs < <(kube_specs)
    if ((${#specs[@]})); then
        minor="${kube_version#v1.}"
        minor="${minor%%.*}"
        ver_flags=""
        for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            ver_flags+=" -X ${p}.gitVersion=${kube_version} -X ${p}.gitMajor=1"
            ver_flags+=" -X ${p}.gitMinor=${minor} -X ${p}.gitTreeState=clean"
        done
        build "${gobuild}/kube-apiserver" "${ver_flags}" "${specs[@]}"
    fi
fi

((want_etcd)) && echo "ETCD=${etcd_bin}"
for component in "${wanted_kube[@]}"; do
    name="${component^^}"
    echo "${name//-/_}=$(kube_bin "${component}")"
done
exit 0
