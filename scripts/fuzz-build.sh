#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/) into the main target/debug, instrumented for libFuzzer but
# reusing the dependencies a plain `cargo build` already compiled: fuzz/sancov-rustc.sh adds
# the coverage flags to the library and the fuzz crate only. `cargo fuzz build` instruments
# every crate, so it rebuilds all ~280 dependencies first (over 50 minutes on a shared 2-core
# machine); this takes one library build. Binaries: target/debug/<target>.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTC_WRAPPER="$PWD/fuzz/sancov-rustc.sh" \
  cargo build --manifest-path fuzz/Cargo.toml --target-dir target --bins "$@"
