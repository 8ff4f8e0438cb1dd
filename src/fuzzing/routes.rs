//! Path templates and scope extraction. Input lines: a route template, scope templates
//! (space-separated), then paths. Every path is matched against the template
//! (`captures`/`matches` agree, captures are segments of the path) and run through
//! `Invalidation` built both from the embedded default rules and from a rule made of the
//! input's templates (`own_scope`, `generations`, `on_write`).

use std::sync::OnceLock;

use super::default_settings;
use crate::cache::invalidation::Invalidation;
use crate::config::settings::InvalidationRule;
use crate::routes::PathPattern;
use http::Method;

fn default_invalidation() -> &'static Invalidation {
    static I: OnceLock<Invalidation> = OnceLock::new();
    I.get_or_init(|| {
        Invalidation::new(&default_settings().cache.invalidation).expect("default rules")
    })
}

fn check_scope(inv: &Invalidation, path: &str) {
    if let Some(s) = inv.own_scope(path) {
        // A scope is in normal form: rooted, no empty segments, no trailing slash.
        assert!(s.starts_with('/'), "{s:?}");
        assert!(
            s == "/" || (!s.contains("//") && !s.ends_with('/')),
            "{s:?}"
        );
    }
    let mut gens = Vec::new();
    inv.generations(path, path, &mut gens);
    // Own scope, the root tree, one tree per non-empty segment, the URL.
    let segs = path.split('/').filter(|s| !s.is_empty()).count();
    assert_eq!(gens.len(), segs + 3);
}

/// One fuzz input (`fuzz/fuzz_targets/routes.rs`; replayed by `tests/fuzz_corpus.rs`).
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let template = lines.next().unwrap_or("");
    let scopes = lines.next().unwrap_or("");
    let paths: Vec<&str> = lines.take(16).collect();

    let route = PathPattern::parse(template).ok();
    if let Some(p) = &route {
        assert_eq!(p.as_str(), template);
        for path in &paths {
            let caps = p.captures(path);
            assert_eq!(caps.is_some(), p.matches(path), "{template:?} vs {path:?}");
            if let Some(c) = caps {
                for piece in p.pieces() {
                    if let crate::routes::Piece::Param(name) = piece {
                        let v = c.get(name).expect("every parameter captured");
                        assert!(!v.is_empty() && !v.contains('/'), "{v:?}");
                    }
                }
            }
        }
    }
    let scope_templates: Vec<PathPattern> = scopes
        .split(' ')
        .filter_map(|t| PathPattern::scope(t).ok())
        .take(4)
        .collect();

    for path in &paths {
        check_scope(default_invalidation(), path);
        let _ = default_invalidation().on_write(&Method::POST, path, path, Some(b"{}"), &[]);
    }
    if let Some(pattern) = route {
        let rule = InvalidationRule {
            method: None,
            pattern,
            scopes: scope_templates,
        };
        let Ok(inv) = Invalidation::new(std::slice::from_ref(&rule)) else {
            return;
        };
        for path in &paths {
            check_scope(&inv, path);
            let b = inv.on_write(&Method::PUT, path, path, Some(text.as_bytes()), &[]);
            for s in b.scopes.iter().chain(&b.trees) {
                assert!(s.starts_with('/'), "{s:?}");
            }
        }
    }
}
