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
