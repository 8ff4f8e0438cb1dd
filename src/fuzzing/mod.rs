//! The bodies of the fuzz targets in `fuzz/`, one module per target, each a `run(&[u8])` that
//! panics when a property fails. They live in the library, not in the fuzz crate, so that two
//! drivers call the same code: libFuzzer (`fuzz/fuzz_targets/<name>.rs`, nightly tooling, run by
//! hand for minutes at a time) and `tests/fuzz_corpus.rs`, which replays every committed input
//! under `fuzz/corpus/<name>/` with a plain `cargo test` on stable, in seconds. docs/FUZZING.md
//! describes both. Nothing on the request path calls this module.

use std::sync::OnceLock;

use crate::config::{self, Settings};

pub mod config_load;
pub mod edge_head;
pub mod path_key;
pub mod policy;
pub mod routes;
pub mod write_body;

/// Every fuzz target: its name (the `fuzz/fuzz_targets/<name>.rs` binary and the
/// `fuzz/corpus/<name>/` directory) and its body.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("config", config_load::run),
    ("policy", policy::run),
    ("routes", routes::run),
    ("path_key", path_key::run),
    ("write_body", write_body::run),
    ("edge_head", edge_head::run),
];

/// The embedded default configuration, validated (the same settings a file-less start gets),
/// with a fixed key-id secret so runs are reproducible.
fn default_settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| {
        let f = config::parse("", "fuzz", &[]).expect("embedded default parses");
        let mut s = config::validate(f).expect("embedded default validates");
        s.edge.key_id_secret = b"fuzz-key-id-secret".to_vec();
        s.edge.key_id_secret_generated = false;
        s
    })
}

/// `name: value` lines; lines without a colon are skipped.
fn header_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| {
        let (n, v) = l.split_once(':')?;
        Some((n.trim(), v.trim_start()))
    })
}
