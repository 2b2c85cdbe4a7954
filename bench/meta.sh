#!/usr/bin/env bash
# Metadata calls of one process: a single-threaded loop of
# open(O_CREAT|O_EXCL)+close, then stat (kernel caches dropped, and the
# mount remounted so that its own caches are cold too), then rename (to a
# new name in the same directory), then unlink of N files in one
# directory, through a `tessera dev` mount and on the local disk in the
# same run. Prints calls per second and the ratio.
#
#   [TESSERA_STORE=etcd] bench/meta.sh [FILES] [PROTECTION]
#                                           (defaults: 10000 ec:4+2)
set -euo pipefail
cd "$(dirname "$0")/.."
FILES="${1:-10000}"
PROT="${2:-ec:4+2}"
source bench/lib.sh
one_volume_cluster "$PROT"

phase() { # dir create|stat|unlink -> calls per second
  python3 - "$1" "$2" "$FILES" <<'PY'
import os, sys, time
d, what, n = os.path.join(sys.argv[1], "meta"), sys.argv[2], int(sys.argv[3])
os.makedirs(d, exist_ok=True)
names = [os.path.join(d, f"file-{i:06}") for i in range(n)]
t = time.monotonic()
if what == "create":
    for p in names:
        os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
elif what == "stat":
    for p in names:
        os.stat(p)
elif what == "rename":
    for p in names:
        os.rename(p, p + "-r")
else:
    for p in names:
        os.unlink(p + "-r")
print(round(n / (time.monotonic() - t)))
PY
}

declare -A local ts
for what in create stat rename unlink; do
  drop_caches
  local[$what]=$(phase "$LOCAL" "$what")
done
mount_vol
for what in create stat rename unlink; do
  if [ "$what" = stat ]; then unmount_vol; drop_caches; mount_vol; fi
  drop_caches
  ts[$what]=$(phase "$MNT" "$what")
done
unmount_vol

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo "date:        $(date -u +%F)"
echo "machine:     $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r)"
echo "protection:  $PROT, 6 nodes on one disk, $FILES files in one directory, metadata on $STORE"
for what in create stat rename unlink; do
  printf "%-12s tessera %s/s, local %s/s, ratio %s\n" "$what:" "${ts[$what]}" "${local[$what]}" \
    "$(ratio "${ts[$what]}" "${local[$what]}")"
done
