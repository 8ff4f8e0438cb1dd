//! The write-body rules: `{body.field}` scope templates rendered from arbitrary JSON bodies
//! through `Invalidation::on_write`, with the embedded default rules (Raster's write routes)
//! and a rule whose every scope takes a body field. Input: 1 byte method, a path line, then
//! the body. A bumped scope is always rooted with plain segments (no `.`/`..`, no `?`/`#`),
//! whatever the body says, so a body can never name a scope outside the template.

use std::sync::OnceLock;

use super::default_settings;
use crate::cache::invalidation::{self, Invalidation};
use crate::config::settings::InvalidationRule;
use crate::routes::PathPattern;
use http::Method;

fn invalidations() -> &'static [Invalidation; 2] {
    static I: OnceLock<[Invalidation; 2]> = OnceLock::new();
    I.get_or_init(|| {
        let t = |s: &str| PathPattern::scope(s).expect("static template");
        let rule = InvalidationRule {
            method: None,
            pattern: PathPattern::parse("/o/{org}/x/{id}").expect("static template"),
            scopes: vec![
                t("/o/{org}/l/{body.library}"),
                t("/o/{body.org}/l/{body.library}/a/{body.id}"),
                t("/{body.a}/{body.b}"),
                t("/o/{org}"),
            ],
        };
        [
            Invalidation::new(&default_settings().cache.invalidation).expect("default rules"),
            Invalidation::new(&[rule]).expect("static rule"),
        ]
    })
}

const METHODS: [Method; 4] = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

/// One fuzz input (`fuzz/fuzz_targets/write_body.rs`; replayed by `tests/fuzz_corpus.rs`).
pub fn run(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    let (path, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    // The gateway canonicalises the path before anything scopes on it.
    let Ok(path) = crate::edge::path::normalize(path) else {
        return;
    };
    let path = &*path;
    for inv in invalidations() {
        let bumped = inv.on_write(method, path, path, Some(body), &[]);
        for s in bumped.scopes.iter().chain(&bumped.trees) {
            assert!(s.starts_with('/'), "{s:?}");
            // What is stored is the normal form (unreserved escapes decoded).
            let s = &invalidation::normalize(s);
            for seg in s.split('/').skip(1) {
                assert!(
                    seg != "." && seg != ".." && !seg.contains(['?', '#']),
                    "{path:?} {s:?}"
                );
            }
        }
    }
}
