#!/usr/bin/env bash
# Build the lab's SYN sender (synflood.c) once per source version; print its path.
#
# The binary lives outside the repository, in
#   ${NETPOL_AGENT_CACHE:-${XDG_CACHE_HOME:-~/.cache}/netpol-agent}/bin/synflood-<hash>
# where <hash> covers synflood.c, the compiler flags and gcc's version: an unchanged
# source is never rebuilt, a changed one gets a new binary. libc only (gcc and libc6-dev
# come from scripts/setup-host.sh). Concurrent callers are safe: each builds into its own
# temporary file and renames it into place.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${NETPOL_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-agent}/bin"
flags=(-O2 -Wall -Wextra -Werror -std=c11 -s)
hash="$( { cat "$here/synflood.c"; echo "${flags[*]}"; gcc --version | head -n1; uname -m; } \
    | sha256sum | cut -c1-16)"
bin="$cache/synflood-$hash"
if [[ ! -x "$bin" ]]; then
    mkdir -p "$cache"
    tmp="$(mktemp "$cache/.synflood-build.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    printf 'build.sh: building synflood\n' >&2
    gcc "${flags[@]}" -o "$tmp" "$here/synflood.c"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$bin"
    trap - EXIT
fi
echo "$bin"
