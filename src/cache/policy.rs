//! Cacheability and freshness (RFC 9111, adapted to a per-key API cache).
//!
//! Order of authority: the origin's `Cache-Control` / `Expires` / `Age` win whenever present;
//! otherwise the first matching route rule gives the TTL and stale windows; otherwise 404/410
//! get `negative_ttl` and a 200 gets `default_ttl`; a response with no freshness at all is not
//! stored. pingora-cache's own `resp_cacheable` is not used: it refuses `private` outright and
//! applies its default stale-if-error to every response, both wrong here (docs/ARCHITECTURE.md,
//! workaround 2). The governing directives come from [`Directives::of`] (a targeted field,
//! `CDN-Cache-Control`, then `Cache-Control`); docs/CACHING.md maps every directive and status.

use std::time::{Duration, SystemTime};

use http::Method;
use pingora::cache::cache_control::CacheControl;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{CacheRoute, CacheSettings, Share};

use super::directives::Directives;
use super::key;
use super::phase::{BypassReason, NoStoreReason};

/// Statuses pingora-cache and this store can serve from storage: a complete response, not a
/// partial one (206) nor a validation (304). In `shared` mode a response with one of them and
/// explicit freshness may be stored even when `cache.store_statuses` does not list it
/// (RFC 9111 §3).
fn understood(status: u16) -> bool {
    (200..600).contains(&status) && !matches!(status, 206 | 304)
}

/// What a stored response is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    /// Freshness left at storage time (lifetime minus the origin's `Age`).
    pub fresh: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// The origin's `Age` (RFC 9111 §5.1): where the stored response's age starts.
    pub age: Duration,
    /// Fields not to store (lowercase): `no-cache="…"` in both modes (they may not be sent
    /// from storage without revalidation, and a stored copy that never has them is the
    /// simplest way to honour that), `private="…"` in shared mode (RFC 9111 §5.2.2.4, §5.2.2.7).
    pub strip: Vec<String>,
}

/// Is this request one the cache may answer or store? `Err` names why not.
pub fn request_cacheable(req: &RequestHeader) -> Result<(), BypassReason> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(BypassReason::Method);
    }
    // Partial content is passed through untouched: storing whole bodies for range requests
    // would turn a small read into a full download from the origin.
    if req.headers.contains_key(http::header::RANGE) {
        return Err(BypassReason::Range);
    }
    Ok(())
}

/// The client asked to revalidate (`Cache-Control: no-cache` / `max-age=0`, or legacy
/// `Pragma: no-cache` without Cache-Control).
pub fn client_wants_revalidation(req: &RequestHeader) -> bool {
    match CacheControl::from_req_headers(req) {
        Some(cc) => cc.no_cache() || matches!(cc.max_age(), Ok(Some(0))),
        None => req
            .headers
            .get(http::header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache")),
    }
}

fn has_validator(resp: &ResponseHeader) -> bool {
    resp.headers.contains_key(http::header::ETAG)
        || resp.headers.contains_key(http::header::LAST_MODIFIED)
}

/// `Age` (RFC 9111 §5.1): the first member of the first line (`Age: 7200, 0` is 7200); an
/// invalid value is ignored. Values past u32 saturate (the RFC's 2^31 rule, generously).
pub fn age_value(resp: &ResponseHeader) -> Option<u64> {
    let v = resp.headers.get(http::header::AGE)?.to_str().ok()?;
    let first = v.split(',').next()?.trim();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(first.parse::<u64>().unwrap_or(u64::from(u32::MAX)))
}

/// `Expires` (RFC 9111 §5.3): any of the three date formats of RFC 9110 §5.6.7 (httpdate
/// parses all three); an invalid date, `0` included, means already expired.
fn expires(resp: &ResponseHeader) -> Option<Option<SystemTime>> {
    let v = resp.headers.get(http::header::EXPIRES)?;
    Some(
        v.to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v.trim()).ok()),
    )
}

fn date(resp: &ResponseHeader) -> Option<SystemTime> {
    let v = resp.headers.get(http::header::DATE)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok()
}

/// Decides whether `resp` (to `req`) may be stored and for how long.
pub fn decide(
    settings: &CacheSettings,
    route: Option<&CacheRoute>,
    req: &RequestHeader,
    resp: &ResponseHeader,
    now: SystemTime,
) -> Result<Freshness, NoStoreReason> {
    let status = resp.status.as_u16();
    let shared = settings.share == Share::Shared;
    let cc = Directives::of(resp, settings.targeted_cache_control.as_ref());
    let cc = cc.as_ref();
    let explicit = cc.is_some_and(|c| c.max_age.is_some() || (shared && c.s_maxage.is_some()))
        || (!cc.is_some_and(|c| c.targeted) && resp.headers.contains_key(http::header::EXPIRES));
    let storable =
        settings.store_statuses.contains(&status) || (shared && explicit && understood(status));
    if !storable {
        return Err(if status >= 500 {
            NoStoreReason::UpstreamError
        } else {
            NoStoreReason::Status
        });
    }
    if resp.headers.contains_key(http::header::SET_COOKIE) {
        return Err(NoStoreReason::SetCookie);
    }
    if key::vary_star(resp) {
        return Err(NoStoreReason::VaryStar);
    }
    if cc.is_some_and(|c| c.no_store) {
        return Err(NoStoreReason::NoStore);
    }
    if shared && cc.is_some_and(|c| c.private) {
        return Err(NoStoreReason::Private);
    }
    // RFC 9111 §3.5: a shared cache stores responses to authenticated requests only when the
    // origin explicitly allows it. In per-key mode the cache is private to the key.
    if shared
        && req.headers.contains_key(http::header::AUTHORIZATION)
        && !cc.is_some_and(|c| c.public || c.s_maxage.is_some() || c.must_revalidate)
    {
        return Err(NoStoreReason::Authorization);
    }

    let s_maxage = if shared {
        cc.and_then(|c| c.s_maxage)
    } else {
        None
    };
    let max_age = cc.and_then(|c| c.max_age);
    let mut origin: Option<Duration> = s_maxage
        .or(max_age)
        .map(|s| Duration::from_secs(u64::from(s)));
    if origin.is_none() && !cc.is_some_and(|c| c.targeted) {
        if let Some(expires) = expires(resp) {
            // RFC 9111 §4.2.1: lifetime = Expires - Date (the origin's clock on both sides).
            let base = date(resp).unwrap_or(now);
            origin = Some(
                expires
                    .and_then(|e| e.duration_since(base).ok())
                    .unwrap_or_default(),
            );
        }
    }
    let no_cache = cc.is_some_and(|c| c.no_cache);
    if no_cache {
        // Stored, but every use must be validated first.
        origin = Some(Duration::ZERO);
    }

    let lifetime = match origin {
        Some(l) => l,
        None => {
            if matches!(status, 404 | 410) {
                settings.negative_ttl
            } else if let Some(ttl) = route.and_then(|r| r.ttl) {
                ttl
            } else if status == 200 {
                settings.default_ttl
            } else {
                Duration::ZERO
            }
        }
    };
    let age = Duration::from_secs(age_value(resp).unwrap_or(0));
    let fresh = lifetime.saturating_sub(age);
    if fresh.is_zero() && !(origin.is_some() && has_validator(resp)) {
        // Nothing to gain from storing: it would be stale at once and cannot be revalidated.
        return Err(if origin.is_some() {
            NoStoreReason::StaleOnArrival
        } else {
            NoStoreReason::NoFreshness
        });
    }

    // must-revalidate / no-cache (and proxy-revalidate for a shared cache) forbid serving stale.
    let no_stale =
        no_cache || cc.is_some_and(|c| c.must_revalidate || (shared && c.proxy_revalidate));
    let pick = |origin_value: Option<u32>, route_value: Option<Duration>, global: Duration| {
        if no_stale {
            return Duration::ZERO;
        }
        origin_value
            .map(|s| Duration::from_secs(u64::from(s)))
            .or(route_value)
            .unwrap_or(global)
    };
    let mut strip: Vec<String> = cc.map(|c| c.no_cache_fields.clone()).unwrap_or_default();
    if shared {
        strip.extend(cc.iter().flat_map(|c| c.private_fields.iter().cloned()));
    }
    Ok(Freshness {
        fresh,
        age,
        strip,
        stale_while_revalidate: pick(
            cc.and_then(|c| c.stale_while_revalidate),
            route.and_then(|r| r.stale_while_revalidate),
            settings.stale_while_revalidate,
        ),
        stale_if_error: pick(
            cc.and_then(|c| c.stale_if_error),
            route.and_then(|r| r.stale_if_error),
            settings.stale_if_error,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::PathPattern;

    pub(crate) fn settings(share: Share) -> CacheSettings {
        CacheSettings {
            enabled: true,
            max_memory: 1 << 20,
            max_object_size: 1 << 16,
            share,
            default_ttl: Duration::ZERO,
            negative_ttl: Duration::from_secs(5),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            honor_client_no_cache: false,
            lock_timeout: Duration::from_secs(5),
            uncacheable_ttl: Duration::from_secs(30),
            fast_path: true,
            store_statuses: vec![200, 203, 204, 300, 301, 404, 405, 410, 414, 501],
            targeted_cache_control: Some(http::HeaderName::from_static(
                "raster-edge-cache-control",
            )),
            routes: vec![],
            invalidation: vec![],
            shared: crate::config::SharedSettings {
                enabled: false,
                max_object_size: 1 << 20,
                coalesce: true,
            },
        }
    }

    fn route() -> CacheRoute {
        CacheRoute {
            name: "assets".into(),
            pattern: PathPattern::parse("/a").unwrap(),
            ttl: Some(Duration::from_secs(15)),
            stale_while_revalidate: Some(Duration::from_secs(7)),
            stale_if_error: Some(Duration::from_secs(60)),
        }
    }

    fn resp(status: u16, headers: &[(&'static str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    fn req(auth: bool) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/a", None).unwrap();
        if auth {
            r.insert_header("authorization", "Bearer k").unwrap();
        }
        r
    }

    fn d(
        s: &CacheSettings,
        r: Option<&CacheRoute>,
        h: &ResponseHeader,
    ) -> Result<Freshness, NoStoreReason> {
        decide(s, r, &req(true), h, SystemTime::now())
    }

    #[test]
    fn route_rule_applies_without_origin_freshness() {
        let s = settings(Share::PerKey);
        let f = d(&s, Some(&route()), &resp(200, &[])).unwrap();
        assert_eq!(f.fresh, Duration::from_secs(15));
        assert_eq!(f.stale_while_revalidate, Duration::from_secs(7));
        assert_eq!(f.stale_if_error, Duration::from_secs(60));
        assert_eq!(
            d(&s, None, &resp(200, &[])),
            Err(NoStoreReason::NoFreshness)
        );
    }

    #[test]
    fn origin_wins_over_route() {
        let s = settings(Share::PerKey);
        let r = route();
        let f = d(
            &s,
            Some(&r),
            &resp(
                200,
                &[("cache-control", "max-age=3, stale-while-revalidate=2")],
            ),
        )
        .unwrap();
        assert_eq!(f.fresh, Duration::from_secs(3));
        assert_eq!(f.stale_while_revalidate, Duration::from_secs(2));
        let f = d(
            &s,
            Some(&r),
            &resp(200, &[("cache-control", "max-age=10"), ("age", "4")]),
        )
        .unwrap();
        assert_eq!(f.fresh, Duration::from_secs(6));
        assert_eq!(
            d(&s, Some(&r), &resp(200, &[("cache-control", "no-store")])),
            Err(NoStoreReason::NoStore)
        );
        let f = d(
            &s,
            Some(&r),
            &resp(200, &[("cache-control", "max-age=10, must-revalidate")]),
        )
        .unwrap();
        assert_eq!(f.stale_if_error, Duration::ZERO);
    }

    #[test]
    fn private_and_authorization_depend_on_share_mode() {
        let per_key = settings(Share::PerKey);
        let shared = settings(Share::Shared);
        let r = route();
        let private = resp(200, &[("cache-control", "private, max-age=5")]);
        assert!(d(&per_key, Some(&r), &private).is_ok());
        assert_eq!(d(&shared, Some(&r), &private), Err(NoStoreReason::Private));
        assert_eq!(
            d(&shared, Some(&r), &resp(200, &[])),
            Err(NoStoreReason::Authorization)
        );
        let public = resp(200, &[("cache-control", "public, max-age=5")]);
        assert!(d(&shared, Some(&r), &public).is_ok());
        let smax = resp(200, &[("cache-control", "s-maxage=9, max-age=1")]);
        assert_eq!(
            d(&shared, Some(&r), &smax).unwrap().fresh,
            Duration::from_secs(9)
        );
        assert_eq!(
            d(&per_key, Some(&r), &smax).unwrap().fresh,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn statuses_cookies_and_vary_star() {
        let s = settings(Share::PerKey);
        let r = route();
        for st in [401, 403, 429, 206] {
            assert_eq!(d(&s, Some(&r), &resp(st, &[])), Err(NoStoreReason::Status));
        }
        for st in [500, 502, 503, 504] {
            assert_eq!(
                d(&s, Some(&r), &resp(st, &[])),
                Err(NoStoreReason::UpstreamError)
            );
        }
        assert_eq!(
            d(&s, Some(&r), &resp(404, &[])).unwrap().fresh,
            Duration::from_secs(5)
        );
        assert_eq!(
            d(&s, Some(&r), &resp(200, &[("set-cookie", "a=b")])),
            Err(NoStoreReason::SetCookie)
        );
        assert_eq!(
            d(&s, Some(&r), &resp(200, &[("vary", "*")])),
            Err(NoStoreReason::VaryStar)
        );
    }

    #[test]
    fn shared_mode_stores_any_understood_status_with_explicit_freshness() {
        let per_key = settings(Share::PerKey);
        let shared = settings(Share::Shared);
        let fresh = [("cache-control", "public, max-age=30")];
        for st in [302, 307, 308, 400, 500, 503] {
            assert!(d(&shared, None, &resp(st, &fresh)).is_ok(), "{st}");
            assert!(d(&per_key, None, &resp(st, &fresh)).is_err(), "{st}");
            // Without explicit freshness, only the listed statuses.
            assert!(d(&shared, None, &resp(st, &[("cache-control", "public")])).is_err());
        }
        for st in [206, 304] {
            assert_eq!(
                d(&shared, None, &resp(st, &fresh)),
                Err(NoStoreReason::Status)
            );
        }
        let mut listed = settings(Share::PerKey);
        listed.store_statuses.push(302);
        assert!(d(&listed, None, &resp(302, &fresh)).is_ok());
    }

    #[test]
    fn list_valued_and_invalid_age() {
        assert_eq!(age_value(&resp(200, &[("age", "7200, 0")])), Some(7200));
        assert_eq!(age_value(&resp(200, &[("age", " 12 ")])), Some(12));
        assert_eq!(age_value(&resp(200, &[("age", "-1")])), None);
        assert_eq!(age_value(&resp(200, &[("age", "1.5")])), None);
        assert_eq!(age_value(&resp(200, &[])), None);
        let s = settings(Share::PerKey);
        let r = resp(
            200,
            &[("cache-control", "max-age=3600"), ("age", "7200, 0")],
        );
        assert_eq!(d(&s, None, &r), Err(NoStoreReason::StaleOnArrival));
    }

    #[test]
    fn expires_and_no_cache() {
        let s = settings(Share::PerKey);
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let exp = httpdate::fmt_http_date(now + Duration::from_secs(20));
        let f = decide(
            &s,
            None,
            &req(false),
            &resp(200, &[("date", &date), ("expires", &exp)]),
            now,
        )
        .unwrap();
        assert!(f.fresh >= Duration::from_secs(19) && f.fresh <= Duration::from_secs(20));
        assert_eq!(
            d(&s, Some(&route()), &resp(200, &[("expires", "0")])),
            Err(NoStoreReason::StaleOnArrival)
        );
        let nc = resp(200, &[("cache-control", "no-cache"), ("etag", "\"x\"")]);
        let f = d(&s, Some(&route()), &nc).unwrap();
        assert_eq!(f.fresh, Duration::ZERO);
        assert_eq!(f.stale_while_revalidate, Duration::ZERO);
    }

    #[test]
    fn requests_with_range_or_unsafe_methods_bypass() {
        let mut r = RequestHeader::build("GET", b"/a", None).unwrap();
        assert!(request_cacheable(&r).is_ok());
        r.insert_header("range", "bytes=0-1").unwrap();
        assert_eq!(request_cacheable(&r), Err(BypassReason::Range));
        let p = RequestHeader::build("POST", b"/a", None).unwrap();
        assert_eq!(request_cacheable(&p), Err(BypassReason::Method));
        let mut c = RequestHeader::build("GET", b"/a", None).unwrap();
        assert!(!client_wants_revalidation(&c));
        c.insert_header("cache-control", "max-age=0").unwrap();
        assert!(client_wants_revalidation(&c));
    }
}
