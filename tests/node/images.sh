#!/usr/bin/env bash
# Build (once) the container images the real-node tests use, without any registry.
#
#   bash tests/node/images.sh [pause] [netprobe] [agent [--tag TAG]]   (default: all)
#
#   pause     our own static pause (images/pause.c), the pods' sandbox image
#   netprobe  the test server/client (netprobe/, static Go, stdlib only): the binary
#             itself (to run on a node or in a pod's netns with nsenter) and an image
# Each image is built with buildah (vfs storage, chroot isolation) and written to an OCI
# archive (`oci-archive:`) that `ctr -n k8s.io images import` loads under the printed
# ref. Archives are cached outside the repository, in
#   ${NETPOL_AGENT_CACHE:-${XDG_CACHE_HOME:-~/.cache}/netpol-agent}/images/
# keyed by a hash of each image's inputs, so only the first run builds; later runs only
# check that the files exist. Concurrent callers serialise on a lock and the later ones
# find the work done.
#
# buildah runs with its own storage (--root/--runroot under that directory), its own
# registries.conf and signature policy, so it neither sees nor changes the machine's
# containers storage or /etc/containers.
#
# On success the last lines on stdout are, per image asked for:
#   PAUSE=/abs/path/pause-<hash>.oci.tar
#   PAUSE_REF=localhost/netpol-test/pause:<hash>
#   NETPROBE_BIN=/abs/path/netprobe-<hash>/netprobe
#   NETPROBE=/abs/path/netprobe-<hash>.oci.tar
#   NETPROBE_REF=localhost/netpol-test/netprobe:<hash>
# Everything else (progress, build output) goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
cache="${NETPOL_AGENT_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/netpol-agent}/images"

log() { printf 'images.sh: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

want_pause=0 want_netprobe=0
while (($#)); do
    case "$1" in
        pause) want_pause=1 ;;
        netprobe) want_netprobe=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) die "unknown argument '$1' (pause, netprobe)" ;;
    esac
    shift
done
((want_pause + want_netprobe)) || want_pause=1 want_netprobe=1

# --- helpers ---------------------------------------------------------------------------

# hash_inputs: a short sha256 of stdin (the description of an image's inputs).
hash_inputs() { sha256sum | cut -c1-16; }

# file_digests PATH...: "sha256  path" lines for every file under the PATHs (relative to
# the repository, sorted, caches and bytecode left out), for hash_inputs.
file_digests() {
    (cd "${repo}" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
        LC_ALL=C sort -z | xargs -0r sha256sum)
}

locked=0
# lock: hold the images lock until this script exits (taken once, only on a cache miss).
lock() {
    ((locked)) && return
    mkdir -p "${cache}"
    exec {lock_fd}>"${cache}/.lock"
    if ! flock -n "${lock_fd}"; then
        log "waiting for another images.sh to finish"
        flock "${lock_fd}"
    fi
    locked=1
}

# Private buildah configuration: storage, registries (none searched) and signature
# policy (local images only, so anything goes) all live under ${cache}/buildah.
bh_dir="${cache}/buildah"
setup_buildah() {
    command -v buildah >/dev/null || die "buildah is not installed (scripts/setup-host.sh)"
    mkdir -p "${bh_dir}/root" "${bh_dir}/runroot" "${bh_dir}/tmp"
    cat >"${bh_dir}/registries.conf" <<'EOF'
unqualified-search-registries = []
short-name-mode = "disabled"
EOF
    cat >"${bh_dir}/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "${bh_dir}/root"
runroot = "${bh_dir}/runroot"
EOF
    cat >"${bh_dir}/policy.json" <<'EOF'
{"default": [{"type": "insecureAcceptAnything"}]}
EOF
    export BUILDAH_ISOLATION=chroot
    export CONTAINERS_REGISTRIES_CONF="${bh_dir}/registries.conf"
    export CONTAINERS_STORAGE_CONF="${bh_dir}/storage.conf"
    export TMPDIR="${bh_dir}/tmp"
}
bh() {
    buildah --storage-driver vfs --root "${bh_dir}/root" --runroot "${bh_dir}/runroot" "$@"
}

# Working containers this run created; removed on exit, whatever happens.
containers=()
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    local c
    for c in "${containers[@]}"; do
        bh rm "${c}" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

# commit_archive CONTAINER ARCHIVE REF: commit CONTAINER straight into an OCI archive
# named REF (no image is left in buildah's storage), atomically.
commit_archive() {
    local ctr="$1" archive="$2" ref="$3" tmp
    tmp="${archive}.tmp.$$"
    rm -f "${tmp}"
    bh commit --quiet --format oci --rm --signature-policy "${bh_dir}/policy.json" \
        "${ctr}" "oci-archive:${tmp}:${ref}" >/dev/null
    mv -f "${tmp}" "${archive}"
}

# --- pause -----------------------------------------------------------------------------
# Our own pause (images/pause.c): sleeps until SIGINT/SIGTERM, reaps children. Static, so
# the image holds nothing but /pause.
pause_recipe="pause v1: gcc -static -O2; FROM scratch; ENTRYPOINT /pause"
pause_hash="$( {
    echo "${pause_recipe}"
    file_digests tests/node/images/pause.c
    gcc --version 2>/dev/null | head -n1
} | hash_inputs)"
pause_archive="${cache}/pause-${pause_hash}.oci.tar"
pause_ref="localhost/netpol-test/pause:${pause_hash}"

build_pause() {
    [[ -s "${pause_archive}" ]] && return
    lock
    [[ -s "${pause_archive}" ]] && return
    setup_buildah
    local start=${SECONDS} work ctr
    log "building pause image ${pause_ref}"
    work="$(mktemp -d "${bh_dir}/tmp/pause.XXXXXX")"
    gcc -static -O2 -Wall -Wextra -Werror -s -o "${work}/pause" "${here}/images/pause.c"
    ctr="$(bh from --quiet --signature-policy "${bh_dir}/policy.json" scratch)"
    containers+=("${ctr}")
    bh copy --quiet --chmod 0755 "${ctr}" "${work}/pause" /pause >/dev/null
    bh config --entrypoint '["/pause"]' --cmd '' --label "org.opencontainers.image.title=pause" \
        --label "netpol-agent.inputs=${pause_hash}" "${ctr}"
    commit_archive "${ctr}" "${pause_archive}" "${pause_ref}"
    rm -rf "${work}"
    log "built ${pause_archive} ($(du -h "${pause_archive}" | cut -f1)) in $((SECONDS - start))s"
}

# --- netprobe --------------------------------------------------------------------------
# The test server/client (netprobe/main.go), static (CGO_ENABLED=0), built with the
# project's Go toolchain (scripts/go-toolchain.sh); the image holds only /netprobe.
netprobe_recipe="netprobe v1: CGO_ENABLED=0 go build -trimpath -ldflags='-s -w'; FROM scratch"
netprobe_dir="${here}/netprobe"
netprobe_hash=""
netprobe_inputs() {
    local gocmd
    gocmd="$(bash "${repo}/scripts/go-toolchain.sh" | tail -n1)"
    [[ -x "${gocmd}" ]] || die "scripts/go-toolchain.sh gave no Go toolchain"
    netprobe_go="${gocmd}"
    netprobe_hash="$( {
        echo "${netprobe_recipe}"
        file_digests tests/node/netprobe
        echo "${gocmd}"
    } | hash_inputs)"
    netprobe_bin="${cache}/netprobe-${netprobe_hash}/netprobe"
    netprobe_archive="${cache}/netprobe-${netprobe_hash}.oci.tar"
    netprobe_ref="localhost/netpol-test/netprobe:${netprobe_hash}"
}

build_netprobe() {
    netprobe_inputs
    [[ -x "${netprobe_bin}" && -s "${netprobe_archive}" ]] && return
    lock
    [[ -x "${netprobe_bin}" && -s "${netprobe_archive}" ]] && return
    setup_buildah
    local start=${SECONDS} work ctr
    log "building netprobe and image ${netprobe_ref}"
    work="$(mktemp -d "${bh_dir}/tmp/netprobe.XXXXXX")"
    # GOTOOLCHAIN=local: exactly this toolchain; GOFLAGS: no module may be fetched.
    (cd "${netprobe_dir}" && env -u GOROOT GOTOOLCHAIN=local CGO_ENABLED=0 \
        GOFLAGS="-mod=readonly -buildvcs=false" GOPROXY=off \
        "${netprobe_go}" build -trimpath -ldflags="-s -w" -o "${work}/netprobe" .)
    ctr="$(bh from --quiet --signature-policy "${bh_dir}/policy.json" scratch)"
    containers+=("${ctr}")
    bh copy --quiet --chmod 0755 "${ctr}" "${work}/netprobe" /netprobe >/dev/null
    bh config --entrypoint '["/netprobe"]' --cmd '["serve","--tcp","80,8080,9000","--udp","53,9000","--http","8080"]' \
        --label "org.opencontainers.image.title=netprobe" \
        --label "netpol-agent.inputs=${netprobe_hash}" "${ctr}"
    commit_archive "${ctr}" "${netprobe_archive}" "${netprobe_ref}"
    mkdir -p "$(dirname "${netprobe_bin}")"
    mv -f "${work}/netprobe" "${netprobe_bin}"
    rm -rf "${work}"
    log "built ${netprobe_archive} ($(du -h "${netprobe_archive}" | cut -f1)) in $((SECONDS - start))s"
}

((want_pause)) && build_pause
((want_netprobe)) && build_netprobe

((want_pause)) && printf 'PAUSE=%s\nPAUSE_REF=%s\n' "${pause_archive}" "${pause_ref}"
((want_netprobe)) && printf 'NETPROBE_BIN=%s\nNETPROBE=%s\nNETPROBE_REF=%s\n' \
    "${netprobe_bin}" "${netprobe_archive}" "${netprobe_ref}"
exit 0
