#!/usr/bin/env bash
# Repair benchmark: a 7-node ec:4+2 cluster on this machine. Measures the
# cluster's sequential write rate (fio, 1 MiB blocks, through FUSE), then
# SIGKILLs one node, lets it go `out`, and times the repair of its shards
# (unthrottled); prints repair rate / write rate. Then, in a second cluster
# with --repair-bandwidth set to a quarter of that write rate, writes again
# while a repair runs and prints that write rate / the undisturbed one.
#
#   bench/repair.sh [SIZE_MIB]          (default 1024; TESSERA_BIN=... picks a binary)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB="${1:-1024}"
# TESSERA_BIN picks a prebuilt binary (e.g. target/debug/tessera).
source bench/lib.sh
PIDS=()
MOUNT=""
cleanup() {
  if [ -n "$MOUNT" ]; then umount "$WORK/mnt" 2>/dev/null || umount -l "$WORK/mnt" 2>/dev/null || true; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# start_cluster RUN [meta flags...]: meta + 7 nodes; node pids in NODES[].
start_cluster() {
  local run=$1; shift
  PORT=$(free_ports 8)
  export TESSERA_META="127.0.0.1:$PORT"
  "$BIN" meta --data "$WORK/$run/meta" --listen "$TESSERA_META" \
    --down-after-secs 2 --out-after-secs 4 "$@" >"$WORK/$run-meta.log" 2>&1 &
  PIDS+=($!)
  NODES=()
  for i in 1 2 3 4 5 6 7; do
    "$BIN" node --data "$WORK/$run/node-$i" --listen "127.0.0.1:$((PORT + i))" \
      --label "host=node-$i" --scrub-bandwidth 0 >"$WORK/$run-node-$i.log" 2>&1 &
    PIDS+=($!); NODES+=($!)
  done
  for _ in $(seq 150); do [ "$("$BIN" node ls 2>/dev/null | grep -c ' up ')" -ge 7 ] && break; sleep 0.2; done
  "$BIN" volume create bench --size 100GiB --protection ec:4+2 >/dev/null
  mkdir -p "$WORK/mnt"
  "$BIN" mount bench "$WORK/mnt" >"$WORK/$run-mount.log" 2>&1 &
  MOUNT=$!; PIDS+=($!)
  for _ in $(seq 100); do grep -qs " $WORK/mnt fuse" /proc/mounts && return; sleep 0.1; done
  echo "mount did not appear" >&2; exit 1
}
stop_cluster() {
  umount "$WORK/mnt"; wait "$MOUNT" 2>/dev/null || true; MOUNT=""
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true; PIDS=()
}

# Same starting point for every measurement: no dirty pages, cold cache.
settle() { sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1; }
write_mibs() { # file -> MiB/s
  settle
  fio --name=seq --filename="$1" --rw=write --bs=1m --size="${SIZE_MIB}m" --ioengine=psync \
      --end_fsync=1 --output-format=terse --terse-version=3 | awk -F';' '{print $48/1024}'
}
status() { "$BIN" cluster status; }
waiting() { status | awk '/^repair:/ {print $2}'; }
repaired_bytes() { status | awk '/^repaired:/ {gsub(/\(/, "", $5); print $5}'; }

# Run 1: unthrottled repair.
start_cluster run1
w=$(write_mibs "$WORK/mnt/a")
kill -9 "${NODES[0]}"
# Wait for the remap to queue the moves, then time the repair.
for _ in $(seq 600); do [ "$(waiting)" -gt 0 ] && break; sleep 0.05; done
t0=$(date +%s.%N)
for _ in $(seq 6000); do [ "$(waiting)" -eq 0 ] && break; sleep 0.05; done
t1=$(date +%s.%N)
bytes=$(repaired_bytes)
stop_cluster
r=$(awk -v b="$bytes" -v a="$t0" -v z="$t1" 'BEGIN { print b / 1048576 / (z - a) }')

# Run 2: repair limited to a quarter of the write rate; a write without
# repair, then one during it (a first write warms the cluster up).
limit=$(awk -v w="$w" 'BEGIN { printf "%dMiB", w / 4 }')
start_cluster run2 --repair-bandwidth "$limit"
write_mibs "$WORK/mnt/a" >/dev/null
w_alone=$(write_mibs "$WORK/mnt/b")
if [ -z "${BENCH_NO_LOSS:-}" ]; then
  kill -9 "${NODES[0]}"
  for _ in $(seq 600); do [ "$(waiting)" -gt 0 ] && break; sleep 0.05; done
fi
w_during=$(write_mibs "$WORK/mnt/c")
left=$(waiting)
stop_cluster

echo "date:        $(date -u +%F)"
echo "machine:     $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r)"
echo "cluster:     7 nodes on one disk, ec:4+2, ${SIZE_MIB} MiB written, one node lost"
awk -v w="$w" -v r="$r" -v b="$bytes" 'BEGIN {
  printf "seq write:   %.0f MiB/s\n", w
  printf "repair:      %.0f MiB in %.1f s = %.0f MiB/s unthrottled, ratio %.2f (target >= 0.5)\n", b / 1048576, b / 1048576 / r, r, r / w }'
awk -v a="$w_alone" -v d="$w_during" -v l="$limit" -v left="$left" 'BEGIN {
  printf "throttled:   repair limited to %s; writes %.0f MiB/s alone, %.0f MiB/s during repair, ratio %.2f (target >= 0.7; %d shards still queued after)\n", l, a, d, d / a, left }'
