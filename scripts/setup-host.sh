#!/usr/bin/env bash
# Install what netpol-agent's tests, demo and benchmarks need on a fresh Debian machine.
# Idempotent: a second run installs nothing.
#
#   Debian packages: the iptables/nftables/conntrack/iproute2/procps commands the lab,
#     the agent and the benchmarks run, openssl (the test control plane's certificates),
#     python3 + venv; for the real-node tests, containerd and runc (the container
#     runtime), the reference CNI plugins (containernetworking-plugins, in /usr/lib/cni),
#     and buildah + mmdebstrap (images built without a registry or a Docker engine);
#     bash-static (the /bin/bash in the network-policy-api conformance suite's agnhost
#     image, whose pods run `/bin/bash -c ...`).
#   Go: the toolchain pinned in tests/cluster/gobuild/kube-apiserver/go.mod, fetched once
#     into ~/.cache/netpol-agent/go by scripts/go-toolchain.sh (which, only when the
#     machine has no Go at all, installs Debian's golang-1.NN-go to fetch it with). It
#     builds etcd and the Kubernetes binaries (tests/cluster/build.sh) and the benchmark's
#     load generator. Nothing is installed into /usr/local, and no `go` is put on PATH.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

packages=(iptables nftables conntrack iproute2 procps openssl python3 python3-venv ca-certificates
  containerd runc containernetworking-plugins buildah mmdebstrap util-linux gcc libc6-dev bash-static)
missing=()
for package in "${packages[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" == "install ok installed" ]] || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "setup: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Prints the toolchain's path; does nothing when it is already in the cache.
bash "${here}/go-toolchain.sh" >/dev/null
