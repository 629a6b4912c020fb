#!/usr/bin/env bash
# Print the path of the Go toolchain the project builds with, fetching it once if needed.
#
# The version is the `toolchain` line of tests/cluster/gobuild/kube-apiserver/go.mod. The
# toolchain is installed in
#   ${NETPOL_AGENT_CACHE:-${XDG_CACHE_HOME:-~/.cache}/netpol-agent}/go/<version>/
# and nowhere else: the machine's own `go` (if any) is neither used for building nor changed.
#
# How it is fetched: the Go module proxy serves every Go release as the module
# golang.org/toolchain (version v0.0.1-<goversion>.<os>-<arch>), which is how GOTOOLCHAIN
# works. Any `go` that knows `go mod download` can fetch it, including Debian 12's Go 1.19
# (too old to build anything here, and older than GOTOOLCHAIN itself). The download is
# checked against the hash recorded in tests/cluster/gobuild/toolchain.sum (and, as for
# any module, against the checksum database unless GOSUMDB is off). The proxy is the one
# the bootstrap `go` is configured with (GOPROXY), so a private mirror works too.
#
# The bootstrap `go`, in order: $NETPOL_AGENT_BOOTSTRAP_GO; `go` on PATH; a Debian
# golang-1.NN-go under /usr/lib/go-1.NN; else (as root) the golang-1.NN-go package that
# Debian's golang-go depends on, installed with apt-get. Installing that package does not
# put a `go` on PATH (that is golang-go's /usr/bin/go, which is left alone).
#
# The last line on stdout is the absolute path of the `go` binary; progress goes to stderr.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gomod="${repo}/tests/cluster/gobuild/kube-apiserver/go.mod"
sums="${repo}/tests/cluster/gobuild/toolchain.sum"
cache="${NETPOL_AGENT_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/netpol-agent}/go"

log() { printf 'go-toolchain.sh: %s\n' "$*" >&2; }

want="$(awk '$1 == "toolchain" { print $2; exit }' "${gomod}")"
[[ "${want}" =~ ^go1\.[0-9]+(\.[0-9]+)?$ ]] || {
    log "no 'toolchain go1.N.M' line in ${gomod}"
    exit 1
}
dir="${cache}/${want}"
gobin="${dir}/bin/go"

ready() { [[ -x "${gobin}" ]] && [[ "$(env -u GOROOT GOTOOLCHAIN=local "${gobin}" env GOVERSION 2>/dev/null)" == "${want}" ]]; }

if ready; then
    echo "${gobin}"
    exit 0
fi

mkdir -p "${cache}"
exec {lockfd}>"${cache}/.lock"
flock "${lockfd}"
if ready; then # another process fetched it while we waited
    echo "${gobin}"
    exit 0
fi

# go_os_arch: the GOOS-GOARCH pair of this machine, as the toolchain module names it.
go_os_arch() {
    local arch
    case "$(uname -m)" in
        x86_64) arch=amd64 ;;
        aarch64 | arm64) arch=arm64 ;;
        armv6l | armv7l) arch=armv6l ;;
        i?86) arch=386 ;;
        ppc64le) arch=ppc64le ;;
        s390x) arch=s390x ;;
        riscv64) arch=riscv64 ;;
        *)
            log "unsupported machine $(uname -m)"
            exit 1
            ;;
    esac
    echo "linux-${arch}"
}

find_bootstrap() {
    if [[ -n "${NETPOL_AGENT_BOOTSTRAP_GO:-}" ]]; then
        echo "${NETPOL_AGENT_BOOTSTRAP_GO}"
        return
    fi
    if command -v go >/dev/null 2>&1; then
        command -v go
        return
    fi
    local candidate
    for candidate in $(printf '%s\n' /usr/lib/go-1.*/bin/go | sort -V -r); do
        if [[ -x "${candidate}" ]]; then
            echo "${candidate}"
            return
        fi
    done
    if ! command -v apt-get >/dev/null 2>&1 || [[ "$(id -u)" -ne 0 ]]; then
        log "no Go to bootstrap from: install any Go (Debian: apt-get install golang-go)," \
            "or run scripts/setup-host.sh as root, then re-run"
        exit 1
    fi
    local package
    package="$(apt-cache depends golang-go 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^golang-1\.[0-9]+-go$/ { print $2; exit }')"
    if [[ -z "${package}" ]]; then
        apt-get update -q >&2
        package="$(apt-cache depends golang-go 2>/dev/null |
            awk '$1 == "Depends:" && $2 ~ /^golang-1\.[0-9]+-go$/ { print $2; exit }')"
    fi
    [[ -n "${package}" ]] || {
        log "apt knows no golang-go package to bootstrap from"
        exit 1
    }
    log "installing ${package} (only to download ${want}; it puts no 'go' on PATH)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${package}" >/dev/null
    dpkg -L "${package}" | grep -m1 -E '^/usr/lib/go-1\.[0-9]+/bin/go$'
}

boot="$(find_bootstrap)"
module="golang.org/toolchain@v0.0.1-${want}.$(go_os_arch)"
log "fetching ${module} with $(env -u GOROOT GOTOOLCHAIN=local "${boot}" version)"
start=${SECONDS}

work="$(mktemp -d "${cache}/.fetch.XXXXXX")"
cleanup() {
    chmod -R u+w "${work}" 2>/dev/null || true
    rm -rf "${work}"
}
trap cleanup EXIT
# Outside any module (the empty work dir), with a private module cache so nothing else
# is touched. GOTOOLCHAIN=local: a bootstrap Go >= 1.21 must not switch toolchains itself.
json="$(cd "${work}" && env -u GOROOT -u GOFLAGS GOTOOLCHAIN=local GO111MODULE=on \
    GOMODCACHE="${work}/mod" GOPATH="${work}/gopath" "${boot}" mod download -json "${module}")" || {
    log "download of ${module} failed"
    exit 1
}
field() { python3 -c 'import json, sys; print(json.loads(sys.stdin.read())[sys.argv[1]])' "$1" <<<"${json}"; }
src="$(field Dir)"
sum="$(field Sum)"
expected="$(awk -v m="${module%@*}" -v v="${module#*@}" '$1 == m && $2 == v { print $3 }' "${sums}" 2>/dev/null || true)"
if [[ -n "${expected}" && "${sum}" != "${expected}" ]]; then
    log "${module} has hash ${sum}, but ${sums} records ${expected}: refusing it"
    exit 1
elif [[ -z "${expected}" ]]; then
    log "no hash recorded for ${module} in ${sums}; relying on the checksum database (${sum})"
fi

chmod -R u+w "${src}"
# Module zips carry no file modes: make the commands executable, as GOTOOLCHAIN does.
find "${src}/bin" "${src}/pkg/tool" -type f -exec chmod 0755 {} +
rm -rf "${dir}"
mv "${src}" "${dir}"
ready || {
    log "${gobin} does not report ${want}"
    exit 1
}
log "installed ${want} in ${dir} in $((SECONDS - start))s"
echo "${gobin}"
