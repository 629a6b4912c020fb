#!/usr/bin/env bash
# Build (once) the upstream Kubernetes e2e test binary and its helpers.
#
#   bash tests/cluster/build-e2e.sh [COMPONENT...]   (default: all of them)
#
# COMPONENT is one of
#   e2e.test  `go test -c k8s.io/kubernetes/test/e2e`, the suite the Kubernetes CI runs
#             (and kind's and kube-network-policies' CI), unmodified
#   ginkgo    the ginkgo CLI at the version k8s.io/kubernetes requires (optional: e2e.test
#             runs on its own; ginkgo only adds parallel runs)
#   agnhost   k8s.io/kubernetes/test/images/agnhost, the suite's test server/client, static
#             (tests/node/images-e2e.sh puts it in an image named as the suite expects)
# All from the k8s.io/kubernetes pin in tests/cluster/gobuild/e2e/go.mod, which is the one
# tests/cluster/gobuild/kube-apiserver/go.mod pins (this script checks that). Cached
# beside the other binaries (tests/cluster/build.sh), in
#   ${NETPOL_AGENT_BIN_CACHE:-${XDG_CACHE_HOME:-~/.cache}/netpol-agent/bin}/<component>-<version>/<component>
# where <version> is the k8s.io/kubernetes version (ginkgo's own version for ginkgo).
#
# On success the last lines on stdout are, one per component asked for:
#   E2E_TEST=/abs/path/e2e.test
#   GINKGO=/abs/path/ginkgo
#   AGNHOST=/abs/path/agnhost
# Everything else (progress, compiler output) goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
moddir="${here}/gobuild/e2e"
cache_root="${NETPOL_AGENT_BIN_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/netpol-agent/bin}"

log() { printf 'build-e2e.sh: %s\n' "$*" >&2; }

all=(e2e.test ginkgo agnhost)
(($#)) || set -- "${all[@]}"
for component in "$@"; do
    [[ " ${all[*]} " == *" ${component} "* ]] || {
        log "unknown component '${component}' (${all[*]})"
        exit 2
    }
done

module_version() {
    awk -v m="$2" '
        $1 == "require" && $2 == m { print $3; exit }
        $1 == m && $2 ~ /^v/ { print $2; exit }
    ' "$1/go.mod"
}
kube_version="$(module_version "${moddir}" k8s.io/kubernetes)"
ginkgo_version="$(module_version "${moddir}" github.com/onsi/ginkgo/v2)"
pinned="$(module_version "${here}/gobuild/kube-apiserver" k8s.io/kubernetes)"
[[ -n "${kube_version}" && -n "${ginkgo_version}" ]] || {
    log "cannot read pinned versions from ${moddir}/go.mod"
    exit 1
}
[[ "${kube_version}" == "${pinned}" ]] || {
    log "gobuild/e2e pins k8s.io/kubernetes ${kube_version}, gobuild/kube-apiserver ${pinned}"
    exit 1
}

bin_path() {
    case "$1" in
        ginkgo) echo "${cache_root}/ginkgo-${ginkgo_version}/ginkgo" ;;
        *) echo "${cache_root}/$1-${kube_version}/$1" ;;
    esac
}

gocmd=""
ensure_go() {
    [[ -n "${gocmd}" ]] && return
    gocmd="$(bash "${repo}/scripts/go-toolchain.sh" | tail -n1)"
    [[ -x "${gocmd}" ]] || {
        log "scripts/go-toolchain.sh gave no Go toolchain"
        exit 1
    }
}

missing() {
    local c
    for c in "$@"; do [[ -x "$(bin_path "${c}")" ]] || return 0; done
    return 1
}

# The version the binaries report (e2e.test logs it and compares it with the server's).
minor="${kube_version#v1.}"
minor="${minor%%.*}"
ver_flags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ver_flags+=" -X ${p}.gitVersion=${kube_version} -X ${p}.gitMajor=1"
    ver_flags+=" -X ${p}.gitMinor=${minor} -X ${p}.gitTreeState=clean"
done

# gobuild ARGS...: the Go command in the module directory, with this toolchain only and
# no change to go.mod/go.sum.
gobuild() {
    (cd "${moddir}" && env -u GOROOT GOTOOLCHAIN=local CGO_ENABLED=0 \
        GOFLAGS="-mod=readonly -buildvcs=false" "${gocmd}" "$@")
}

# install NAME TMPFILE: move a built binary into the cache.
install_bin() {
    local out
    out="$(bin_path "$1")"
    mkdir -p "$(dirname "${out}")"
    chmod 0755 "$2"
    mv -f "$2" "${out}"
}

if missing "$@"; then
    mkdir -p "${cache_root}"
    exec {lock_fd}>"${cache_root}/.e2e-${kube_version}.lock"
    flock "${lock_fd}"
    ensure_go
    tmp="$(mktemp -d "${cache_root}/.build-e2e.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '${tmp}'" EXIT
    for c in "$@"; do
        [[ -x "$(bin_path "${c}")" ]] && continue
        start=${SECONDS}
        log "building $(basename "$(dirname "$(bin_path "${c}")")") with $("${gocmd}" version)"
        case "${c}" in
            e2e.test)
                gobuild test -c -trimpath -ldflags="-s -w ${ver_flags}" \
                    -o "${tmp}/e2e.test" k8s.io/kubernetes/test/e2e
                ;;
            ginkgo)
                gobuild build -trimpath -ldflags="-s -w" -o "${tmp}/ginkgo" \
                    github.com/onsi/ginkgo/v2/ginkgo
                ;;
            agnhost)
                gobuild build -trimpath -ldflags="-s -w ${ver_flags}" -o "${tmp}/agnhost" \
                    k8s.io/kubernetes/test/images/agnhost
                ;;
        esac || {
            log "FAILED to build ${c}"
            exit 1
        }
        install_bin "${c}" "${tmp}/${c}"
        log "built ${c} in $((SECONDS - start))s"
    done
    rm -rf "${tmp}"
    trap - EXIT
fi

for c in "$@"; do
    name="${c^^}"
    name="${name//./_}"
    echo "${name}=$(bin_path "${c}")"
done
exit 0
