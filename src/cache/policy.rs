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
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{CacheRoute, CacheSettings, Share};

use super::directives::{Directives, RequestDirectives};
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
    // RFC 9111 §4.3.2: If-Match and If-Unmodified-Since are not applicable to a cache; the
    // origin evaluates them (pingora-cache would strip them on a miss and ignore them on a hit).
    if req.headers.contains_key(http::header::IF_MATCH)
        || req.headers.contains_key(http::header::IF_UNMODIFIED_SINCE)
    {
        return Err(BypassReason::Precondition);
    }
    // A Range request is the cache's too: answered from the stored complete response, or on a
    // miss by storing the whole response and sending the range of it (`super::range`).
    Ok(())
}

/// The client asked to revalidate (`Cache-Control: no-cache` / `max-age=0`, or legacy
/// `Pragma: no-cache` without Cache-Control).
pub fn client_wants_revalidation(req: &RequestHeader) -> bool {
    let d = RequestDirectives::of(req);
    d.no_cache || d.max_age == Some(0)
}

/// Whether the stored response `header` may ever be served stale (RFC 9111 §4.2.4): not with
/// `no-cache` or `must-revalidate`, nor `proxy-revalidate` in a shared cache.
pub fn may_serve_stale(settings: &CacheSettings, header: &ResponseHeader) -> bool {
    let shared = settings.share == Share::Shared;
    !Directives::of(header, settings.targeted_cache_control.as_ref())
        .is_some_and(|c| c.no_cache || c.must_revalidate || (shared && c.proxy_revalidate))
}

/// RFC 9111 §4.3.5: a 200 to a HEAD may update the stored GET response when every validator
/// it carries (`ETag`, `Last-Modified`; at least one) equals the stored one, and its
/// `Content-Length`, if any, is the stored one's.
pub fn head_matches_stored(stored: &ResponseHeader, head: &ResponseHeader) -> bool {
    let mut any = false;
    for name in [http::header::ETAG, http::header::LAST_MODIFIED] {
        if let Some(v) = head.headers.get(&name) {
            any = true;
            if stored.headers.get(&name) != Some(v) {
                return false;
            }
        }
    }
    let length_matches = match head.headers.get(http::header::CONTENT_LENGTH) {
        Some(v) => stored.headers.get(http::header::CONTENT_LENGTH) == Some(v),
        None => true,
    };
    any && length_matches
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

/// Statuses that are heuristically cacheable (RFC 9110 §15.1).
const HEURISTICALLY_CACHEABLE: &[u16] =
    &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// RFC 9111 §4.2.2, in `shared` mode only (per-key mode keeps Raster's route rules): a response
/// without explicit freshness, with a heuristically cacheable status (or `public`) and a
/// `Last-Modified`, is fresh for `cache.heuristic_percent` of (`Date` − `Last-Modified`), at
/// most `cache.heuristic_max_ttl`. `None` when it does not apply or comes to zero.
fn heuristic_freshness(
    settings: &CacheSettings,
    status: u16,
    cc: Option<&Directives>,
    resp: &ResponseHeader,
    now: SystemTime,
) -> Option<Duration> {
    if settings.share != Share::Shared || settings.heuristic_percent == 0 {
        return None;
    }
    if !(HEURISTICALLY_CACHEABLE.contains(&status) || cc.is_some_and(|c| c.public)) {
        return None;
    }
    let v = resp
        .headers
        .get(http::header::LAST_MODIFIED)?
        .to_str()
        .ok()?;
    let last_modified = httpdate::parse_http_date(v.trim()).ok()?;
    // Both on the origin's clock when it sends Date; else the time of receipt.
    let span = date(resp)
        .unwrap_or(now)
        .duration_since(last_modified)
        .ok()?;
    let h = (span * settings.heuristic_percent / 100).min(settings.heuristic_max_ttl);
    let h = Duration::from_secs(h.as_secs());
    (!h.is_zero()).then_some(h)
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
    // RFC 9111 §5.2.2.3: with must-understand, a status this cache understands is stored
    // whatever no-store says (it is there for caches that do not); any other is not.
    let must_understand = cc.is_some_and(|c| c.must_understand);
    if must_understand && !understood(status) {
        return Err(NoStoreReason::Status);
    }
    if cc.is_some_and(|c| c.no_store) && !must_understand {
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

    let route_ttl = route.and_then(|r| r.ttl);
    let lifetime = match origin {
        Some(l) => l,
        None => {
            // An operator's route rule is explicit; the Last-Modified heuristic comes next,
            // ahead of the blanket negative_ttl / default_ttl.
            let heuristic = if route_ttl.is_none() {
                heuristic_freshness(settings, status, cc, resp, now)
            } else {
                None
            };
            if let Some(h) = heuristic {
                h
            } else if matches!(status, 404 | 410) {
                settings.negative_ttl
            } else if let Some(ttl) = route_ttl {
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
            heuristic_percent: 10,
            heuristic_max_ttl: Duration::from_secs(3600),
            forward_conditional_misses: false,
            targeted_cache_control: Some(http::HeaderName::from_static(
                "raster-edge-cache-control",
            )),
            routes: vec![],
            invalidation: vec![],
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
    fn requests_with_unsafe_methods_bypass() {
        let mut r = RequestHeader::build("GET", b"/a", None).unwrap();
        assert!(request_cacheable(&r).is_ok());
        r.insert_header("range", "bytes=0-1").unwrap();
        assert!(request_cacheable(&r).is_ok());
        r.insert_header("if-match", "\"x\"").unwrap();
        assert_eq!(request_cacheable(&r), Err(BypassReason::Precondition));
        let p = RequestHeader::build("POST", b"/a", None).unwrap();
        assert_eq!(request_cacheable(&p), Err(BypassReason::Method));
        let mut c = RequestHeader::build("GET", b"/a", None).unwrap();
        assert!(!client_wants_revalidation(&c));
        c.insert_header("cache-control", "max-age=0").unwrap();
        assert!(client_wants_revalidation(&c));
    }

    #[test]
    fn heuristic_freshness_in_shared_mode_only() {
        let now = SystemTime::now();
        let at = |ago: u64| httpdate::fmt_http_date(now - Duration::from_secs(ago));
        let (date, lm, old_lm) = (at(0), at(10_000), at(1_000_000));
        let h = |s: &CacheSettings, status: u16, headers: &[(&'static str, &str)]| {
            decide(s, None, &req(false), &resp(status, headers), now)
        };
        let shared = settings(Share::Shared);
        let with_lm = [("date", date.as_str()), ("last-modified", lm.as_str())];
        let f = h(&shared, 200, &with_lm).unwrap();
        assert!((999..=1000).contains(&f.fresh.as_secs()), "{:?}", f.fresh);
        // Capped.
        let capped = [("date", date.as_str()), ("last-modified", old_lm.as_str())];
        assert_eq!(
            h(&shared, 200, &capped).unwrap().fresh,
            Duration::from_secs(3600)
        );
        // Explicit freshness wins; per-key mode and a 0 percentage have none.
        let explicit = [with_lm[0], with_lm[1], ("cache-control", "max-age=7")];
        assert_eq!(
            h(&shared, 200, &explicit).unwrap().fresh,
            Duration::from_secs(7)
        );
        assert_eq!(
            h(&settings(Share::PerKey), 200, &with_lm),
            Err(NoStoreReason::NoFreshness)
        );
        let mut off = settings(Share::Shared);
        off.heuristic_percent = 0;
        assert_eq!(h(&off, 200, &with_lm), Err(NoStoreReason::NoFreshness));
        // Heuristically cacheable statuses only (a listed 302 without freshness: not stored).
        let mut listed = settings(Share::Shared);
        listed.store_statuses.push(302);
        assert_eq!(h(&listed, 302, &with_lm), Err(NoStoreReason::NoFreshness));
        // 404 takes the heuristic over negative_ttl; a route rule beats the heuristic.
        assert!(h(&shared, 404, &with_lm).unwrap().fresh.as_secs() >= 999);
        let f = decide(
            &shared,
            Some(&route()),
            &req(false),
            &resp(200, &with_lm),
            now,
        )
        .unwrap();
        assert_eq!(f.fresh, Duration::from_secs(15));
    }

    #[test]
    fn must_understand_overrides_no_store_for_understood_statuses() {
        let s = settings(Share::Shared);
        let mu = |st: u16| {
            d(
                &s,
                None,
                &resp(
                    st,
                    &[(
                        "cache-control",
                        "max-age=60, public, no-store, must-understand",
                    )],
                ),
            )
        };
        assert!(mu(200).is_ok());
        assert!(mu(302).is_ok());
        assert_eq!(mu(206), Err(NoStoreReason::Status));
        assert_eq!(
            d(
                &s,
                None,
                &resp(200, &[("cache-control", "max-age=60, public, no-store")])
            ),
            Err(NoStoreReason::NoStore)
        );
    }
}
