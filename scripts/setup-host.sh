#!/usr/bin/env bash
# Install what netpol-agent's tests, demo and benchmarks need on a fresh Debian machine.
# Idempotent: a second run installs nothing.
set -euo pipefail

packages=(iptables nftables conntrack iproute2 openssl python3-venv ca-certificates)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
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

# The real kube-apiserver and etcd for the control-plane tests are built with Go.
if ! command -v go >/dev/null 2>&1; then
  echo "setup: installing Go (Debian's; GOTOOLCHAIN fetches the version the build needs)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends golang-go >/dev/null
fi
