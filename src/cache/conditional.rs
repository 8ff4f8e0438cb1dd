//! A client's conditional GET/HEAD evaluated against a stored 200 (RFC 9110 §13.1–13.2,
//! RFC 9111 §4.3.2), for both readers: the fast path and pingora's `cache_not_modified_filter`.
//!
//! pingora's `not_modified_filter` matches entity tags as raw bytes, so an unquoted tag (not an
//! entity-tag at all) matched an equally unquoted `ETag`, and a list member's commas inside a
//! quoted tag split it. Here the field is parsed as the RFC's `#entity-tag` list:
//!
//! - `If-None-Match: *` matches any stored representation; otherwise members are
//!   `[W/]"opaque"` and compared with the *weak* function (§13.1.2: `W/"a"` matches `"a"`).
//!   A member that is not a valid entity-tag matches nothing, and neither does a stored `ETag`
//!   that is not one.
//! - `If-None-Match` present: `If-Modified-Since` is ignored (§13.1.3). `If-Modified-Since` is
//!   ignored too when it is not one valid HTTP-date (§13.1.3), and needs a stored
//!   `Last-Modified`.
//!
//! `If-Match` / `If-Unmodified-Since` are not a cache's to evaluate (RFC 9111 §4.3.2): requests
//! carrying them bypass the cache (`BypassReason::Precondition`) and reach the origin intact.

use http::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use pingora::http::{RequestHeader, ResponseHeader};

/// Whether the stored `resp` answers `req` with a 304 rather than itself.
pub fn not_modified(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    if resp.status != http::StatusCode::OK {
        return false;
    }
    if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
        return false;
    }
    if req.headers.contains_key(IF_NONE_MATCH) {
        let stored = resp.headers.get(ETAG).and_then(|e| opaque(e.as_bytes()));
        return req
            .headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .any(|v| matches_any(v.as_bytes(), stored));
    }
    let mut since = req.headers.get_all(IF_MODIFIED_SINCE).iter();
    let (Some(since), None) = (since.next(), since.next()) else {
        return false;
    };
    let date = |v: &http::HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    };
    match (date(since), resp.headers.get(LAST_MODIFIED).and_then(date)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// The opaque tag of one entity-tag (`"x"` or `W/"x"`), without the quotes; `None` when the
/// value is not an entity-tag.
fn opaque(tag: &[u8]) -> Option<&[u8]> {
    let tag = tag.trim_ascii();
    let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
    let inner = tag.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    // etagc = %x21 / %x23-7E / obs-text: no DQUOTE, no space or controls.
    inner
        .iter()
        .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        .then_some(inner)
}

/// One `If-None-Match` line against the stored tag: `*`, or any member equal by the weak
/// comparison. Members are split at commas outside quotes.
fn matches_any(line: &[u8], stored: Option<&[u8]>) -> bool {
    if line.trim_ascii() == b"*" {
        return true;
    }
    let Some(stored) = stored else { return false };
    let mut start = 0;
    let mut quoted = false;
    for (i, &b) in line.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                if opaque(&line[start..i]) == Some(stored) {
                    return true;
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    opaque(&line[start..]) == Some(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    fn stored(headers: &[(&'static str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn entity_tags_are_parsed_and_compared_weakly() {
        let tagged = stored(&[("etag", "\"v1\"")]);
        let weak = stored(&[("etag", "W/\"v1\"")]);
        let nm =
            |inm: &str, resp: &ResponseHeader| not_modified(&req(&[("if-none-match", inm)]), resp);
        for inm in [
            "\"v1\"",
            "W/\"v1\"",
            " \"x\" , W/\"v1\" ",
            "*",
            "\"a,b\", \"v1\"",
        ] {
            assert!(nm(inm, &tagged), "{inm}");
            assert!(nm(inm, &weak), "{inm}");
        }
        for inm in ["v1", "\"v2\"", "\"v1", "\"a,\"v1\"\"", ""] {
            assert!(!nm(inm, &tagged), "{inm}");
        }
        // A comma inside a quoted tag does not split it.
        let comma = stored(&[("etag", "\"a,b\"")]);
        assert!(nm("\"a,b\"", &comma));
        assert!(!nm("\"a\"", &comma));
        // An unquoted stored ETag is not an entity-tag: nothing matches it but `*`.
        let unquoted = stored(&[("etag", "v1")]);
        assert!(!nm("v1", &unquoted));
        assert!(nm("*", &unquoted));
    }

    #[test]
    fn if_modified_since_rules() {
        let lm = "Tue, 01 Dec 2026 10:00:00 GMT";
        let resp = stored(&[("last-modified", lm), ("etag", "\"v1\"")]);
        let ims = |v: &str| req(&[("if-modified-since", v)]);
        assert!(not_modified(&ims(lm), &resp));
        assert!(not_modified(&ims("Tue, 01 Dec 2026 11:00:00 GMT"), &resp));
        assert!(!not_modified(&ims("Tue, 01 Dec 2026 09:00:00 GMT"), &resp));
        assert!(!not_modified(&ims("yesterday"), &resp));
        // If-None-Match takes precedence.
        let both = req(&[("if-modified-since", lm), ("if-none-match", "\"v2\"")]);
        assert!(!not_modified(&both, &resp));
        // More than one member: ignored.
        let two = req(&[("if-modified-since", lm), ("if-modified-since", lm)]);
        assert!(!not_modified(&two, &resp));
    }
}
