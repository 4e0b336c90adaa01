# shellcheck shell=bash disable=SC2034  # ENGINE and COMPOSE are for the sourcing script
# Sourced by deploy/build-images.sh and deploy/simulate.sh: picks the container engine and
# prepares it, so that both scripts agree on it.
#
# `docker` when a Docker engine answers (`docker info`), else podman + podman-compose (the
# development and CI machines have no Docker engine, only a docker client). For podman it
# installs what is missing when root (podman, podman-compose, runc, and netavark +
# aardvark-dns, without which services cannot resolve each other by name), and writes a
# private CONTAINERS_CONF rather than touching /etc/containers: this sandbox forbids raising
# RLIMIT_NOFILE (no default ulimits), has cgroups v1/hybrid (crun refuses; runc with
# cgroupfs works) and no syslog (events to a file).
#
# After medfl_engine_setup returns 0: ENGINE (docker|podman) and COMPOSE (an array: the
# compose command) are set. It returns 77 with a message when neither can run here.
# MEDFL_ENGINE=docker|podman forces a choice.

MEDFL_PODMAN_PACKAGES=(podman podman-compose runc netavark aardvark-dns)

medfl_engine_setup() {
  local repo=$1 want=${MEDFL_ENGINE:-auto}
  if [ "$want" != podman ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
    if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then COMPOSE=(docker-compose)
    else
      echo "container-env: a Docker engine runs but neither 'docker compose' nor docker-compose is installed" >&2
      return 77
    fi
    return 0
  fi
  if [ "$want" = docker ]; then
    echo "container-env: MEDFL_ENGINE=docker but 'docker info' fails (no Docker engine reachable)" >&2
    return 77
  fi
  local missing=() p
  for p in "${MEDFL_PODMAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      echo "container-env: no Docker engine, and podman is not usable: missing ${missing[*]}" >&2
      echo "container-env: as root: apt-get install -y ${MEDFL_PODMAN_PACKAGES[*]}" >&2
      return 77
    fi
    echo "container-env: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
      # a stale or absent package list is the usual reason: refresh it once
      if ! { apt-get update -qq >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; }; then
        echo "container-env: installing ${missing[*]} failed" >&2
        return 77
      fi
    fi
  fi
  if [ "$(id -u)" -ne 0 ]; then
    # Rootless podman needs subuid ranges and slirp4netns this recipe does not set up.
    echo "container-env: podman is only set up for root here (rootless needs subuids, slirp4netns)" >&2
    return 77
  fi
  if [ -z "${CONTAINERS_CONF:-}" ]; then
    mkdir -p "$repo/build-container"
    CONTAINERS_CONF=$repo/build-container/containers.conf
    cat >"$CONTAINERS_CONF" <<'CONF'
# written by deploy/container-env.sh (see docs/simulation.md, "podman on these machines")
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
[network]
network_backend = "netavark"
CONF
    export CONTAINERS_CONF
  fi
  ENGINE=podman
  COMPOSE=(podman-compose)
  return 0
}
