# Shared start of the cluster benchmarks (sourced from the repository root):
# installs what they need, picks the binary (TESSERA_BIN, else a release
# build) as BIN, and makes a work directory WORK on the real disk.
bash scripts/setup.sh >/dev/null
if [ -z "${TESSERA_BIN:-}" ]; then
  cargo build --release -p tessera >/dev/null 2>&1
  TESSERA_BIN="$PWD/target/release/tessera"
fi
BIN="$TESSERA_BIN"
WORK="$(mktemp -d /var/tmp/tessera-bench.XXXXXX)"

# free_ports N: a port P such that P..P+N are free, below the kernel's
# ephemeral range (32768 and up), where an outgoing connection could be
# holding it.
free_ports() {
  local n=$1 p i busy
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % (32000 - 20000 - n)))
    busy=0
    for i in $(seq 0 "$n"); do
      if ss -Htan "sport = :$((p + i))" | grep -q .; then busy=1; break; fi
    done
    [ "$busy" = 0 ] && { echo "$p"; return; }
  done
  echo "no free ports" >&2; return 1
}

# one_volume_cluster PROTECTION: a `tessera dev` cluster of 6 nodes in
# WORK with a volume `bench`, removed on exit; mount_vol and unmount_vol
# mount it at MNT; LOCAL is a directory on the local disk beside it. The
# metadata is in TESSERA_STORE: rocksdb (default) or etcd (3 local
# members, on PORT+101.. and PORT+201..).
one_volume_cluster() {
  STORE="${TESSERA_STORE:-rocksdb}"
  if [ "$STORE" = etcd ]; then PORT=$(free_ports 203); else PORT=$(free_ports 7); fi
  export TESSERA_META="127.0.0.1:$PORT"
  MNT="$WORK/mnt"; LOCAL="$WORK/local"; mkdir -p "$MNT" "$LOCAL"
  "$BIN" dev --data "$WORK/cluster" --nodes 6 --port "$PORT" --store "$STORE" >"$WORK/dev.log" 2>&1 &
  DEV=$!
  MOUNT=""
  trap cleanup EXIT
  for _ in $(seq 150); do [ "$("$BIN" node ls 2>/dev/null | grep -c ' up ')" -ge 6 ] && break; sleep 0.2; done
  "$BIN" volume create bench --size 100GiB --protection "$1" >/dev/null
}
cleanup() {
  if [ -n "${MOUNT:-}" ]; then umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; wait "$MOUNT" 2>/dev/null || true; fi
  [ -n "${DEV:-}" ] && { kill "$DEV" 2>/dev/null || true; wait "$DEV" 2>/dev/null || true; }
  rm -rf "$WORK"
}
mount_vol() {
  "$BIN" mount bench "$MNT" >>"$WORK/mount.log" 2>&1 &
  MOUNT=$!
  for _ in $(seq 100); do grep -qs " $MNT fuse" /proc/mounts && return; sleep 0.1; done
  echo "mount did not appear" >&2; exit 1
}
unmount_vol() { umount "$MNT"; wait "$MOUNT"; MOUNT=""; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
