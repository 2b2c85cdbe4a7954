#!/usr/bin/env bash
# A file a database overwrites for a long time: fio 4 KiB random writes
# with an fsync every 32 on a 1 GiB file written sequentially before,
# RUNS runs of SECS seconds in a row with a PAUSE between them (the file
# is quiet then: its fragments are merged), then a cold sequential read
# (1 MiB blocks) of it and of a freshly written 1 GiB file; the nodes'
# used bytes after each step.
#
#   bench/overwrite.sh [SECS] [RUNS] [PAUSE] [PROTECTION]   (60 3 10 ec:4+2)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-60}"
RUNS="${2:-3}"
PAUSE="${3:-10}"
PROT="${4:-ec:4+2}"
source bench/lib.sh
one_volume_cluster "$PROT"
mount_vol

used() { # MiB of shards on the nodes, as their last heartbeats said
  "$BIN" node ls | awk 'NR > 1 {
    v = $5; u = 1
    if (v ~ /GiB$/) u = 1024; else if (v ~ /KiB$/) u = 1 / 1024; else if (v ~ /[0-9]B$/) u = 1 / 1048576
    sub(/[A-Za-z]+$/, "", v); t += v * u
  } END { printf "%.0f", t }'
}
fio_run() { # name rw bs extra... -> IOPS or MiB/s
  local name=$1 rw=$2 bs=$3
  shift 3
  fio --name="$name" --filename="$MNT/$name" --rw="$rw" --bs="$bs" --size=1g \
    --ioengine=psync --direct=0 --output-format=terse --terse-version=3 "$@" |
    awk -F';' -v rw="$rw" '{ if (rw ~ /write/) print $49; else if (rw ~ /read$/) print $7/1024; else print $8 }'
}

fio_run db write 1m --end_fsync=1 >/dev/null
echo "written: nodes hold $(used) MiB"
for r in $(seq 1 "$RUNS"); do
  iops=$(fio_run db randwrite 4k --fsync=32 --time_based --runtime="$SECS" --overwrite=1)
  echo "run $r: randwrite fsync/32 $iops IOPS; nodes hold $(used) MiB"
  sleep "$PAUSE"
  echo "  after ${PAUSE}s quiet: nodes hold $(used) MiB"
done
fio_run fresh write 1m --end_fsync=1 >/dev/null
for f in db fresh; do
  unmount_vol
  drop_caches
  mount_vol
  echo "seq read of $f: $(fio_run "$f" read 1m) MiB/s"
done
unmount_vol
