//! Range requests answered from a stored complete response (RFC 9110 §14, RFC 9111 §3.4).
//!
//! pingora-proxy does the byte work: on a hit it seeks in our hit handler
//! ([`super::storage::MokaHit`]) for a single range, and for several ranges it frames a
//! `multipart/byteranges` body from the stored one; on a miss (and a stale or revalidated
//! response) the origin is asked for the whole response without `Range`, which is stored, and the
//! client's range is cut from it on the way out. Parsing the `Range` field and the 206/416 header
//! are pingora's `range_header_filter`. What this module adds is what pingora's default gets
//! wrong against RFC 9110:
//!
//! - `Range` is only defined for GET (§14.2): a HEAD with `Range` is answered as a HEAD.
//! - `If-Range` (§13.1.5) uses the *strong* comparison: a weak entity tag never matches, and a
//!   date matches only a `Last-Modified` that is strong (the stored `Date` at least one second
//!   later, §8.8.2.2) and equal to it. pingora compares the raw bytes, so a weak tag matched.
//! - A request without `Range` leaves the response alone (pingora's default adds
//!   `Accept-Ranges: bytes` to every response it sees, which would make hits through the state
//!   machine differ from fast-path hits).

use std::time::{Duration, SystemTime};

use http::header::{DATE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{range_header_filter, RangeType};

/// More ranges than this in one request are ignored (the whole response is sent), as RFC 9110
/// §14.2 allows for egregious range sets; pingora's own default.
const MAX_RANGES: usize = 200;

/// Whether `req` is a request the cache answers with a part of a stored response (as opposed
/// to a whole one): a GET with `Range`.
pub fn is_range_request(req: &RequestHeader) -> bool {
    req.method == http::Method::GET && req.headers.contains_key(RANGE)
}

/// The range to send of `resp` (a complete response about to be sent from the cache), with
/// `resp` turned into the 206 or 416 header when a range applies.
pub fn header_filter(req: &RequestHeader, resp: &mut ResponseHeader) -> RangeType {
    if !is_range_request(req) {
        return RangeType::None;
    }
    match req.headers.get(IF_RANGE) {
        None => range_header_filter(req, resp, Some(MAX_RANGES)),
        Some(v) if if_range_holds(v.as_bytes(), resp) => {
            // pingora would compare If-Range again, bytewise; it already holds.
            let mut plain = req.clone();
            plain.remove_header(&IF_RANGE);
            range_header_filter(&plain, resp, Some(MAX_RANGES))
        }
        // The representation changed: the whole of it, as a 200.
        Some(_) => RangeType::None,
    }
}

/// RFC 9110 §13.1.5 against the stored response's validators.
fn if_range_holds(if_range: &[u8], resp: &ResponseHeader) -> bool {
    let if_range = trim(if_range);
    if if_range.starts_with(b"W/") {
        return false;
    }
    if if_range.first() == Some(&b'"') {
        return resp
            .headers
            .get(ETAG)
            .map(|e| trim(e.as_bytes()))
            .is_some_and(|e| e.first() == Some(&b'"') && e == if_range);
    }
    let date = |v: &[u8]| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    };
    let Some(wanted) = date(if_range) else {
        return false;
    };
    let Some(last_modified) = resp
        .headers
        .get(LAST_MODIFIED)
        .and_then(|v| date(v.as_bytes()))
    else {
        return false;
    };
    // A Last-Modified is a strong validator for a cache only when the response's Date is at
    // least a second later (RFC 9110 §8.8.2.2).
    let strong = resp
        .headers
        .get(DATE)
        .and_then(|v| date(v.as_bytes()))
        .is_some_and(|d: SystemTime| {
            d.duration_since(last_modified)
                .is_ok_and(|gap| gap >= Duration::from_secs(1))
        });
    strong && wanted == last_modified
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
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
        r.append_header("content-length", "10").unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    const LM: &str = "Tue, 01 Dec 2026 10:00:00 GMT";
    const LATER: &str = "Tue, 01 Dec 2026 10:00:05 GMT";

    fn status(req: &RequestHeader, mut resp: ResponseHeader) -> u16 {
        header_filter(req, &mut resp);
        resp.status.as_u16()
    }

    #[test]
    fn if_range_is_a_strong_comparison() {
        let tagged = || stored(&[("etag", "\"v1\"")]);
        let range = ("range", "bytes=0-1");
        assert_eq!(status(&req(&[range]), tagged()), 206);
        assert_eq!(
            status(&req(&[range, ("if-range", "\"v1\"")]), tagged()),
            206
        );
        assert_eq!(
            status(&req(&[range, ("if-range", "\"v2\"")]), tagged()),
            200
        );
        assert_eq!(
            status(&req(&[range, ("if-range", "W/\"v1\"")]), tagged()),
            200
        );
        let weak = stored(&[("etag", "W/\"v1\"")]);
        assert_eq!(status(&req(&[range, ("if-range", "W/\"v1\"")]), weak), 200);
        // Dates: equal to a strong Last-Modified only.
        let dated = || stored(&[("last-modified", LM), ("date", LATER)]);
        assert_eq!(status(&req(&[range, ("if-range", LM)]), dated()), 206);
        assert_eq!(status(&req(&[range, ("if-range", LATER)]), dated()), 200);
        let same_second = stored(&[("last-modified", LM), ("date", LM)]);
        assert_eq!(status(&req(&[range, ("if-range", LM)]), same_second), 200);
        assert_eq!(status(&req(&[range, ("if-range", "soon")]), dated()), 200);
    }

    #[test]
    fn only_get_is_ranged() {
        let mut head = req(&[("range", "bytes=0-1")]);
        head.set_method(http::Method::HEAD);
        let mut resp = stored(&[]);
        assert_eq!(header_filter(&head, &mut resp), RangeType::None);
        assert_eq!(resp.status.as_u16(), 200);
        // No Range: the response is left as it is (no Accept-Ranges added).
        let mut resp = stored(&[]);
        assert_eq!(header_filter(&req(&[]), &mut resp), RangeType::None);
        assert!(!resp.headers.contains_key("accept-ranges"));
        assert_eq!(status(&req(&[("range", "bytes=20-")]), stored(&[])), 416);
    }
}
