#!/usr/bin/env bash
# Build (once) the container images the real-node tests use, without any registry.
#
#   bash tests/node/images.sh [pause] [netprobe] [agent [--tag TAG]] [agnhost] [cnp-agnhost]
#   (default: pause, netprobe and agent)
#
#   pause     our own static pause (images/pause.c), the pods' sandbox image
#   netprobe  the test server/client (netprobe/, static Go, stdlib only): the binary
#             itself (to run on a node or in a pod's netns with nsenter) and an image
#   agent     the project's Dockerfile, built with buildah as a user would build it (the
#             RUN steps also see this machine's CA bundle, read-only, not in the image),
#             with PYTHON_IMAGE = a local Debian bookworm root filesystem with Debian's
#             python3.11 (made with mmdebstrap; it stands in for python:3.11-slim-bookworm,
#             see build_base). The tag is dev-<hash of Dockerfile, .dockerignore,
#             pyproject.toml, README.md, agent/ and the base>, so it changes with any of them.
#             `agent --tag TAG` also writes a copy of that image tagged TAG (only the name
#             differs: for a rolling-update test), and prints it instead.
#   agnhost   the upstream e2e suite's test server/client (k8s.io/kubernetes/test/images/
#             agnhost, static, from tests/cluster/build-e2e.sh) in an image named exactly as
#             the pinned suite expects (registry.k8s.io/e2e-test-images/agnhost:<version>,
#             read from the module's test/utils/image/manifest.go), so the kubelet finds it
#             with IfNotPresent and nothing is pulled. Unlike the upstream image (alpine
#             with tools) it holds only what the NetworkPolicy tests use: /agnhost (and the
#             agnhost-2 link), porter's localhost.crt/key and /uploads.
#   cnp-agnhost  the image the network-policy-api conformance suite's pods run
#             (tests/node/cnp_conformance.py), named as its base/manifests.yaml says
#             (registry.k8s.io/e2e-test-images/agnhost:<tag>, from the module pinned in
#             tests/cluster/gobuild/netpolapi-conformance): the same agnhost binary as
#             above (built from the k8s.io/kubernetes pin, a newer agnhost than the tag:
#             the subcommands the suite runs, serve-hostname, netexec, porter and connect,
#             take the same flags) plus /bin/bash (Debian's bash-static), because those
#             pods start their servers with `/bin/bash -c "/agnhost ..."`.
#
# Each image is built with buildah (vfs storage, chroot isolation) and written to an OCI
# archive (`oci-archive:`) that `ctr -n k8s.io images import` loads under the printed
# ref (images/ctr-check.sh checks that). Archives are cached outside the repository, in
#   ${NETPOL_AGENT_IMAGE_CACHE:-${NETPOL_AGENT_CACHE:-~/.cache/netpol-agent}/images}/
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
#   AGENT=/abs/path/agent-<hash>.oci.tar          (--tag TAG: agent-<hash>-TAG.oci.tar)
#   AGENT_REF=localhost/netpol-agent:dev-<hash>   (--tag TAG: localhost/netpol-agent:TAG)
#   AGNHOST=/abs/path/agnhost-<hash>.oci.tar
#   AGNHOST_REF=registry.k8s.io/e2e-test-images/agnhost:<version>
#   CNP_AGNHOST=/abs/path/cnp-agnhost-<hash>.oci.tar
#   CNP_AGNHOST_REF=registry.k8s.io/e2e-test-images/agnhost:<the suite's tag>
# Everything else (progress, build output) goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
cache="${NETPOL_AGENT_IMAGE_CACHE:-${NETPOL_AGENT_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/netpol-agent}/images}"

log() { printf 'images.sh: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

want_pause=0 want_netprobe=0 want_agent=0 want_agnhost=0 want_cnp_agnhost=0 agent_tag=""
while (($#)); do
    case "$1" in
        pause) want_pause=1 ;;
        netprobe) want_netprobe=1 ;;
        agent) want_agent=1 ;;
        agnhost) want_agnhost=1 ;;
        cnp-agnhost) want_cnp_agnhost=1 ;;
        --tag)
            (($# >= 2)) || die "--tag needs a value"
            agent_tag="$2"
            [[ "${agent_tag}" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "bad tag '${agent_tag}'"
            want_agent=1
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) die "unknown argument '$1' (pause, netprobe, agent [--tag TAG], agnhost, cnp-agnhost)" ;;
    esac
    shift
done
((want_pause + want_netprobe + want_agent + want_agnhost + want_cnp_agnhost)) || want_pause=1 want_netprobe=1 want_agent=1

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
    # Whoever holds the lock owns the cache and the buildah storage: clear what a run that
    # died left behind (half-written archives, working containers, scratch files).
    rm -f "${cache}"/*.tmp.*
    if [[ -d "${bh_dir}/root" ]]; then
        setup_buildah
        bh rm --all >/dev/null 2>&1 || true
        bh rmi --prune >/dev/null 2>&1 || true
        rm -rf "${bh_dir:?}/tmp/"*
    fi
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

# --- agnhost --------------------------------------------------------------------------
# The e2e suite's agnhost, named as the pinned suite's image manifest says.
agnhost_recipe="agnhost v1: build-e2e.sh agnhost; FROM scratch; /agnhost, /agnhost-2, porter's localhost.crt/key, /uploads"
agnhost_inputs() {
    local out gocmd moddir manifest version
    out="$(bash "${repo}/tests/cluster/build-e2e.sh" agnhost)" || die "build-e2e.sh agnhost failed"
    agnhost_bin="$(sed -n 's/^AGNHOST=//p' <<<"${out}" | tail -n1)"
    [[ -x "${agnhost_bin}" ]] || die "build-e2e.sh printed no AGNHOST="
    gocmd="$(bash "${repo}/scripts/go-toolchain.sh" | tail -n1)"
    moddir="$(cd "${repo}/tests/cluster/gobuild/e2e" && env -u GOROOT GOTOOLCHAIN=local \
        GOFLAGS=-mod=readonly "${gocmd}" list -m -f '{{.Dir}}' k8s.io/kubernetes)"
    agnhost_src="${moddir}/test/images/agnhost"
    manifest="${moddir}/test/utils/image/manifest.go"
    # configs[Agnhost] = Config{list.PromoterE2eRegistry, "agnhost", "2.66.1"}
    version="$(sed -n 's/^[[:space:]]*configs\[Agnhost\] = Config{list.PromoterE2eRegistry, "agnhost", "\([^"]*\)"}.*/\1/p' "${manifest}")"
    [[ -n "${version}" ]] || die "no Agnhost entry in ${manifest}"
    agnhost_ref="registry.k8s.io/e2e-test-images/agnhost:${version}"
    agnhost_hash="$( {
        echo "${agnhost_recipe}"
        echo "${agnhost_ref}"
        sha256sum "${agnhost_bin}" "${agnhost_src}/porter/localhost.crt" "${agnhost_src}/porter/localhost.key" | cut -d' ' -f1
    } | hash_inputs)"
    agnhost_archive="${cache}/agnhost-${agnhost_hash}.oci.tar"
}

build_agnhost() {
    agnhost_inputs
    [[ -s "${agnhost_archive}" ]] && return
    lock
    [[ -s "${agnhost_archive}" ]] && return
    setup_buildah
    local start=${SECONDS} work ctr
    log "building ${agnhost_ref} from ${agnhost_bin}"
    work="$(mktemp -d "${bh_dir}/tmp/agnhost.XXXXXX")"
    mkdir -p "${work}/root/uploads"
    cp "${agnhost_bin}" "${work}/root/agnhost"
    chmod 0755 "${work}/root/agnhost"
    ln -s agnhost "${work}/root/agnhost-2"
    cp "${agnhost_src}/porter/localhost.crt" "${agnhost_src}/porter/localhost.key" "${work}/root/"
    chmod 0644 "${work}/root/localhost.crt" "${work}/root/localhost.key"
    ctr="$(bh from --quiet --signature-policy "${bh_dir}/policy.json" scratch)"
    containers+=("${ctr}")
    bh copy --quiet "${ctr}" "${work}/root/" / >/dev/null
    bh config --entrypoint '["/agnhost"]' --cmd '["pause"]' --workingdir / \
        --port 80 --port 8080 --port 8081 --port 9376 --port 5000 \
        --label "org.opencontainers.image.title=agnhost" \
        --label "netpol-agent.inputs=${agnhost_hash}" "${ctr}"
    commit_archive "${ctr}" "${agnhost_archive}" "${agnhost_ref}"
    rm -rf "${work}"
    log "built ${agnhost_archive} ($(du -h "${agnhost_archive}" | cut -f1)) in $((SECONDS - start))s"
}

# --- cnp-agnhost -----------------------------------------------------------------------
# The network-policy-api conformance suite's agnhost: the agnhost above plus a static bash.
cnp_agnhost_recipe="cnp-agnhost v1: agnhost v1 + /bin/bash from bash-static; FROM scratch"
cnp_agnhost_inputs() {
    agnhost_inputs
    local gocmd moddir manifests tag
    gocmd="$(bash "${repo}/scripts/go-toolchain.sh" | tail -n1)"
    # `go mod download` prints the module's directory (and fetches it on first use).
    moddir="$(cd "${repo}/tests/cluster/gobuild/netpolapi-conformance" && env -u GOROOT \
        GOTOOLCHAIN=local GOFLAGS=-mod=readonly "${gocmd}" mod download -json \
        sigs.k8s.io/network-policy-api | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    manifests="${moddir}/conformance/base/manifests.yaml"
    [[ -s "${manifests}" ]] || die "no ${manifests}"
    tag="$(sed -n 's|^[[:space:]]*image: registry.k8s.io/e2e-test-images/agnhost:\([^[:space:]]*\)$|\1|p' "${manifests}" | sort -u)"
    [[ -n "${tag}" && "${tag}" != *$'\n'* ]] || die "not one agnhost tag in ${manifests}: ${tag}"
    cnp_agnhost_ref="registry.k8s.io/e2e-test-images/agnhost:${tag}"
    cnp_bash=/bin/bash-static
    [[ -x "${cnp_bash}" ]] || die "${cnp_bash} is missing (Debian's bash-static; scripts/setup-host.sh)"
    cnp_agnhost_hash="$( {
        echo "${cnp_agnhost_recipe}"
        echo "${cnp_agnhost_ref}"
        echo "${agnhost_hash}"
        sha256sum "${cnp_bash}" | cut -d' ' -f1
    } | hash_inputs)"
    cnp_agnhost_archive="${cache}/cnp-agnhost-${cnp_agnhost_hash}.oci.tar"
}

build_cnp_agnhost() {
    cnp_agnhost_inputs
    [[ -s "${cnp_agnhost_archive}" ]] && return
    lock
    [[ -s "${cnp_agnhost_archive}" ]] && return
    setup_buildah
    local start=${SECONDS} work ctr
    log "building ${cnp_agnhost_ref} from ${agnhost_bin} and ${cnp_bash}"
    work="$(mktemp -d "${bh_dir}/tmp/cnp-agnhost.XXXXXX")"
    mkdir -p "${work}/root/bin" "${work}/root/uploads" "${work}/root/tmp"
    cp "${agnhost_bin}" "${work}/root/agnhost"
    ln -s agnhost "${work}/root/agnhost-2"
    cp "${cnp_bash}" "${work}/root/bin/bash"
    ln -s bash "${work}/root/bin/sh"
    chmod 0755 "${work}/root/agnhost" "${work}/root/bin/bash"
    chmod 1777 "${work}/root/tmp"
    cp "${agnhost_src}/porter/localhost.crt" "${agnhost_src}/porter/localhost.key" "${work}/root/"
    chmod 0644 "${work}/root/localhost.crt" "${work}/root/localhost.key"
    ctr="$(bh from --quiet --signature-policy "${bh_dir}/policy.json" scratch)"
    containers+=("${ctr}")
    bh copy --quiet "${ctr}" "${work}/root/" / >/dev/null
    bh config --entrypoint '["/agnhost"]' --cmd '["pause"]' --workingdir / \
        --label "org.opencontainers.image.title=agnhost" \
        --label "netpol-agent.inputs=${cnp_agnhost_hash}" "${ctr}"
    commit_archive "${ctr}" "${cnp_agnhost_archive}" "${cnp_agnhost_ref}"
    rm -rf "${work}"
    log "built ${cnp_agnhost_archive} ($(du -h "${cnp_agnhost_archive}" | cut -f1)) in $((SECONDS - start))s"
}

# --- base: the stand-in for python:3.11-slim-bookworm ---------------------------------------
# python:3.11-slim-bookworm is debian:bookworm-slim plus a CPython 3.11 built from source
# into /usr/local, with pip. Here: a minbase bookworm root filesystem from Debian's
# packages (mmdebstrap), with Debian's python3.11. It mimics what the Dockerfile relies on;
# the differences, each on purpose:
# - Python is Debian's (/usr/bin/python3.11, stdlib in /usr/lib/python3.11), not a build
#   in /usr/local. `pip install` as root still puts packages under /usr/local/lib (Debian's
#   dist-packages, not site-packages) and console scripts in /usr/local/bin, like the real
#   image.
# - pip is Debian's python3-pip (pip 23.0 in bookworm; the real image has a newer pip from
#   PyPI), on PATH as pip and pip3, with Debian's setuptools and wheel beside it. Builds
#   with pyproject.toml use build isolation and fetch their own setuptools either way.
# - No EXTERNALLY-MANAGED marker: Debian's python3.11 ships
#   /usr/lib/python3.11/EXTERNALLY-MANAGED (PEP 668), which makes `pip install` outside a
#   venv fail; the real image has none (its Python is not the distribution's), so the
#   marker is removed.
# - python3.11-venv is included: the real image's Python has venv and ensurepip built in.
# - python-is-python3: the real image has a `python` command.
# - No Python headers (python3.11-dev): the real image has them in /usr/local/include.
#   Nothing here compiles against Python.h (python-iptables' helper is plain C); add
#   python3.11-dev to base_packages if that changes.
# - /usr is merged the way debootstrap does it (mmdebstrap's merged-usr hook, which
#   installs usr-is-merged), as in debian:bookworm-slim, rather than with the usrmerge
#   package, which would pull in perl.
# - apt and dpkg are configured like debian:bookworm-slim: no docs, man pages or locales
#   installed, no apt caches or .debs kept, no translations fetched; ENV PATH puts
#   /usr/local/bin first and LANG=C.UTF-8; CMD python3.
# - Packages come from the bookworm, bookworm-updates and bookworm-security suites as of
#   the build, so they are at least as new as the real image's.
base_packages="python3.11 python3.11-venv python3-pip python-is-python3 ca-certificates netbase tzdata"
base_mirror="${NETPOL_AGENT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
base_security="${NETPOL_AGENT_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
base_recipe="base v3: mmdebstrap minbase bookworm (+updates, security); slim dpkg/apt config; no EXTERNALLY-MANAGED"
base_hash="$(printf '%s\n' "${base_recipe}" "${base_packages}" "${base_mirror}" "${base_security}" | hash_inputs)"
base_archive="${cache}/python-bookworm-${base_hash}.oci.tar"
base_ref="localhost/netpol-test/python:3.11-slim-bookworm-${base_hash}"

# What debian:bookworm-slim's /etc/dpkg/dpkg.cfg.d/docker and /etc/apt/apt.conf.d/docker-*
# say (see above), as mmdebstrap options; mmdebstrap keeps them in the root filesystem, so
# they hold for the Dockerfile's apt-get too.
base_dpkgopts=(
    'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright'
    'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/groff/*'
    'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/lintian/*'
    'path-exclude=/usr/share/linda/*' 'path-exclude=/usr/share/locale/*'
    'path-include=/usr/share/locale/locale.alias'
)
base_aptopts=(
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };'
    'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";'
    'Acquire::GzipIndexes "true";'
    'Acquire::Languages "none";'
    'Apt::AutoRemove::SuggestsImportant "false";'
)

# build_base: the base image in buildah's storage (from the cached archive if there is
# one, else built with mmdebstrap and archived).
build_base() {
    setup_buildah
    if ! bh inspect --type image "${base_ref}" >/dev/null 2>&1; then
        load_base
    fi
    # Only the current base is kept (in storage and as an archive).
    local old
    for old in $(bh images --format '{{.Name}}:{{.Tag}}' | grep -F "${base_ref%:*}:" | grep -vxF "${base_ref}"); do
        bh rmi "${old}" >/dev/null 2>&1 || true
    done
    find "${cache}" -maxdepth 1 -name 'python-bookworm-*.oci.tar' ! -name "${base_archive##*/}" -delete
}

load_base() {
    if [[ ! -s "${base_archive}" ]]; then
        command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (scripts/setup-host.sh)"
        local start=${SECONDS} work ctr opts=() o
        log "building base image ${base_ref} with mmdebstrap (${base_packages})"
        work="$(mktemp -d "${bh_dir}/tmp/base.XXXXXX")"
        for o in "${base_dpkgopts[@]}"; do opts+=(--dpkgopt="${o}"); done
        for o in "${base_aptopts[@]}"; do opts+=(--aptopt="${o}"); done
        # shellcheck disable=SC2016  # "$1" is for mmdebstrap's hook
        mmdebstrap --mode=root --variant=minbase --format=tar --quiet \
            --include="${base_packages// /,}" "${opts[@]}" \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
            bookworm "${work}/rootfs.tar" \
            "deb ${base_mirror} bookworm main" \
            "deb ${base_mirror} bookworm-updates main" \
            "deb ${base_security} bookworm-security main" >&2
        ctr="$(bh from --quiet --signature-policy "${bh_dir}/policy.json" scratch)"
        containers+=("${ctr}")
        bh add --quiet "${ctr}" "${work}/rootfs.tar" / >/dev/null
        bh config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
            --env LANG=C.UTF-8 --cmd '["python3"]' \
            --label "org.opencontainers.image.title=python:3.11-slim-bookworm stand-in" \
            --label "netpol-agent.inputs=${base_hash}" "${ctr}"
        commit_archive "${ctr}" "${base_archive}" "${base_ref}"
        rm -rf "${work}"
        log "built ${base_archive} ($(du -h "${base_archive}" | cut -f1)) in $((SECONDS - start))s"
    fi
    bh pull --quiet --signature-policy "${bh_dir}/policy.json" "oci-archive:${base_archive}" >/dev/null
    bh inspect --type image "${base_ref}" >/dev/null || die "${base_archive} did not load as ${base_ref}"
}

# --- Go builder stand-in ----------------------------------------------------------------
# GO_IMAGE stands in for golang:<version>-bookworm, which the Dockerfile's CNI-plugin stage
# uses: the base above plus the Go release the project pins (scripts/go-toolchain.sh), in
# /usr/local/go with GOPATH=/go and go on PATH, as in the real image. Differences: no gcc,
# git or other buildpack-deps tools (the plugin builds with CGO_ENABLED=0 from modules).
# It lives only in buildah's storage and is made again from the cached base when missing.
go_bin="$(bash "${repo}/scripts/go-toolchain.sh" | tail -n1)"
go_root="$(cd "$(dirname "${go_bin}")/.." && pwd)"
go_version="$("${go_bin}" env GOVERSION)"
go_image_hash="$(printf '%s\n' "go image v1" "${base_hash}" "${go_version}" | hash_inputs)"
go_image_ref="localhost/netpol-test/golang:${go_version#go}-bookworm-${go_image_hash}"

build_go_image() {
    build_base
    bh inspect --type image "${go_image_ref}" >/dev/null 2>&1 && return 0
    local ctr
    log "making ${go_image_ref} (the base + ${go_version} from ${go_root})"
    ctr="$(bh from --quiet --pull=never --signature-policy "${bh_dir}/policy.json" "${base_ref}")"
    containers+=("${ctr}")
    bh copy --quiet "${ctr}" "${go_root}" /usr/local/go >/dev/null
    bh config --env GOPATH=/go --env GOTOOLCHAIN=local \
        --env PATH=/go/bin:/usr/local/go/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
        --label "org.opencontainers.image.title=golang:${go_version#go}-bookworm stand-in" "${ctr}"
    bh commit --quiet --signature-policy "${bh_dir}/policy.json" "${ctr}" "${go_image_ref}" >/dev/null
    # Only the current stand-in is kept.
    local old
    for old in $(bh images --format '{{.Name}}:{{.Tag}}' | grep -F "${go_image_ref%:*}:" | grep -vxF "${go_image_ref}"); do
        bh rmi "${old}" >/dev/null 2>&1 || true
    done
}

# --- agent -----------------------------------------------------------------------------
agent_recipe="agent v2: buildah bud --layers=false --pull=never, PYTHON_IMAGE=${base_ref}, GO_IMAGE=${go_image_ref}"
agent_hash="$( {
    echo "${agent_recipe}"
    file_digests Dockerfile .dockerignore pyproject.toml README.md agent cni
} | hash_inputs)"
agent_archive="${cache}/agent-${agent_hash}.oci.tar"
agent_ref="localhost/netpol-agent:dev-${agent_hash}"

build_agent() {
    if [[ ! -s "${agent_archive}" ]]; then
        lock
    fi
    if [[ ! -s "${agent_archive}" ]]; then
        build_go_image
        local start=${SECONDS} tmp trust=()
        # The RUN steps fetch from Debian and PyPI through this machine's network, so they
        # trust what this machine trusts (its CA bundle, e.g. with a TLS-inspecting proxy),
        # through a read-only bind mount that is not part of the image.
        if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
            trust=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
        fi
        log "building ${agent_ref} from the Dockerfile (PYTHON_IMAGE=${base_ref}, GO_IMAGE=${go_image_ref})"
        bh bud --isolation chroot --layers=false --pull=never "${trust[@]}" \
            --signature-policy "${bh_dir}/policy.json" \
            --build-arg "PYTHON_IMAGE=${base_ref}" --build-arg "GO_IMAGE=${go_image_ref}" \
            --label "netpol-agent.inputs=${agent_hash}" \
            -f "${repo}/Dockerfile" -t "${agent_ref}" "${repo}" >&2
        tmp="${agent_archive}.tmp.$$"
        rm -f "${tmp}"
        bh push --quiet --signature-policy "${bh_dir}/policy.json" \
            "${agent_ref}" "oci-archive:${tmp}:${agent_ref}" >/dev/null
        mv -f "${tmp}" "${agent_archive}"
        bh rmi "${agent_ref}" >/dev/null
        log "built ${agent_archive} ($(du -h "${agent_archive}" | cut -f1)) in $((SECONDS - start))s"
        # Keep the dozen most recently used agent archives (and re-tagged copies), not all.
        find "${cache}" -maxdepth 1 -name 'agent-*.oci.tar' -printf '%T@ %p\n' | sort -rn |
            awk 'NR > 12 { print $2 }' | xargs -r rm -f
    fi
    touch "${agent_archive}"
    [[ -n "${agent_tag}" ]] || return 0
    # The same image under another name: only index.json's ref annotation differs.
    local tagged="${cache}/agent-${agent_hash}-${agent_tag}.oci.tar"
    agent_ref="localhost/netpol-agent:${agent_tag}"
    if [[ ! -s "${tagged}" ]]; then
        lock
        retag_archive "${agent_archive}" "${tagged}" "${agent_ref}"
    fi
    agent_archive="${tagged}"
}

# retag_archive SRC DST REF: copy the OCI archive SRC to DST with its image named REF.
retag_archive() {
    python3 - "$@" <<'PY'
import io, json, os, sys, tarfile

src, dst, ref = sys.argv[1:]
tmp = f"{dst}.tmp.{os.getpid()}"
with tarfile.open(src) as tin, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tout:
    for member in tin:
        data = tin.extractfile(member) if member.isfile() else None
        if member.name == "index.json":
            index = json.load(data)
            for manifest in index["manifests"]:
                manifest.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = ref
            body = json.dumps(index, separators=(",", ":")).encode()
            member.size = len(body)
            data = io.BytesIO(body)
        tout.addfile(member, data)
os.replace(tmp, dst)
PY
}

((want_pause)) && build_pause
((want_netprobe)) && build_netprobe
((want_agent)) && build_agent
((want_agnhost)) && build_agnhost
((want_cnp_agnhost)) && build_cnp_agnhost

((want_pause)) && printf 'PAUSE=%s\nPAUSE_REF=%s\n' "${pause_archive}" "${pause_ref}"
((want_netprobe)) && printf 'NETPROBE_BIN=%s\nNETPROBE=%s\nNETPROBE_REF=%s\n' \
    "${netprobe_bin}" "${netprobe_archive}" "${netprobe_ref}"
((want_agent)) && printf 'AGENT=%s\nAGENT_REF=%s\n' "${agent_archive}" "${agent_ref}"
((want_agnhost)) && printf 'AGNHOST=%s\nAGNHOST_REF=%s\n' "${agnhost_archive}" "${agnhost_ref}"
((want_cnp_agnhost)) && printf 'CNP_AGNHOST=%s\nCNP_AGNHOST_REF=%s\n' \
    "${cnp_agnhost_archive}" "${cnp_agnhost_ref}"
exit 0
