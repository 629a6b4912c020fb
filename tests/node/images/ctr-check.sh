#!/usr/bin/env bash
# Check images the way a node will use them: start a throwaway containerd (its own root,
# state, socket and config under a run-unique /tmp dir), `ctr -n k8s.io images import`
# each archive, check that it is listed under the expected ref, and optionally run a
# command in it with runc.
#
#   bash tests/node/images/ctr-check.sh ARCHIVE REF [-- ARGV...] [, ARCHIVE REF [-- ARGV...]]...
#
# (a lone "," separates the images; all are imported into the same containerd).
# Example (after images.sh):
#   bash tests/node/images/ctr-check.sh "$PAUSE" "$PAUSE_REF" -- /pause -v
# CTR_RUN_ARGS (word-split) adds options to every `ctr run`, e.g.
#   CTR_RUN_ARGS="--read-only --mount type=bind,src=/tmp/s.yaml,dst=/s.yaml,options=rbind:ro"
# The containerd started here is stopped by its PID and its directories removed on exit.
set -euo pipefail

log() { printf 'ctr-check.sh: %s\n' "$*" >&2; }

# Reap what a run that was killed left behind: processes whose command line names its
# run dir (its containerd and shims, nothing else) and the dir itself.
for stale in /tmp/netpol-ctrcheck.*; do
    [[ -f "${stale}/owner" ]] || continue
    kill -0 "$(cat "${stale}/owner")" 2>/dev/null && continue
    # Its containers: runc's state is in the run dir (runc/<namespace>), their cgroups
    # are /<run dir name>-N.
    for root in "${stale}"/runc/*/; do
        for id in $(runc --root "${root}" list -q 2>/dev/null); do
            runc --root "${root}" delete -f "${id}" >/dev/null 2>&1 || true
        done
    done
    for proc in /proc/[0-9]*; do
        # (no `| grep -q` under pipefail: grep leaving early fails the writer with SIGPIPE)
        if [[ "$(tr '\0' ' ' <"${proc}/cmdline" 2>/dev/null)" == *"${stale}/"* ]]; then
            kill -KILL "${proc#/proc/}" 2>/dev/null || true
        fi
    done
    grep -o " ${stale}/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "${stale}"
    find /sys/fs/cgroup -maxdepth 2 -type d -name "${stale##*/}-*" -delete 2>/dev/null || true
done

run="$(mktemp -d /tmp/netpol-ctrcheck.XXXXXX)"
echo $$ >"${run}/owner"
sock="${run}/containerd.sock"
pid=""
cleanup() {
    if [[ -n "${pid}" ]]; then
        # Tasks and containers first, so no shim outlives its containerd.
        local c
        for c in $(ctr --address "${sock}" -n k8s.io containers ls -q 2>/dev/null); do
            ctr --address "${sock}" -n k8s.io tasks kill -s KILL "${c}" >/dev/null 2>&1 || true
            ctr --address "${sock}" -n k8s.io tasks rm -f "${c}" >/dev/null 2>&1 || true
            ctr --address "${sock}" -n k8s.io containers rm "${c}" >/dev/null 2>&1 || true
        done
        kill "${pid}" 2>/dev/null || true
        wait "${pid}" 2>/dev/null || true
    fi
    # Snapshots may still be mounted if containerd died mid-way.
    grep -o " ${run}/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "${run}"
}
trap cleanup EXIT

cat >"${run}/config.toml" <<CFG
version = 2
root = "${run}/root"
state = "${run}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "${sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "${run}/opt"
CFG
containerd --config "${run}/config.toml" >"${run}/containerd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    ctr --address "${sock}" version >/dev/null 2>&1 && break
    kill -0 "${pid}" 2>/dev/null || {
        cat "${run}/containerd.log" >&2
        log "containerd exited"
        exit 1
    }
    sleep 0.1
done
c() { ctr --address "${sock}" -n k8s.io "$@"; }

n=0
while (($#)); do
    archive="$1" ref="$2"
    shift 2
    argv=()
    if (($#)) && [[ "$1" == "--" ]]; then
        shift
        while (($#)) && [[ "$1" != "," ]]; do
            argv+=("$1")
            shift
        done
    fi
    if (($#)) && [[ "$1" == "," ]]; then shift; fi
    start=${SECONDS}
    c images import "${archive}" >&2
    if ! grep -qxF "${ref}" <<<"$(c images ls -q)"; then
        log "FAIL: ${archive} did not import as ${ref}; images:"
        c images ls >&2
        exit 1
    fi
    log "ok: ${archive} imported as ${ref} in $((SECONDS - start))s"
    if ((${#argv[@]})); then
        n=$((n + 1))
        log "running in ${ref}: ${argv[*]}"
        # shellcheck disable=SC2086  # word-split on purpose
        c run --rm --fifo-dir "${run}/fifo" --runc-root "${run}/runc" \
            --cgroup "/${run##*/}-${n}" ${CTR_RUN_ARGS:-} "${ref}" "${run##*/}-${n}" "${argv[@]}"
    fi
done
