#!/usr/bin/env bash
# RUSTC_WRAPPER for scripts/fuzz-build.sh: adds libFuzzer's coverage instrumentation (the
# flags cargo-fuzz passes) to the code under test only, the library and the fuzz crate, so the
# dependencies already compiled in the main target/ are reused as they are.
rustc="$1"
shift
case " $* " in
  *" --crate-name raster_edge "* | *" --crate-name raster_edge_fuzz "* | \
  *" --crate-name config "* | *" --crate-name policy "* | *" --crate-name routes "* | \
  *" --crate-name path_key "* | *" --crate-name write_body "* | *" --crate-name edge_head "* | \
  *" --crate-name hit_head "*)
    exec "$rustc" "$@" --cfg fuzzing -Cpasses=sancov-module \
      -Cllvm-args=-sanitizer-coverage-level=4 \
      -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
      -Cllvm-args=-sanitizer-coverage-pc-table \
      -Cllvm-args=-sanitizer-coverage-trace-compares ;;
  *) exec "$rustc" "$@" ;;
esac
