#!/usr/bin/env bash
# Run `make test` (or other make targets) as on a fresh Debian machine, without the
# machine's own Go, Go caches or kubectl, from a fresh clone of this branch.
#
#   sudo scripts/prove-fresh-host.sh [--keep] [--branch BRANCH] [MAKE-TARGET...]   (default: test)
#
# What it does:
#   1. `git clone` of the committed BRANCH (default: the current one) into a new
#      directory under /tmp; uncommitted changes are not part of the run.
#   2. In a private mount namespace (`unshare --mount`, private propagation: nothing is
#      visible outside, and every mount disappears with the namespace), empty tmpfs
#      directories are mounted over the machine's Go: /usr/local/go, ~/go, GOPATH,
#      GOMODCACHE, GOCACHE, ~/.cache/go-build, ~/.config/go (go env) and over
#      ~/.cache/netpol-agent; an empty, non-executable file over every `go` and
#      `kubectl` on PATH and /usr/bin/kubectl.
#   3. `make TARGET...` runs there with an empty HOME, a plain Debian PATH and no GO* or
#      NETPOL_AGENT_* variables, so the set-up fetches the Go toolchain and builds
#      etcd, kube-apiserver and kubectl from nothing. Every output line is prefixed
#      with the seconds since the start; a summary of the timings ends the run.
#   4. The clone, the empty HOME and everything built in it are removed afterwards
#      (--keep leaves them, and says where).
#
# It changes nothing outside its own directory except what the set-up itself installs
# with apt-get (scripts/setup-host.sh). The tests it runs are the project's own: they
# create their network namespaces, chains and files with run-unique names, and leave
# the root network namespace's iptables alone.
set -euo pipefail

# All in one function, so bash has read the whole file before running any of it (an
# edit to this file during the long run cannot change what the rest of the run does).
main() {

    if [[ "${1:-}" == __inside ]]; then
        # --- inside the private mount namespace -------------------------------------------
        shift
        work="$1"
        shift
        empty_file="${work}/empty"
        : >"${empty_file}"
        chmod 0644 "${empty_file}"
        while IFS= read -r path; do
            [[ -n "${path}" ]] || continue
            if [[ -d "${path}" ]]; then
                mount -t tmpfs -o size=16m,mode=0755 netpol-fresh "${path}"
                echo "hidden (empty tmpfs): ${path}"
            elif [[ -e "${path}" ]]; then
                # (a bind mount over a symlink lands on its target)
                mount --bind "${empty_file}" "${path}"
                echo "hidden (empty file):  ${path} ($(readlink -f "${path}"))"
            fi
        done <"${work}/hide"
        for tool in go kubectl gofmt; do
            # type -P lists executables only (command -v also names non-executable files)
            if found="$(type -a -P "${tool}")"; then
                echo "STILL VISIBLE: ${tool} at ${found}" >&2
                exit 1
            fi
        done
        cd "${work}/src"
        exec "$@"
    fi

    keep=0
    branch=""
    while (($#)); do
        case "$1" in
            --keep) keep=1 ;;
            --branch)
                branch="$2"
                shift
                ;;
            -h | --help)
                sed -n '2,27p' "$0"
                exit 0
                ;;
            --) shift; break ;;
            -*)
                echo "prove-fresh-host.sh: unknown option $1" >&2
                exit 2
                ;;
            *) break ;;
        esac
        shift
    done
    (($#)) || set -- test
    [[ "$(id -u)" -eq 0 ]] || {
        echo "prove-fresh-host.sh: run as root (it mounts, and make test needs root)" >&2
        exit 1
    }

    repo="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
    branch="${branch:-$(git -C "${repo}" rev-parse --abbrev-ref HEAD)}"
    work="$(mktemp -d /tmp/netpol-fresh.XXXXXX)"
    log="${work}.log"
    # shellcheck disable=SC2317  # (called by the EXIT trap)
    cleanup() {
        if ((keep)); then
            echo "kept ${work} (log ${log})"
        else
            chmod -R u+w "${work}" 2>/dev/null || true
            rm -rf "${work}"
        fi
    }
    trap cleanup EXIT

    if [[ -n "$(git -C "${repo}" status --porcelain --untracked-files=no)" ]]; then
        echo "note: ${repo} has uncommitted changes; the run uses the committed ${branch} only"
    fi
    git clone --quiet --branch "${branch}" "${repo}" "${work}/src"
    commit="$(git -C "${work}/src" rev-parse --short HEAD)"
    mkdir -p "${work}/home"

    # What to hide: the machine's Go (wherever its go env says its caches are) and kubectl.
    real_home="${HOME:-/root}"
    {
        echo /usr/local/go
        echo "${real_home}/go"
        echo "${real_home}/sdk"
        echo "${real_home}/.cache/go-build"
        echo "${real_home}/.cache/netpol-agent"
        echo "${real_home}/.config/go"
        echo /usr/bin/kubectl
        echo /usr/local/bin/kubectl
        for tool in go kubectl gofmt; do
            type -a -P "${tool}" 2>/dev/null || true
        done
        if command -v go >/dev/null 2>&1; then
            GOTOOLCHAIN=local go env GOROOT GOPATH GOMODCACHE GOCACHE 2>/dev/null | tr ':' '\n' || true
        fi
        [[ -n "${GOPATH:-}" ]] && tr ':' '\n' <<<"${GOPATH}"
        true
    } | awk 'NF && !seen[$0]++' >"${work}/hide"

    # A clean environment: empty HOME, Debian's default root PATH, no Go or project variables.
    keep_env=(TERM LANG LC_ALL http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY)
    env_args=(HOME="${work}/home" USER=root LOGNAME=root SHELL=/bin/bash
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    for name in "${keep_env[@]}" $(compgen -e | grep -E '^(PIP_|SSL_CERT_)' || true); do
        [[ -n "${!name:-}" ]] && env_args+=("${name}=${!name}")
    done

    echo "prove-fresh-host: ${branch} at ${commit}, cloned into ${work}/src"
    echo "prove-fresh-host: command: make $* (HOME=${work}/home, Go and kubectl hidden)"
    echo "prove-fresh-host: log ${log}"
    start=${SECONDS}
    started_at="$(date -u +%FT%TZ)"
    set +e
    unshare --mount --propagation private -- bash "${BASH_SOURCE[0]}" __inside "${work}" \
        env -i "${env_args[@]}" make "$@" 2>&1 |
        while IFS= read -r line; do
            printf '[%5ds] %s\n' "$((SECONDS - start))" "${line}"
        done | tee "${log}"
    rc=${PIPESTATUS[0]}
    set -e
    elapsed=$((SECONDS - start))

    echo
    echo "prove-fresh-host: summary (${branch} at ${commit}, started ${started_at})"
    grep -E 'go-toolchain.sh: (installed|fetching)|build.sh: (built|building|FAILED)' "${log}" |
        sed 's/^/  /' || true
    grep -E '^\[ *[0-9]+s\] ([0-9]+ (passed|failed|error)|=+ .*(passed|failed|error))' "${log}" |
        tail -n 1 | sed 's/^/  pytest: /' || true
    printf '  make %s: exit %d after %dm%02ds\n' "$*" "${rc}" $((elapsed / 60)) $((elapsed % 60))
    exit "${rc}"
}

main "$@"
