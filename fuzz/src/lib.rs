//! Helpers shared by the fuzz targets: settings built once from the embedded default
//! configuration, and a tolerant header-line reader for inputs that are mostly text.

use std::sync::OnceLock;

use raster_edge::config::{self, Settings};

/// The embedded default configuration, validated (the same settings a file-less start gets),
/// with a fixed key-id secret so runs are reproducible.
pub fn default_settings() -> &'static Settings {
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
pub fn header_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| {
        let (n, v) = l.split_once(':')?;
        Some((n.trim(), v.trim_start()))
    })
}
