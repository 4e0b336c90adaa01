#!/usr/bin/env bash
# Builds the medfl container image (deploy/Dockerfile) used by deploy/docker-compose.yml.
#
#   deploy/build-images.sh [--engine docker|podman] [--tag IMAGE] [--base BASE]
#
# With a Docker engine: `docker build` of the default target ("runtime"): compiled inside
# BASE (default debian:bookworm-slim), runtime libraries from apt.
#
# With podman and no registry (these machines): the programs are compiled here with
#   make USE_CUDA=0 BUILD=build-container BIN=build-container/bin
# (no cuBLAS in containers: its libraries are about 1 GB), then staged with every shared
# library `ldd` lists, at the same paths (dynamic loader included), plus bash and the few
# coreutils the entry point uses, into build-container/context; the image is built FROM
# scratch from that folder (target "staged"). This takes seconds and needs no network,
# unlike a debootstrap root filesystem. The image carries a label with a hash of the
# staged context: when nothing changed, the build is skipped.
#
# IMAGE defaults to $MEDFL_IMAGE or localhost/medfl:sim. The image holds no keys and no
# records: those are made in volumes by the compose file's init service.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/container-env.sh
. "$REPO/deploy/container-env.sh"

TAG=${MEDFL_IMAGE:-localhost/medfl:sim}
BASE=debian:bookworm-slim
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) MEDFL_ENGINE=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --base) BASE=$2; shift 2 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "build-images: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
rc=0
medfl_engine_setup "$REPO" || rc=$?
[ $rc -eq 0 ] || exit $rc

say() { echo "build-images: $*" >&2; }

if [ "$ENGINE" = docker ]; then
  say "docker build (target runtime, BASE=$BASE) -> $TAG"
  docker build -f "$REPO/deploy/Dockerfile" --build-arg BASE="$BASE" -t "$TAG" "$REPO" >&2
  exit 0
fi

# ---- podman, FROM scratch ------------------------------------------------------------------
OUT=$REPO/build-container
say "compiling (CPU only) into $OUT/bin"
make -C "$REPO" --no-print-directory -j2 USE_CUDA=0 BUILD=build-container BIN=build-container/bin \
  build-container/bin/medfl-node build-container/bin/medfl-aggregator >&2

CTX=$OUT/context
rm -rf "$CTX.new"
ROOT=$CTX.new/rootfs
mkdir -p "$ROOT/usr/local/bin" "$ROOT/etc" "$ROOT/tmp" "$CTX.new/etc-medfl"
chmod 1777 "$ROOT/tmp"
install -m 0755 "$OUT/bin/medfl-node" "$OUT/bin/medfl-aggregator" "$ROOT/usr/local/bin/"
install -m 0755 "$REPO/deploy/medfl-entrypoint.sh" "$ROOT/usr/local/bin/medfl-entrypoint"

for d in bin sbin lib lib64 lib32 libx32; do
  if [ -L "/$d" ]; then
    mkdir -p "$ROOT/$(readlink -f "/$d")"
    ln -s "$(readlink "/$d")" "$ROOT/$d"
  fi
done
# Programs the entry point and an operator's `exec` need, at their host paths.
TOOLS=(bash sleep id mkdir cp chmod chown cat basename ls rm)
progs=("$ROOT/usr/local/bin/medfl-node" "$ROOT/usr/local/bin/medfl-aggregator")
for t in "${TOOLS[@]}"; do
  p=$(command -v "$t") || { say "error: '$t' not found on this machine"; exit 1; }
  p=$(readlink -f "$p")
  cp -L --parents "$p" "$ROOT/"
  progs+=("$p")
done
# /bin/bash (the entry point's interpreter) and /bin/sh must exist: on a merged-/usr host
# /bin, /lib... are links into /usr, and the staged tree gets the same links.
[ -x "$ROOT/bin/bash" ] || { say "error: /bin/bash missing from the staged tree"; exit 1; }
ln -sf bash "$ROOT/bin/sh"

# The shared-library closure: ldd already resolves it transitively.
libs=$(ldd "${progs[@]}" 2>&1 | awk '
  /not found/ { print "MISSING " $1; next }
  $2 == "=>" && $3 ~ /^\// { print $3; next }
  $1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }' | sort -u)
if grep -q '^MISSING' <<<"$libs"; then
  say "error: ldd cannot resolve: $(grep '^MISSING' <<<"$libs" | tr '\n' ' ')"
  exit 1
fi
for l in $libs; do cp -L --parents "$l" "$ROOT/"; done
# glibc's own resolver (files + dns) is inside libc since 2.34; say so explicitly.
echo "medfl-entrypoint writes this container's config here at every start" >"$CTX.new/etc-medfl/README"
printf 'hosts: files dns\npasswd: files\ngroup: files\n' >"$ROOT/etc/nsswitch.conf"
printf 'root:x:0:0:root:/root:/bin/bash\nmedfl:x:10001:10001:medfl:/nonexistent:/bin/false\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nmedfl:x:10001:\n' >"$ROOT/etc/group"
cp "$REPO/deploy/Dockerfile" "$CTX.new/Dockerfile"

# Content hash of what goes into the image (file names, modes, bytes), for the cache.
hash=$(cd "$CTX.new" && find . -print0 | LC_ALL=C sort -z |
  xargs -0 stat -c '%n %a %F' | sha256sum | cut -c1-16)
hash=$hash-$(cd "$CTX.new" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 cat |
  sha256sum | cut -c1-16)
rm -rf "$CTX"
mv "$CTX.new" "$CTX"

have=$(podman image inspect --format '{{index .Config.Labels "medfl.context"}}' "$TAG" 2>/dev/null || true)
if [ "$have" = "$hash" ]; then
  say "$TAG is up to date (context $hash)"
  exit 0
fi
say "podman build (target staged, FROM scratch, $(du -sh "$ROOT" | cut -f1)) -> $TAG"
podman build --target staged --label "medfl.context=$hash" -f "$CTX/Dockerfile" -t "$TAG" "$CTX" >&2
# The image this one replaced is left untagged: drop it (only images of this script).
podman image prune -f --filter label=medfl.context >/dev/null 2>&1 || true
say "built $TAG (context $hash)"
