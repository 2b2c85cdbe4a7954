#!/usr/bin/env bash
# Docker plugin benchmark: latency of the first Mount of a volume on a host
# (which starts a FUSE mount process) and of later Mounts of the same volume
# (a reference count), median of 20 each, straight on the plugin socket; and
# `docker run -v` start-to-exit time with a Tessera volume against a local
# volume, median of 10, in the same run.
#
#   bench/docker.sh          (TESSERA_BIN=... picks a prebuilt binary)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bash scripts/docker.sh
DOCKER=/usr/bin/docker; [ -x "$DOCKER" ] || DOCKER=docker
PORT=$(free_ports 7)
export TESSERA_META="127.0.0.1:$PORT"
NAME="tessera-bench-$$"
SOCK="/run/docker/plugins/$NAME.sock"

"$BIN" dev --data "$WORK/cluster" --nodes 6 --port "$PORT" >"$WORK/dev.log" 2>&1 &
DEV=$!
PLUGIN=""
cleanup() {
  $DOCKER volume rm -f benchvol localvol >/dev/null 2>&1 || true
  [ -n "$PLUGIN" ] && { kill "$PLUGIN" 2>/dev/null || true; wait "$PLUGIN" 2>/dev/null || true; }
  grep -s " $WORK/" /proc/mounts | awk '{print $2}' | xargs -r -n1 umount -l || true
  kill "$DEV" 2>/dev/null || true; wait "$DEV" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 150); do [ "$("$BIN" node ls 2>/dev/null | grep -c ' up ')" -ge 6 ] && break; sleep 0.2; done
"$BIN" plugin docker --socket "$SOCK" --state-dir "$WORK/plugin" >"$WORK/plugin.log" 2>&1 &
PLUGIN=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
$DOCKER volume create -d "$NAME" -o size=10GiB benchvol >/dev/null
$DOCKER volume create localvol >/dev/null

call() { # endpoint body -> seconds
  curl -sf --unix-socket "$SOCK" -X POST -d "$2" -o /dev/null -w '%{time_total}\n' "http://plugin/$1"
}
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

first=$(for i in $(seq 20); do
  call VolumeDriver.Mount "{\"Name\":\"benchvol\",\"ID\":\"first-$i\"}"
  call VolumeDriver.Unmount "{\"Name\":\"benchvol\",\"ID\":\"first-$i\"}" >/dev/null
done | median)
call VolumeDriver.Mount '{"Name":"benchvol","ID":"hold"}' >/dev/null
later=$(for i in $(seq 20); do
  call VolumeDriver.Mount "{\"Name\":\"benchvol\",\"ID\":\"later-$i\"}"
  call VolumeDriver.Unmount "{\"Name\":\"benchvol\",\"ID\":\"later-$i\"}" >/dev/null
done | median)
call VolumeDriver.Unmount '{"Name":"benchvol","ID":"hold"}' >/dev/null

run_secs() { # volume
  for _ in $(seq 10); do
    s=$(date +%s.%N)
    $DOCKER run --rm -v "$1:/data" tessera-test/busybox true
    e=$(date +%s.%N)
    awk -v s="$s" -v e="$e" 'BEGIN { print e - s }'
  done | median
}
local_run=$(run_secs localvol)
tessera_run=$(run_secs benchvol)

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); $(date -u +%F)"
awk -v f="$first" -v l="$later" -v lr="$local_run" -v tr="$tessera_run" 'BEGIN {
  printf "first Mount of a volume (median of 20):     %7.1f ms  (target < 500 ms)\n", f * 1000
  printf "later Mount of a volume (median of 20):     %7.1f ms  (target < 20 ms)\n", l * 1000
  printf "docker run -v, local volume (median of 10):   %5.0f ms\n", lr * 1000
  printf "docker run -v, tessera volume (median of 10): %5.0f ms  (+%.0f ms; target < +1000 ms)\n", tr * 1000, (tr - lr) * 1000
}'
