#!/usr/bin/env bash
# Database benchmark: what a database on a volume does. fio with 4 KiB
# blocks, one psync job on a 256 MiB file: random writes with an fsync
# every 32 (three runs in a row on the same file: the figure must not
# fall), cold random reads, and 70/30 random reads and writes with an
# fsync every 32; then SQLite commits (one insert a transaction,
# synchronous=FULL, WAL and rollback journal: every commit takes fcntl
# locks, which hold across mounts), and pgbench (scale 10, 4 clients) on
# PostgreSQL from Debian. Everything on an `ec:4+2` mount and on the local
# disk in the same run, pgbench also on a `replica:3` mount. Prints each
# figure and its ratio to the local disk.
#
#   bench/db.sh [SECONDS]      (default 30 per fio run and per pgbench run)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-30}"
bash scripts/setup.sh postgresql >/dev/null
source bench/lib.sh
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
PORT=$(free_ports 7)
PG_PORT=$((PORT + 7))
export TESSERA_META="127.0.0.1:$PORT"
chmod 755 "$WORK"   # PostgreSQL runs as its own user
LOCAL="$WORK/local"; mkdir -p "$LOCAL"
PG_LOGS="$WORK/pg-logs"; mkdir -p "$PG_LOGS"; chown postgres: "$PG_LOGS"

"$BIN" dev --data "$WORK/cluster" --nodes 6 --port "$PORT" >"$WORK/dev.log" 2>&1 &
DEV=$!
MOUNTS=()
PG_DIR=""
cleanup() {
  [ -n "$PG_DIR" ] && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR" -m immediate stop >/dev/null 2>&1 || true
  for m in "${MOUNTS[@]}"; do
    umount "${m%%:*}" 2>/dev/null || umount -l "${m%%:*}" 2>/dev/null || true
    wait "${m##*:}" 2>/dev/null || true
  done
  kill "$DEV" 2>/dev/null || true; wait "$DEV" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 150); do [ "$("$BIN" node ls 2>/dev/null | grep -c ' up ')" -ge 6 ] && break; sleep 0.2; done

mount_vol() { # name protection; mounted at $WORK/mnt-name
  local dir="$WORK/mnt-$1"
  mkdir -p "$dir"
  "$BIN" volume create "$1" --size 100GiB --protection "$2" >/dev/null
  "$BIN" mount "$1" "$dir" >>"$WORK/mount-$1.log" 2>&1 &
  MOUNTS+=("$dir:$!")
  for _ in $(seq 100); do grep -qs " $dir fuse" /proc/mounts && break; sleep 0.1; done
  grep -qs " $dir fuse" /proc/mounts || { echo "mount of $1 did not appear" >&2; exit 1; }
  chmod 755 "$dir"
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# IOPS of one fio job on dir/db: reads (r) and writes (w) as "r w".
fio_iops() { # dir rw [fio options...]
  local dir=$1 rw=$2; shift 2
  fio --name=db --directory="$dir" --filename=db --rw="$rw" --bs=4k --size=256m \
      --ioengine=psync --runtime="$SECS" --time_based "$@" \
      --output-format=terse --terse-version=3 | awk -F';' '{ printf "%.0f %.0f\n", $8, $49 }'
}
mount_vol ec ec:4+2; EC="$WORK/mnt-ec"
mount_vol rep replica:3; REP="$WORK/mnt-rep"

declare -A R
R[local_w]=$(fio_iops "$LOCAL" randwrite --fsync=32 | cut -d' ' -f2)
for i in 1 2 3; do R[ec_w$i]=$(fio_iops "$EC" randwrite --fsync=32 | cut -d' ' -f2); done
drop_caches; R[local_r]=$(fio_iops "$LOCAL" randread | cut -d' ' -f1)
drop_caches; R[ec_r]=$(fio_iops "$EC" randread | cut -d' ' -f1)
read -r R[local_mr] R[local_mw] < <(fio_iops "$LOCAL" randrw --rwmixread=70 --fsync=32)
read -r R[ec_mr] R[ec_mw] < <(fio_iops "$EC" randrw --rwmixread=70 --fsync=32)

# TPS of pgbench (scale 10, 4 clients) on a fresh cluster in dir/pg.
pgbench_tps() { # dir
  PG_DIR="$1/pg"
  mkdir -p "$PG_DIR"; chown postgres: "$PG_DIR"; chmod 700 "$PG_DIR"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DIR" --data-checksums >"$WORK/initdb.log" 2>&1
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR" -l "$PG_LOGS/server.log" -w \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=''" start >/dev/null
  runuser -u postgres -- "$PG_BIN/pgbench" -h "$PG_DIR" -p "$PG_PORT" -i -s 10 -q postgres >"$WORK/pgbench-init.log" 2>&1
  runuser -u postgres -- "$PG_BIN/pgbench" -h "$PG_DIR" -p "$PG_PORT" -c 4 -j 2 -T "$SECS" postgres 2>"$WORK/pgbench.log" |
    awk '/^tps/ { printf "%.0f\n", $3 }'
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR" -m fast -w stop >/dev/null
  PG_DIR=""
}
# Commits per second of SQLite in dir, WAL and rollback journal: "wal delete".
sqlite_commits() { # dir
  python3 - "$1" "$SECS" <<'PY'
import sqlite3, sys, time
out = []
for mode in ("WAL", "DELETE"):
    db = sqlite3.connect(f"{sys.argv[1]}/bench-{mode}.db", isolation_level=None)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB)")
    n, start = 0, time.time()
    while time.time() - start < float(sys.argv[2]) / 3:
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?, randomblob(300))", (n,))
        db.execute("COMMIT")
        n += 1
    out.append(str(round(n / (time.time() - start))))
print(" ".join(out))
PY
}
read -r R[lite_local_wal] R[lite_local_del] < <(sqlite_commits "$LOCAL")
read -r R[lite_ec_wal] R[lite_ec_del] < <(sqlite_commits "$EC")

R[pg_local]=$(pgbench_tps "$LOCAL")
R[pg_ec]=$(pgbench_tps "$EC")
R[pg_rep]=$(pgbench_tps "$REP")

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo "date:        $(date -u +%F)"
echo "machine:     $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r)"
echo "cluster:     6 nodes on one disk; fio 4 KiB psync on a 256 MiB file, ${SECS} s a run"
echo "randwrite fsync/32: ec:4+2 ${R[ec_w1]}, ${R[ec_w2]}, ${R[ec_w3]} IOPS; local ${R[local_w]}; ratio $(ratio "${R[ec_w3]}" "${R[local_w]}")"
echo "randread (cold):    ec:4+2 ${R[ec_r]} IOPS; local ${R[local_r]}; ratio $(ratio "${R[ec_r]}" "${R[local_r]}")"
echo "randrw 70/30 fsync/32: ec:4+2 ${R[ec_mr]} r + ${R[ec_mw]} w IOPS; local ${R[local_mr]} r + ${R[local_mw]} w; ratio $(ratio "$((R[ec_mr] + R[ec_mw]))" "$((R[local_mr] + R[local_mw]))")"
echo "sqlite commits/s:   ec:4+2 ${R[lite_ec_wal]} (WAL), ${R[lite_ec_del]} (rollback journal); local ${R[lite_local_wal]}, ${R[lite_local_del]}; ratios $(ratio "${R[lite_ec_wal]}" "${R[lite_local_wal]}"), $(ratio "${R[lite_ec_del]}" "${R[lite_local_del]}")"
echo "pgbench (s 10, c 4): ec:4+2 ${R[pg_ec]} TPS, replica:3 ${R[pg_rep]}, local ${R[pg_local]}; ratios $(ratio "${R[pg_ec]}" "${R[pg_local]}"), $(ratio "${R[pg_rep]}" "${R[pg_local]}")"
