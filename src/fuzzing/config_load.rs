//! Config loading: arbitrary UTF-8 TOML through `config::parse` (layered over the embedded
//! default, env overrides applied) and then `config::validate`. Lines `#env NAME=value` (TOML
//! comments, so the text parses the same) become environment overrides.

use crate::config;

const NOWHERE: &str = "/nonexistent/raster-edge-fuzz/secret";

/// One fuzz input (`fuzz/fuzz_targets/config.rs`; replayed by `tests/fuzz_corpus.rs`).
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#env "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let Ok(mut f) = config::parse(text, "fuzz", &env) else {
        return;
    };
    // Secret and CA files are read by validation: point them nowhere, so an input naming
    // /dev/zero cannot make the run read forever (the "both set" checks still run).
    for p in [
        &mut f.edge.api_key_file,
        &mut f.edge.key_id_secret_file,
        &mut f.admin.token_file,
        &mut f.upstream.ca_file,
    ] {
        if p.is_some() {
            *p = Some(NOWHERE.to_string());
        }
    }
    let _ = config::validate(f);
}
