#!/usr/bin/env bash
# Build (once) the real etcd and kube-apiserver used by the cluster tests.
#
# The versions are pinned by the go.mod/go.sum files under tests/cluster/gobuild/.
# Binaries are cached outside the repository, in
#   ${NETPOL_AGENT_BIN_CACHE:-${XDG_CACHE_HOME:-~/.cache}/netpol-agent/bin}/<component>-<version>/<component>
# so only the first run compiles; later runs only check that the files exist.
#
# On success the last lines on stdout are, one per component:
#   ETCD=/abs/path/to/etcd
#   KUBE_APISERVER=/abs/path/to/kube-apiserver
# Everything else (progress, compiler output) goes to stderr.
#
# Only the Go module proxy is needed: no git, no GitHub, no dl.k8s.io.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gobuild="${here}/gobuild"
cache_root="${NETPOL_AGENT_BIN_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/netpol-agent/bin}"

log() { printf 'build.sh: %s\n' "$*" >&2; }

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
kas_bin="${cache_root}/kube-apiserver-${kube_version}/kube-apiserver"

ensure_go() {
    if command -v go >/dev/null 2>&1; then
        return
    fi
    log "no 'go' on PATH: installing Debian's golang-go (GOTOOLCHAIN fetches the pinned toolchain)"
    if [[ "$(id -u)" -ne 0 ]]; then
        log "not root: install golang-go (or any Go) yourself and re-run"
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends golang-go ca-certificates >&2
}

# build NAME MODDIR PACKAGE OUTPUT [extra ldflags]
build() {
    local name="$1" moddir="$2" pkg="$3" out="$4" extra="${5:-}"
    local outdir tmp start
    outdir="$(dirname "${out}")"
    mkdir -p "${outdir}"
    # Serialise concurrent builds of the same component (parallel test runs).
    exec {lockfd}>"${outdir}/.lock"
    flock "${lockfd}"
    if [[ -x "${out}" ]]; then
        exec {lockfd}>&-
        return
    fi
    ensure_go
    # A local Go older than the go.mod's "go" line makes the go command fetch the
    # right toolchain from the module proxy instead of failing.
    export GOTOOLCHAIN="${NETPOL_AGENT_GOTOOLCHAIN:-auto}"
    export CGO_ENABLED=0
    export GOFLAGS="-mod=readonly -buildvcs=false"
    tmp="$(mktemp "${outdir}/.${name}.XXXXXX")"
    start=$SECONDS
    log "building ${name} (${pkg}) into ${out} with $(cd "${moddir}" && go version)"
    if ! (cd "${moddir}" && go build -trimpath -ldflags="-s -w ${extra}" -o "${tmp}" "${pkg}"); then
        rm -f "${tmp}"
        log "FAILED to build ${name}"
        exit 1
    fi
    chmod 0755 "${tmp}"
    mv -f "${tmp}" "${out}"
    log "built ${name} in $((SECONDS - start))s"
    exec {lockfd}>&-
}

if [[ ! -x "${etcd_bin}" ]]; then
    build etcd "${gobuild}/etcd" go.etcd.io/etcd/server/v3 "${etcd_bin}"
fi

if [[ ! -x "${kas_bin}" ]]; then
    minor="${kube_version#v1.}"
    minor="${minor%%.*}"
    vpkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
    ver_flags=""
    for p in "${vpkgs[@]}"; do
        ver_flags+=" -X ${p}.gitVersion=${kube_version} -X ${p}.gitMajor=1"
        ver_flags+=" -X ${p}.gitMinor=${minor} -X ${p}.gitTreeState=clean"
    done
    build kube-apiserver "${gobuild}/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver \
        "${kas_bin}" "${ver_flags}"
fi

echo "ETCD=${etcd_bin}"
echo "KUBE_APISERVER=${kas_bin}"
