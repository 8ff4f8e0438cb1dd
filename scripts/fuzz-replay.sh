#!/usr/bin/env bash
# Replays every fuzz target over its committed corpus (fuzz/corpus/<target>) without fuzzing
# (`-runs=0`): an input that once found new coverage and now panics fails here in seconds.
# Builds with scripts/fuzz-build.sh, which reuses the dependencies of the `cargo build` that
# .ci/run does just before. Every target declared in fuzz/Cargo.toml must have a corpus.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fuzz-build.sh --quiet
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^raster-edge-fuzz$')
[ -n "$targets" ] || { echo "fuzz replay: no fuzz targets in fuzz/Cargo.toml" >&2; exit 1; }
for t in $targets; do
  corpus="fuzz/corpus/$t"
  [ -d "$corpus" ] || { echo "fuzz replay: $t has no committed corpus ($corpus)" >&2; exit 1; }
  echo "-- $t ($(find "$corpus" -type f | wc -l) inputs)"
  if ! out=$("target/debug/$t" -runs=0 "$corpus" 2>&1); then
    echo "$out" | tail -30 >&2
    echo "fuzz replay: $t fails on its corpus (target/debug/$t -runs=0 $corpus)" >&2
    exit 1
  fi
  echo "$out" | grep -E '^#[0-9]+ +(INITED|DONE)' || true
done
