#!/usr/bin/env bash
# Cluster benchmark: fio sequential write and cold read (1 MiB blocks)
# through a `tessera dev` mount, and on the local disk in the same run;
# 10,000 empty-file creates; 4 KiB files by 1 and by 8 writers; peak
# resident memory of the FUSE process and the storage nodes. Prints each
# figure and its ratio to the local disk.
#
#   bench/fio.sh [SIZE_MIB] [PROTECTION]      (defaults: 2048 ec:4+2)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB="${1:-2048}"
PROT="${2:-ec:4+2}"
# TESSERA_BIN picks a prebuilt binary (e.g. target/debug/tessera).
source bench/lib.sh
one_volume_cluster "$PROT"

# MiB/s of one fio job, each started with a clean page cache and an idle
# disk. A write counts until its final fsync returns: fio's own write
# figure stops before that fsync, so on a machine with more memory than
# the file it measures the page cache, not the disk.
fio_bw() { # dir rw
  drop_caches
  local start end
  start=$(date +%s.%N)
  fio --name=seq --directory="$1" --rw="$2" --bs=1m --size="${SIZE_MIB}m" --ioengine=psync \
      --end_fsync=1 --output-format=terse --terse-version=3 >"$WORK/fio-$2.txt"
  end=$(date +%s.%N)
  if [ "$2" = write ]; then
    python3 -c "print($SIZE_MIB / ($end - $start))"
  else
    awk -F';' '{ print $7/1024 }' "$WORK/fio-$2.txt"
  fi
}

peak_rss_mib() { # pids...
  local max=0
  for p in "$@"; do
    r=$(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    [ "$r" -gt "$max" ] && max=$r
  done
  echo $((max / 1024))
}

mount_vol
local_w=$(fio_bw "$LOCAL" write)
local_r=$(fio_bw "$LOCAL" read)
ts_w=$(fio_bw "$MNT" write)
write_rss=$(peak_rss_mib "$MOUNT")
unmount_vol; drop_caches; mount_vol
ts_r=$(fio_bw "$MNT" read)
read_rss=$(peak_rss_mib "$MOUNT")
node_rss=$(peak_rss_mib $(pgrep -f " node --data $WORK" || true))

# Creates: 10,000 empty files through the mount, and on the local disk.
creates() { python3 - "$1" <<'PY'
import os, sys, time
d = os.path.join(sys.argv[1], "creates"); os.makedirs(d, exist_ok=True)
t = time.monotonic()
for i in range(10000):
    os.close(os.open(os.path.join(d, f"f{i}"), os.O_CREAT | os.O_WRONLY, 0o644))
print(round(10000 / (time.monotonic() - t)))
PY
}
drop_caches
local_c=$(creates "$LOCAL")
drop_caches
ts_c=$(creates "$MNT")

# Small files: 2,000 files of 4 KiB, each created, written and closed, by 1
# and by 8 writers. A close through the mount is durable; on the local disk
# it is not, so the local disk is measured with and without an fsync per
# file.
small() { python3 - "$@" <<'PY'
import os, sys, threading, time
base, writers, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fsync"
d = os.path.join(base, f"small-{writers}-{sys.argv[3]}"); os.makedirs(d, exist_ok=True)
buf, n = os.urandom(4096), 2000
def work(w):
    for i in range(w, n, writers):
        fd = os.open(os.path.join(d, f"f{i}"), os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, buf)
        if sync:
            os.fsync(fd)
        os.close(fd)
t = time.monotonic()
ts = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
for x in ts: x.start()
for x in ts: x.join()
print(round(n / (time.monotonic() - t)))
PY
}
local_s1=$(small "$LOCAL" 1 close); local_s1f=$(small "$LOCAL" 1 fsync)
local_s8=$(small "$LOCAL" 8 close); local_s8f=$(small "$LOCAL" 8 fsync)
ts_s1=$(small "$MNT" 1 close); ts_s8=$(small "$MNT" 8 close)
unmount_vol

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo "date:        $(date -u +%F)"
echo "machine:     $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r)"
echo "protection:  $PROT, 6 nodes on one disk, file ${SIZE_MIB} MiB"
printf "seq write:   tessera %.0f MiB/s, local %.0f MiB/s, ratio %s\n" "$ts_w" "$local_w" "$(ratio "$ts_w" "$local_w")"
printf "seq read:    tessera %.0f MiB/s, local %.0f MiB/s, ratio %s (cold)\n" "$ts_r" "$local_r" "$(ratio "$ts_r" "$local_r")"
echo "creates:     tessera $ts_c/s, local $local_c/s"
echo "4 KiB files: 1 writer: tessera $ts_s1/s, local $local_s1/s, local+fsync $local_s1f/s"
echo "             8 writers: tessera $ts_s8/s, local $local_s8/s, local+fsync $local_s8f/s"
echo "peak RSS:    FUSE ${write_rss} MiB writing, ${read_rss} MiB reading; largest storage node ${node_rss} MiB"
