#!/usr/bin/env bash
# Makes a Docker engine available for the Docker plugin's tests: starts
# Debian's dockerd in the background when no engine answers (this machine
# has no systemd), and builds the test image `tessera-test/busybox` from
# busybox-static with `docker import` (no registry is reachable here).
# Idempotent. Prints the pid of a dockerd it started to $TESSERA_DOCKERD_PIDFILE.
set -euo pipefail
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=docker
PIDFILE="${TESSERA_DOCKERD_PIDFILE:-/run/tessera-dockerd.pid}"
LOG="${TESSERA_DOCKERD_LOG:-/var/log/tessera-dockerd.log}"
IMAGE=tessera-test/busybox

if ! "$DOCKER" info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { echo "docker.sh: dockerd is missing; run scripts/setup.sh" >&2; exit 1; }
  echo "docker.sh: starting dockerd (log: $LOG)" >&2
  setsid dockerd >"$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 60); do
    "$DOCKER" info >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$DOCKER" info >/dev/null 2>&1 || { echo "docker.sh: dockerd did not come up; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
fi

if ! "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/bin" "$root/data" "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for app in sh cat cp dd echo ls mkdir rm sleep sha256sum sync test true false seq wc head tail stat find xargs touch printf; do
    ln -s busybox "$root/bin/$app"
  done
  tar -C "$root" -c . | "$DOCKER" import -c 'ENV PATH=/bin' - "$IMAGE" >/dev/null
  echo "docker.sh: built image $IMAGE" >&2
fi
