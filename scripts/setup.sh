#!/usr/bin/env bash
# Installs what building and testing Tessera needs on a fresh Debian 12 machine.
# Idempotent: skips what is already there. Run as root (or with sudo available).
# Extra Debian packages a benchmark needs come as arguments
# (`scripts/setup.sh postgresql`).
set -euo pipefail

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# docker.io and busybox-static: the Docker volume plugin's tests run a real
# engine and build their test image from busybox with `docker import`.
# iproute2: the benchmarks pick free ports with `ss`. python3: the database
# tests drive SQLite with it (its sqlite3 module). postgresql: a database
# test runs pgbench and a crash on a mount. etcd-server: the metadata
# store's etcd backend is tested against real members. protobuf-compiler:
# the etcd-client crate compiles etcd's .proto files with the system's
# protoc (Tessera's own use a vendored one).
for pkg in libclang-dev clang fuse3 fio build-essential pkg-config docker.io busybox-static curl iproute2 python3 postgresql etcd-server protobuf-compiler "$@"; do
  have "$pkg" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}"
fi
# FUSE needs its device node; containers sometimes lack it.
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: this machine cannot mount FUSE" >&2; exit 1; }
