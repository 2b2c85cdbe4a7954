#!/usr/bin/env bash
# Builds the managed Docker plugin's directory (config.json + rootfs/) from
# a tessera binary, ready for `docker plugin create NAME DIR`.
#
#   scripts/package-docker-plugin.sh OUT_DIR [TESSERA_BIN]
#
# The rootfs holds the binary (without debug info), the shared libraries it
# links and the directories the plugin uses. Docker gives the plugin
# /dev/fuse, CAP_SYS_ADMIN, the host network and /mnt/state as a propagated
# mount (see packaging/docker-plugin/config.json).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: package-docker-plugin.sh OUT_DIR [TESSERA_BIN]}"
BIN="${2:-target/release/tessera}"
[ -x "$BIN" ] || { echo "package-docker-plugin.sh: no tessera binary at $BIN" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT/rootfs"/{mnt/state,run/docker/plugins,tmp,dev,proc,sys,etc}
objcopy --strip-debug "$BIN" "$OUT/rootfs/tessera"
# The dynamic loader and every library the binary links, at their paths.
for lib in $(ldd "$BIN" | grep -o '/[^ ]*'); do
  mkdir -p "$OUT/rootfs$(dirname "$lib")"
  cp -L "$lib" "$OUT/rootfs$lib"
done
cp packaging/docker-plugin/config.json "$OUT/config.json"
