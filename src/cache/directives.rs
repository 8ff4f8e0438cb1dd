//! The response directives this cache obeys, from the one field that governs it (RFC 9213):
//! the configured targeted field (`cache.targeted_cache_control`), else `CDN-Cache-Control`,
//! else `Cache-Control`. A targeted field with no valid, non-empty value is ignored; when one
//! is used, `Cache-Control` and `Expires` are ignored for this cache's decisions (they still go
//! to clients unchanged).
//!
//! Targeted fields are structured-field dictionaries (RFC 8941) and are parsed with `sfv`;
//! `Cache-Control` keeps its own looser grammar and is parsed by pingora-cache.

use http::header::HeaderName;
use pingora::cache::cache_control::{CacheControl, DirectiveKey};
use pingora::http::{RequestHeader, ResponseHeader};
use sfv::{BareItem, ListEntry, Parser};

/// The directives that matter to storing and freshness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    /// Unqualified `no-cache`.
    pub no_cache: bool,
    /// Unqualified `private`.
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    /// `must-understand` (RFC 9111 §5.2.2.3): store only a status the cache understands, and
    /// then `no-store` does not apply.
    pub must_understand: bool,
    pub max_age: Option<u32>,
    pub s_maxage: Option<u32>,
    pub stale_while_revalidate: Option<u32>,
    pub stale_if_error: Option<u32>,
    /// `no-cache="a, b"`: fields not to send from storage without revalidation (lowercase).
    pub no_cache_fields: Vec<String>,
    /// `private="a, b"`: fields a shared cache must not store (lowercase).
    pub private_fields: Vec<String>,
    /// Taken from a targeted field: `Expires` does not apply.
    pub targeted: bool,
}

impl Directives {
    /// The governing directives of `resp`, or `None` when no field carries any.
    pub fn of(resp: &ResponseHeader, targeted: Option<&HeaderName>) -> Option<Directives> {
        let cdn = HeaderName::from_static("cdn-cache-control");
        targeted
            .into_iter()
            .chain(std::iter::once(&cdn))
            .find_map(|name| from_targeted(resp, name))
            .or_else(|| from_cache_control(resp))
    }
}

/// All lines of `name`, joined as one list (RFC 9110 §5.3).
fn joined(resp: &ResponseHeader, name: &HeaderName) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for v in resp.headers.get_all(name) {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.as_bytes());
    }
    (!out.is_empty()).then_some(out)
}

fn seconds(item: &BareItem) -> Option<u32> {
    // Negative or non-integer: an invalid directive, ignored.
    item.as_int()
        .filter(|n| *n >= 0)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

fn field_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
        .collect()
}

/// A targeted field as an sf-dictionary; `None` when absent, invalid or empty.
pub fn from_targeted(resp: &ResponseHeader, name: &HeaderName) -> Option<Directives> {
    let raw = joined(resp, name)?;
    let dict = Parser::parse_dictionary(&raw).ok()?;
    if dict.is_empty() {
        return None;
    }
    let mut d = Directives {
        targeted: true,
        ..Directives::default()
    };
    for (key, entry) in &dict {
        let ListEntry::Item(item) = entry else {
            continue;
        };
        let v = &item.bare_item;
        let on = matches!(v, BareItem::Boolean(true));
        match key.as_str() {
            "no-store" => d.no_store |= on,
            "public" => d.public |= on,
            "must-revalidate" => d.must_revalidate |= on,
            "proxy-revalidate" => d.proxy_revalidate |= on,
            "must-understand" => d.must_understand |= on,
            "no-cache" => match v {
                BareItem::String(s) => d.no_cache_fields = field_list(s),
                _ => d.no_cache |= on,
            },
            "private" => match v {
                BareItem::String(s) => d.private_fields = field_list(s),
                _ => d.private |= on,
            },
            "max-age" => d.max_age = seconds(v),
            "s-maxage" => d.s_maxage = seconds(v),
            "stale-while-revalidate" => d.stale_while_revalidate = seconds(v),
            "stale-if-error" => d.stale_if_error = seconds(v),
            _ => {}
        }
    }
    Some(d)
}

/// `Cache-Control`, as pingora-cache parses it, with RFC 9111 §4.2.1's rule for a duplicated
/// `max-age` with different values: the response is treated as stale.
fn from_cache_control(resp: &ResponseHeader) -> Option<Directives> {
    let cc = CacheControl::from_resp_headers(resp)?;
    let names = |it: Option<pingora::cache::cache_control::ListValueIter<'_>>| -> Vec<String> {
        it.map(|i| {
            i.filter_map(|f| std::str::from_utf8(f).ok())
                .map(|f| f.trim().to_ascii_lowercase())
                .filter(|f| !f.is_empty())
                .collect()
        })
        .unwrap_or_default()
    };
    let mut max_age = cc.max_age().ok().flatten();
    if conflicting_max_age(resp) {
        max_age = Some(0);
    }
    Some(Directives {
        no_store: cc.no_store(),
        no_cache: cc.no_cache(),
        private: cc.private(),
        public: cc.public(),
        must_revalidate: cc.must_revalidate(),
        proxy_revalidate: cc.proxy_revalidate(),
        must_understand: cc.has_key("must-understand"),
        max_age,
        s_maxage: cc.s_maxage().ok().flatten(),
        stale_while_revalidate: cc.stale_while_revalidate().ok().flatten(),
        stale_if_error: cc.stale_if_error().ok().flatten(),
        no_cache_fields: names(cc.no_cache_field_names()),
        private_fields: names(cc.private_field_names()),
        targeted: false,
    })
}

/// More than one `max-age` in `Cache-Control`, with different values.
fn conflicting_max_age(resp: &ResponseHeader) -> bool {
    let mut seen: Option<String> = None;
    for line in resp.headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(line) = line.to_str() else { continue };
        for part in line.split(',') {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            if !k.trim().eq_ignore_ascii_case("max-age") {
                continue;
            }
            let v = v.trim().trim_matches('"').to_string();
            match &seen {
                Some(first) if *first != v => return true,
                Some(_) => {}
                None => seen = Some(v),
            }
        }
    }
    false
}

/// The request directives of RFC 9111 §5.2.1 a client may send, honoured only with
/// `cache.honor_client_no_cache = true` (otherwise a client could defeat the cache in front of
/// a rate-limited origin). Parsed with pingora-cache's `Cache-Control` parser; `Pragma:
/// no-cache` counts as `no-cache` when the request has no `Cache-Control` (RFC 9111 §5.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-cache` (or `Pragma: no-cache`): validate with the origin before using a stored
    /// response.
    pub no_cache: bool,
    /// `no-store`: do not store the response to this request (a stored one may still be used).
    pub no_store: bool,
    /// `max-age=N`: the stored response's age may not exceed N.
    pub max_age: Option<u32>,
    /// `min-fresh=N`: the stored response must stay fresh for at least N more seconds.
    pub min_fresh: Option<u32>,
    /// `max-stale[=N]`: a stale response is acceptable, stale by at most N seconds
    /// (`Some(None)`: by any amount).
    pub max_stale: Option<Option<u32>>,
    /// `only-if-cached`: answer from storage or with 504, never from the origin.
    pub only_if_cached: bool,
}

impl RequestDirectives {
    pub fn of(req: &RequestHeader) -> Self {
        let Some(cc) = CacheControl::from_req_headers(req) else {
            let pragma = req
                .headers
                .get_all(http::header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("no-cache"));
            return Self {
                no_cache: pragma,
                ..Self::default()
            };
        };
        let value = |name: &str| cc.directives.get(&DirectiveKey::from_lowercase(name));
        // An invalid value (negative, not a number) makes the directive invalid: ignored.
        let seconds = |name: &str| {
            value(name)
                .and_then(|v| v.as_ref())
                .and_then(|v| v.parse_as_delta_seconds().ok())
        };
        Self {
            // `no-cache` has no arguments in a request; any form counts.
            no_cache: value("no-cache").is_some(),
            no_store: cc.no_store(),
            max_age: seconds("max-age"),
            min_fresh: seconds("min-fresh"),
            max_stale: match value("max-stale") {
                None => None,
                Some(None) => Some(None),
                Some(Some(v)) => v.parse_as_delta_seconds().ok().map(Some),
            },
            only_if_cached: cc.only_if_cached(),
        }
    }

    /// Whether a stored response of this age (seconds) with this much freshness left (seconds,
    /// negative once stale) may be used without validation: `max-age`, `min-fresh` and
    /// `no-cache` checked here; `max-stale` is [`Self::accepts_stale`].
    pub fn accepts(&self, age: u64, fresh_left: i64) -> bool {
        !self.no_cache
            && self.max_age.is_none_or(|m| age <= u64::from(m))
            && self.min_fresh.is_none_or(|m| fresh_left >= i64::from(m))
    }

    /// Whether a response stale by `staleness` seconds is acceptable to this client
    /// (`max-stale`), before the response's own `must-revalidate` & co are considered.
    pub fn accepts_stale(&self, staleness: u64) -> bool {
        match self.max_stale {
            None => false,
            Some(None) => true,
            Some(Some(n)) => staleness <= u64::from(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&'static str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    fn target() -> HeaderName {
        HeaderName::from_static("raster-edge-cache-control")
    }

    #[test]
    fn targeted_fields_take_precedence_in_order() {
        let r = resp(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=30"),
            ("raster-edge-cache-control", "max-age=60, stale-if-error=5"),
        ]);
        let d = Directives::of(&r, Some(&target())).unwrap();
        assert_eq!(
            (d.max_age, d.stale_if_error, d.no_store),
            (Some(60), Some(5), false)
        );
        let d = Directives::of(&r, None).unwrap();
        assert_eq!((d.max_age, d.no_store, d.targeted), (Some(30), false, true));
    }

    #[test]
    fn an_invalid_targeted_field_is_ignored() {
        // `max-age=60;` is not a structured-field dictionary.
        let r = resp(&[
            ("cache-control", "max-age=5"),
            ("cdn-cache-control", "max-age=\"60"),
        ]);
        let d = Directives::of(&r, None).unwrap();
        assert_eq!((d.max_age, d.targeted), (Some(5), false));
        let r = resp(&[("cdn-cache-control", "no-store, private=\"x-a, X-B\"")]);
        let d = Directives::of(&r, None).unwrap();
        assert!(d.no_store);
        assert_eq!(d.private_fields, vec!["x-a", "x-b"]);
    }

    #[test]
    fn qualified_no_cache_and_private_name_fields() {
        let r = resp(&[(
            "cache-control",
            "max-age=60, no-cache=\"x-a, X-B\", private=\"x-c\"",
        )]);
        let d = Directives::of(&r, None).unwrap();
        assert!(!d.no_cache && !d.private);
        assert_eq!(d.no_cache_fields, vec!["x-a", "x-b"]);
        assert_eq!(d.private_fields, vec!["x-c"]);
    }

    #[test]
    fn duplicate_max_age_with_different_values_is_stale() {
        let r = resp(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "max-age=10"),
        ]);
        assert_eq!(Directives::of(&r, None).unwrap().max_age, Some(0));
        let r = resp(&[("cache-control", "max-age=60, max-age=60")]);
        assert_eq!(Directives::of(&r, None).unwrap().max_age, Some(60));
    }

    fn req(headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn request_directives() {
        let d = RequestDirectives::of(&req(&[(
            "cache-control",
            "max-age=10, min-fresh=5, max-stale=30, only-if-cached, no-store",
        )]));
        assert_eq!(d.max_age, Some(10));
        assert_eq!(d.min_fresh, Some(5));
        assert_eq!(d.max_stale, Some(Some(30)));
        assert!(d.only_if_cached && d.no_store && !d.no_cache);
        assert!(d.accepts(10, 5));
        assert!(!d.accepts(11, 5));
        assert!(!d.accepts(1, 4));
        assert!(d.accepts_stale(30) && !d.accepts_stale(31));
        let any = RequestDirectives::of(&req(&[("cache-control", "max-stale")]));
        assert_eq!(any.max_stale, Some(None));
        assert!(any.accepts_stale(u64::MAX));
        let pragma = RequestDirectives::of(&req(&[("pragma", "no-cache")]));
        assert!(pragma.no_cache && !pragma.accepts(0, 100));
        // Pragma is ignored when Cache-Control is present (RFC 9111 §5.4).
        let both = RequestDirectives::of(&req(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-age=5"),
        ]));
        assert!(!both.no_cache);
        let invalid = RequestDirectives::of(&req(&[("cache-control", "max-age=-1, min-fresh=x")]));
        assert_eq!((invalid.max_age, invalid.min_fresh), (None, None));
        assert_eq!(
            RequestDirectives::of(&req(&[])),
            RequestDirectives::default()
        );
    }
}
