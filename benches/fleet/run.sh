#!/usr/bin/env bash
# Fleet benchmark (docs/FLEET.md): N = 1, 2, 4 raster-edge instances on loopback, one Redis, one
# raster-mock origin, with and without the shared tier, over the 100k-key scenario.
#
#   benches/fleet/run.sh [--no-build] [--debug] [bench.py options…]
#
# Builds the release binaries (or uses target/debug with --debug: origin counts are the same,
# req/s are not comparable), then runs benches/fleet/bench.py under `nice`, which writes
# bench-results/fleet-<timestamp>/results.{md,json}. Everything it starts is stopped by PID.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build=1
profile=release
args=()
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    --debug) profile=debug ;;
    *) args+=("$a") ;;
  esac
done
for tool in wrk redis-server python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "needs $tool (apt-get install wrk redis-server python3)" >&2; exit 1; }
done
if [ "$build" -eq 1 ]; then
  if [ "$profile" = release ]; then
    (cd "$repo" && cargo build --release --bins)
  else
    (cd "$repo" && cargo build --bins)
  fi
fi
target="${CARGO_TARGET_DIR:-$repo/target}"
exec nice -n 10 python3 -B "$here/bench.py" --bin-dir "$target/$profile" "${args[@]}"
