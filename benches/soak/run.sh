#!/usr/bin/env bash
# Soak: bounded mixed traffic through raster-edge with RSS sampled every 10 s.
#   benches/soak/run.sh [--minutes N] [--debug]
# Builds the binaries (release unless --debug), then runs soak.py, which starts raster-mock,
# a private redis-server and raster-edge on loopback ports and stops them (by PID) at the end.
# See docs/RELIABILITY.md for what it asserts and a recorded run.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=release
args=()
for a in "$@"; do
  case "$a" in
    --debug) profile=debug ;;
    *) args+=("$a") ;;
  esac
done
if [ "$profile" = release ]; then
  cargo build --release --bins
else
  cargo build --bins
fi
exec python3 benches/soak/soak.py --bin-dir "target/$profile" "${args[@]}"
