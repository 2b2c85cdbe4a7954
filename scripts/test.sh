#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (packages) and runs every test: unit,
# conformance, property and the process-level integration tests that start
# the real binary with real FUSE mounts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The Docker plugin's tests need an engine: start one if none runs, and stop
# it again at the end if this run started it.
pidfile="/run/tessera-dockerd.$$.pid"
export TESSERA_DOCKERD_PIDFILE="$pidfile"
stop_dockerd() {
  if [ -s "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}
trap stop_dockerd EXIT
bash scripts/docker.sh
# One cargo invocation shape for everything: a different package or target
# selection unifies features differently and rebuilds RocksDB (~13 min).
# Integration tests each start a whole cluster: one test at a time.
cargo test --workspace -- --test-threads=1
