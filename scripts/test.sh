#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests that start the real
# raster-edge and raster-mock binaries and their own redis-server on ephemeral loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-prereqs.sh --test
exec cargo test "$@"
