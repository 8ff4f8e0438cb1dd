//! `GET /admin/cache` and `GET /admin/stats`: what the cache holds for one key, and the live
//! numbers (store fill, evictions, per-route windows from [`crate::stats`], Redis link state).
//!
//! The entry is found exactly as a request would find it: a synthetic `GET` of the URL goes
//! through [`Cache::prepare`], so authority, path and query, effective `Api-Version`, partition
//! and invalidation generations make the same primary key the request path makes. Only the
//! named key id's partition is looked in, and the answer carries numbers and header *names*,
//! never a body or a header value.

use std::collections::BTreeMap;
use std::time::SystemTime;

use pingora::cache::key::hash_key;
use pingora::http::RequestHeader;
use prometheus::core::Collector;
use prometheus::IntCounterVec;
use serde_json::{json, Value};

use crate::cache::Cache;
use crate::config::{Backend, Settings, Share};
use crate::edge::{path, Admitted, KeyId, Principal};
use crate::metrics::METRICS;
use crate::stats::STATS;

/// What `/admin/cache` was asked.
#[derive(Debug, PartialEq, Eq)]
pub struct EntryQuery {
    /// Canonical path and the query as given.
    pub url: String,
    pub principal: Principal,
    /// `None`: the pinned `edge.api_version` (or none), as for a request without the header.
    pub api_version: Option<String>,
}

/// A refusal: HTTP status, error code, message.
pub type Refusal = (u16, &'static str, String);

fn bad(msg: impl Into<String>) -> Refusal {
    (400, "BAD_USER_INPUT", msg.into())
}

impl EntryQuery {
    /// Parses `url=PATH_AND_QUERY&key_id=ID[&api_version=V]` (form-encoded).
    pub fn parse(query: Option<&str>) -> Result<Self, Refusal> {
        let (mut url, mut key_id, mut api_version) = (None, None, None);
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match &*k {
                "url" => &mut url,
                "key_id" => &mut key_id,
                "api_version" => &mut api_version,
                "token" => continue,
                other => return Err(bad(format!("unknown parameter {other:?}"))),
            };
            if slot.replace(v.into_owned()).is_some() {
                return Err(bad(format!("parameter {k:?} given more than once")));
            }
        }
        let url = url.ok_or_else(|| bad("give url=PATH_AND_QUERY (URL-encoded)"))?;
        let key_id = key_id.ok_or_else(|| {
            bad("give key_id=ID (32 hex digits, from `raster-edge key-id`) or key_id=anonymous")
        })?;
        if !url.starts_with('/') {
            return Err(bad("url is a path and query starting with '/'"));
        }
        let (p, q) = url
            .split_once('?')
            .map_or((&*url, None), |(p, q)| (p, Some(q)));
        let p = path::normalize(p).map_err(|why| bad(format!("url: {why}")))?;
        let url = match q {
            Some(q) => format!("{p}?{q}"),
            None => p.into_owned(),
        };
        if url.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(bad("url is not a valid path and query"));
        }
        let principal = if key_id == "anonymous" {
            Principal::Anonymous
        } else {
            Principal::Key(parse_key_id(&key_id)?)
        };
        if let Some(v) = &api_version {
            if http::HeaderValue::from_str(v).is_err() || v.is_empty() {
                return Err(bad("api_version is not a valid header value"));
            }
        }
        Ok(EntryQuery {
            url,
            principal,
            api_version,
        })
    }
}

fn parse_key_id(s: &str) -> Result<KeyId, Refusal> {
    let mut id = [0u8; 16];
    match hex::decode_to_slice(s, &mut id) {
        Ok(()) if s.bytes().all(|b| !b.is_ascii_uppercase()) => Ok(KeyId(id)),
        _ => Err(bad(
            "key_id is 32 lowercase hex digits (from `raster-edge key-id`) or \"anonymous\"",
        )),
    }
}

/// The JSON for `/admin/cache`, or why there is none (404 when nothing is stored).
pub fn cache_entry(
    cache: &Cache,
    q: &EntryQuery,
    pinned_version: Option<&str>,
    live: &crate::cache::CacheLive,
) -> Result<Value, Refusal> {
    let mut req = RequestHeader::build("GET", q.url.as_bytes(), None)
        .map_err(|e| bad(format!("url: {e}")))?;
    if let Some(v) = &q.api_version {
        req.insert_header("api-version", v.as_str())
            .map_err(|e| bad(format!("api_version: {e}")))?;
    }
    let admitted = Admitted {
        principal: q.principal,
        inject_key: false,
        inject_version: q.api_version.is_none(),
    };
    let effective_version = q.api_version.as_deref().or(pinned_version);
    let ctx = cache.prepare(&req, admitted, None, pinned_version, live);
    let Some(prepared) = ctx.prepared() else {
        return Err((
            404,
            "ENTRY_NOT_FOUND",
            "the cache is disabled: nothing is stored".into(),
        ));
    };
    let partition = match prepared.partition {
        crate::cache::key::Partition::Key(_) => "key",
        crate::cache::key::Partition::Anonymous => "anonymous",
        crate::cache::key::Partition::Shared => "shared",
    };
    let Some(entry) = cache.storage().get(&hash_key(&prepared.key)) else {
        return Err((
            404,
            "ENTRY_NOT_FOUND",
            format!(
                "nothing stored for this url, key id and Api-Version ({}) in the current generation",
                effective_version.unwrap_or("none")
            ),
        ));
    };
    let path = req.uri.path();
    let pq = req.uri.path_and_query().map_or(path, |p| p.as_str());
    let mut generations = Vec::new();
    cache
        .invalidation()
        .generations(&live.rules, path, pq, &mut generations);

    let now = SystemTime::now();
    let ttl = entry.ttl(now);
    let stale_for = (-ttl).max(0) as u64;
    let (swr, sie) = (u64::from(entry.swr_secs), u64::from(entry.sie_secs));
    let status = if ttl >= 0 {
        "fresh"
    } else if stale_for <= swr {
        "stale-while-revalidate"
    } else if stale_for <= sie {
        "stale-if-error"
    } else {
        // Kept past its stale windows only for a conditional revalidation.
        "stale"
    };
    let left = |window: u64| {
        if ttl >= 0 {
            window
        } else {
            window.saturating_sub(stale_for)
        }
    };
    let h = &entry.header.headers;
    let vary: Vec<String> = h
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    let keep = entry
        .keep_until()
        .duration_since(now)
        .unwrap_or_default()
        .as_secs();
    Ok(json!({
        "url": q.url,
        "key_id": match q.principal {
            Principal::Key(k) => k.to_string(),
            Principal::Anonymous => "anonymous".to_string(),
        },
        "partition": partition,
        "api_version": effective_version,
        "entry": {
            "status": status,
            "http_status": entry.header.status.as_u16(),
            "age_secs": entry.age(now),
            "fresh_for_secs": ttl,
            "stale_while_revalidate_secs": swr,
            "stale_while_revalidate_left_secs": left(swr),
            "stale_if_error_secs": sie,
            "stale_if_error_left_secs": left(sie),
            "kept_for_secs": keep,
            "body_bytes": entry.body.len(),
            "memory_bytes": entry.weight(),
            // A varying response's other variants live under keys that cannot be listed from
            // the primary one: the count is known only when nothing varies.
            "variants": if entry.variance.is_none() { json!(1) } else { Value::Null },
            "vary": vary,
            "validators": {
                "etag": h.contains_key(http::header::ETAG),
                "last_modified": h.contains_key(http::header::LAST_MODIFIED),
            },
            "generations": generations,
        }
    }))
}

/// Sum of an `IntCounterVec`'s existing series by the value of `label` (no series is created,
/// so `/metrics` does not grow zero-valued ones).
fn counter_by(vec: &IntCounterVec, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for family in vec.collect() {
        for m in family.get_metric() {
            let key = m
                .get_label()
                .iter()
                .find(|l| l.name() == label)
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            *out.entry(key).or_insert(0) += m.get_counter().value() as u64;
        }
    }
    out
}

/// The JSON for `/admin/stats`.
pub fn stats(cache: &Cache, settings: Option<&Settings>) -> Value {
    let storage = cache.storage();
    let (entries, bytes, bound) = (storage.entries(), storage.bytes(), storage.max_memory());
    let evictions = counter_by(&METRICS.cache_evictions, "cause");
    let redis_errors: u64 = counter_by(&METRICS.redis_errors, "kind").values().sum();
    let fallback = METRICS.ratelimit_fallback_active.get() != 0;
    let redis_ratelimit = settings
        .is_some_and(|s| s.rate_limit.enabled && matches!(s.rate_limit.backend, Backend::Redis));
    let redis_fleet = settings.is_some_and(|s| s.redis.invalidation && s.cache.enabled);
    let redis_state = match (redis_ratelimit || redis_fleet, fallback) {
        (false, _) => "not used",
        (true, true) => "down (rate-limit fallback active)",
        (true, false) => "up",
    };
    let mut v = STATS.snapshot();
    v["cache"] = json!({
        "enabled": cache.enabled(),
        "share": settings.map(|s| match s.cache.share { Share::PerKey => "per-key", Share::Shared => "shared" }),
        "entries": entries,
        "bytes": bytes,
        "bound_bytes": bound,
        "fill_ratio": if bound == 0 { 0.0 } else { (bytes as f64 / bound as f64 * 1000.0).round() / 1000.0 },
        "evictions": evictions,
    });
    v["redis"] = json!({
        "state": redis_state,
        "rate_limit_backend": redis_ratelimit,
        "fleet_invalidation": redis_fleet,
        "ratelimit_fallback_active": fallback,
        "errors_total": redis_errors,
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let id = "00112233445566778899aabbccddeeff";
        let q = EntryQuery::parse(Some(&format!(
            "url=%2Fa%2F.%2Fb%3Fx%3D1&key_id={id}&api_version=2026-05-20"
        )))
        .unwrap();
        assert_eq!(q.url, "/a/b?x=1");
        assert_eq!(q.api_version.as_deref(), Some("2026-05-20"));
        assert!(matches!(q.principal, Principal::Key(k) if k.to_string() == id));
        let anon = EntryQuery::parse(Some("url=/me&key_id=anonymous")).unwrap();
        assert_eq!(anon.principal, Principal::Anonymous);
        for bad in [
            None,
            Some("url=/me"),
            Some("key_id=anonymous"),
            Some("url=me&key_id=anonymous"),
            Some("url=/me&key_id=0011"),
            Some("url=/me&key_id=00112233445566778899AABBCCDDEEFF"),
            Some("url=/me&key_id=anonymous&key_id=anonymous"),
            Some("url=/../x&key_id=anonymous"),
            Some("url=/me&key_id=anonymous&what=1"),
        ] {
            assert_eq!(EntryQuery::parse(bad).unwrap_err().0, 400, "{bad:?}");
        }
    }
}
