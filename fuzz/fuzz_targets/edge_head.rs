//! libFuzzer entry point; the body is `raster_edge::fuzzing::edge_head::run` (see docs/FUZZING.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raster_edge::fuzzing::edge_head::run(data));
