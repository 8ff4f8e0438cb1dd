//! Cache-Control and storage decisions: a request and a response head built from the input
//! (status, header lines) through `policy::decide` with per-key and shared settings, with and
//! without a route rule, plus `request_cacheable` and `client_wants_revalidation`.
//!
//! Input: 2 bytes status, 1 byte of flags, 4 bytes of clock (seconds after 2020), then text:
//! request header lines, an empty line, response header lines. The first request line may be
//! `METHOD` alone.

use std::time::{Duration, SystemTime};

use super::{default_settings, header_lines};
use crate::cache::policy;
use crate::config::settings::{CacheRoute, Share};
use crate::routes::PathPattern;
use pingora::http::{RequestHeader, ResponseHeader};

/// One fuzz input (`fuzz/fuzz_targets/policy.rs`; replayed by `tests/fuzz_corpus.rs`).
pub fn run(data: &[u8]) {
    if data.len() < 7 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]) % 1000;
    let flags = data[2];
    let clock = u32::from_le_bytes([data[3], data[4], data[5], data[6]]);
    let text = String::from_utf8_lossy(&data[7..]);
    let (req_text, resp_text) = text.split_once("\n\n").unwrap_or((&text, ""));

    let method = match req_text.lines().next() {
        Some(m) if !m.contains(':') && !m.is_empty() => m.trim(),
        _ => "GET",
    };
    let Ok(mut req) = RequestHeader::build(method, b"/organizations/o/libraries/l/assets", None)
    else {
        return;
    };
    for (n, v) in header_lines(req_text) {
        let _ = req.append_header(n.to_string(), v);
    }
    let Ok(mut resp) = ResponseHeader::build(status, None) else {
        return;
    };
    for (n, v) in header_lines(resp_text) {
        let _ = resp.append_header(n.to_string(), v);
    }

    let _ = policy::request_cacheable(&req);
    let _ = policy::client_wants_revalidation(&req);

    let mut settings = default_settings().cache.clone();
    settings.share = if flags & 1 == 0 {
        Share::PerKey
    } else {
        Share::Shared
    };
    settings.default_ttl = Duration::from_secs(u64::from(flags >> 5));
    settings.stale_while_revalidate = Duration::from_secs(u64::from((flags >> 2) & 3));
    let route = CacheRoute {
        name: "assets".into(),
        pattern: PathPattern::parse("/organizations/{org}/libraries/{library}/assets")
            .expect("static template"),
        ttl: (flags & 2 != 0).then(|| Duration::from_secs(15)),
        stale_while_revalidate: Some(Duration::from_secs(7)),
        stale_if_error: (flags & 16 != 0).then(|| Duration::from_secs(60)),
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800 + u64::from(clock));
    for r in [None, Some(&route)] {
        if let Ok(f) = policy::decide(&settings, r, &req, &resp, now) {
            // Never a partial response or a validation; per key, only a listed status.
            let s = resp.status.as_u16();
            assert!((200..600).contains(&s) && !matches!(s, 206 | 304), "{s}");
            if settings.share == Share::PerKey {
                assert!(settings.store_statuses.contains(&s), "{s}");
            }
            assert!(!resp.headers.contains_key(http::header::SET_COOKIE));
            assert!(!crate::cache::key::vary_star(&resp));
            // Saturating arithmetic only: a huge max-age must not wrap into a short one.
            let _ = f.fresh.checked_add(f.stale_while_revalidate);
        }
    }
}
