//! The edge checks on an arbitrary request head. Every request reaches the gateway through
//! Pingora's HTTP/1 parser (the fast path included), so there is no hand-written request
//! parser to fuzz; instead the input is parsed with `httparse` (as lenient as Pingora's, bare
//! LF included) into a `RequestHeader`, then `edge::sanitize` (size limits, framing, method,
//! Host, path canonicalisation) and `Edge::check` (reserved paths, single credentials and
//! versions, bearer token, key id) run on it. A head `sanitize` accepts leaves a canonical path.

use std::borrow::Cow;
use std::sync::OnceLock;

use super::default_settings;
use crate::edge::{self, path, Edge};
use pingora::http::RequestHeader;

fn edges() -> &'static [Edge; 2] {
    static E: OnceLock<[Edge; 2]> = OnceLock::new();
    E.get_or_init(|| {
        let plain = default_settings().edge.clone();
        let mut sidecar = plain.clone();
        sidecar.api_key = Some("demo-read".into());
        sidecar.api_version = Some("2026-05-20".into());
        sidecar.require_auth = true;
        sidecar.require_api_version = true;
        [Edge::new(plain), Edge::new(sidecar)]
    })
}

/// One fuzz input (`fuzz/fuzz_targets/edge_head.rs`; replayed by `tests/fuzz_corpus.rs`).
pub fn run(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return;
    };
    let Ok(mut req) = RequestHeader::build(method, target.as_bytes(), Some(parsed.headers.len()))
    else {
        return;
    };
    req.set_version(if version == 0 {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    });
    for h in parsed.headers.iter() {
        if req.append_header(h.name.to_string(), h.value).is_err() {
            // Pingora refuses such a head before any hook runs.
            return;
        }
    }
    let raw_head = &data[..len];
    let limits = &default_settings().server;
    let sanitized = edge::sanitize(&mut req, raw_head, limits).is_ok();
    if sanitized {
        assert!(
            matches!(path::normalize(req.uri.path()), Ok(Cow::Borrowed(_))),
            "{:?}",
            req.uri
        );
    }
    for e in edges() {
        let _ = e.check(&req);
    }
}
