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
