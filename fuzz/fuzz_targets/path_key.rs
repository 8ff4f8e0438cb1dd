//! libFuzzer entry point; the body is `raster_edge::fuzzing::path_key::run` (see docs/FUZZING.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raster_edge::fuzzing::path_key::run(data));
