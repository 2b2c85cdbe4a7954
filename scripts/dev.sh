#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds Tessera, starts a local cluster
# (metadata + 6 storage nodes) and mounts volume "demo" (ec:4+2) on
# $TESSERA_MNT (default /mnt/tessera). Ctrl-C unmounts and stops everything.
# Running it again resumes the same cluster and data.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${TESSERA_DEV_DATA:-$PWD/dev-data}"
MNT="${TESSERA_MNT:-/mnt/tessera}"
export TESSERA_META="${TESSERA_META:-127.0.0.1:7400}"

bash scripts/setup.sh
cargo build --release -p tessera
BIN="$PWD/target/release/tessera"

mkdir -p "$DATA" "$MNT"
# The cluster listens where TESSERA_META says (nodes on the ports after it).
"$BIN" dev --data "$DATA" --nodes 6 --port "${TESSERA_META##*:}" &
DEV=$!
MOUNT=""
stop() {
  trap - INT TERM EXIT
  if [ -n "$MOUNT" ]; then umount "$MNT" 2>/dev/null || kill "$MOUNT" 2>/dev/null || true; wait "$MOUNT" 2>/dev/null || true; fi
  kill "$DEV" 2>/dev/null || true
  wait "$DEV" 2>/dev/null || true
}
trap stop INT TERM EXIT

for _ in $(seq 100); do
  [ "$("$BIN" node ls 2>/dev/null | grep -c ' up ')" -ge 6 ] && break
  sleep 0.2
done
"$BIN" volume inspect demo >/dev/null 2>&1 || "$BIN" volume create demo --size 10GiB --protection ec:4+2
"$BIN" mount demo "$MNT" &
MOUNT=$!
for _ in $(seq 100); do grep -qs " $MNT fuse" /proc/mounts && break; sleep 0.1; done
echo
echo "Volume demo is mounted on $MNT. Try: echo hello > $MNT/hello; $BIN volume ls"
echo "Ctrl-C unmounts it and stops the cluster."
wait "$MOUNT"
