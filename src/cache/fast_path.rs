//! Fresh hits answered in `request_filter`, without pingora-cache's state machine (which costs
//! about a third more per hit; docs/ARCHITECTURE.md). Same store, same key, same variance rule
//! (primary slot first, then the variant's secondary slot, which must not predate the primary),
//! same headers: the stored header, `Age`, `X-Cache`, `Cache-Status`, a 304 for a matching
//! `If-None-Match` / `If-Modified-Since` (pingora's own `not_modified_filter`), no body for HEAD.
//! Everything else (miss, stale, revalidation, Range, client no-cache, coalescing) falls through
//! to the state machine. The gateway adds its own headers and writes the response.

use std::sync::Arc;
use std::time::SystemTime;

use pingora::cache::key::{hash_key, CacheHashKey};
use pingora::cache::CacheKey;
use pingora::http::RequestHeader;
use pingora::protocols::http::conditional_filter::{not_modified_filter, to_304};

use super::entry::Entry;
use super::{key, Cache, FreshHit, Outcome, Prepared};

/// The stored entry this request would be served, if it is fresh. Records nothing (no metric,
/// no recency beyond the store's own read), so a caller may look before it commits.
pub fn fresh_entry(cache: &Cache, req: &RequestHeader, p: &Prepared) -> Option<Arc<Entry>> {
    if p.force_revalidate {
        return None;
    }
    let primary_bin = hash_key(&p.key);
    let entry = cache.storage.get(&primary_bin)?;
    let entry = match entry.variance {
        None => entry,
        Some(stored) => {
            let wanted = key::variance(&entry.header, req, p.partition)?;
            if wanted == stored {
                entry
            } else {
                let mut k = CacheKey::new(Vec::new(), "");
                k.set_primary_bin_override(primary_bin);
                k.set_variance_key(wanted);
                let variant = cache.storage.get(&k.combined_bin())?;
                // pingora-cache ignores variants older than the primary slot (purging the
                // primary invalidates them all): do the same.
                if variant.variance != Some(wanted) || variant.created < entry.created {
                    return None;
                }
                variant
            }
        }
    };
    entry.is_fresh(SystemTime::now()).then_some(entry)
}

/// The one builder of a fresh-hit response from a stored entry: the stored header, `Age`,
/// `X-Cache`, `Cache-Status`, a 304 for a matching validator, no body for HEAD; records the
/// lookup. Both hit paths (the proxy's `request_filter` and [`crate::hitpath`]) call it.
pub fn hit(
    cache: &Cache,
    req: &RequestHeader,
    entry: &Entry,
    route_label: &'static str,
) -> pingora::Result<FreshHit> {
    let now = SystemTime::now();
    let mut header = entry.header.clone();
    header.set_version(http::Version::HTTP_11);
    let not_modified = not_modified_filter(req, &header);
    if not_modified {
        to_304(&mut header);
    }
    let header_only = not_modified || req.method == http::Method::HEAD || entry.body.is_empty();
    let outcome = Outcome::Hit {
        ttl: entry.ttl(now),
        collapsed: false,
    };
    let status = cache.finish_headers(&mut header, &outcome, Some(entry.age(now)), route_label)?;
    Ok(FreshHit {
        header,
        body: (!header_only).then(|| entry.body.clone()),
        status,
    })
}

pub fn fresh_hit(
    cache: &Cache,
    req: &RequestHeader,
    p: &Prepared,
    route_label: &'static str,
) -> pingora::Result<Option<FreshHit>> {
    match fresh_entry(cache, req, p) {
        Some(entry) => hit(cache, req, &entry, route_label).map(Some),
        None => Ok(None),
    }
}
