#!/usr/bin/env bash
# Builds (release) and runs the gateway; arguments go to raster-edge (default: the embedded
# config, upstream https://api.raster.app, proxy on 127.0.0.1:8080, admin on 127.0.0.1:9090).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-prereqs.sh
exec cargo run --release --bin raster-edge -- "$@"
