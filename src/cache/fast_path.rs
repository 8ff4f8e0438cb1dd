//! Fresh hits answered in `request_filter`, without pingora-cache's state machine (which costs
//! about a third more per hit; docs/ARCHITECTURE.md). Same store, same key, same variance rule
//! (primary slot first, then the variant's secondary slot, which must not predate the primary),
//! same headers: the stored header, `Age`, `X-Cache`, `Cache-Status`, a 304 for a matching
//! `If-None-Match` / `If-Modified-Since` ([`super::conditional`], as the state machine's
//! `cache_not_modified_filter`), no body for HEAD.
//! Everything else (miss, stale, revalidation, Range, client no-cache / max-age / min-fresh /
//! max-stale, coalescing) falls through
//! to the state machine. The gateway adds its own headers and writes the response.

use std::sync::Arc;
use std::time::SystemTime;

use pingora::cache::key::{hash_key, CacheHashKey};
use pingora::cache::CacheKey;
use pingora::http::RequestHeader;
use pingora::protocols::http::conditional_filter::to_304;

use super::entry::Entry;
use super::{key, Cache, FreshHit, Outcome, Prepared};
use crate::compression::Accepted;

/// The stored entry this request would be served, if it is fresh.
fn fresh_entry(cache: &Cache, req: &RequestHeader, p: &Prepared) -> Option<Arc<Entry>> {
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

pub fn fresh_hit(
    cache: &Cache,
    req: &RequestHeader,
    p: &Prepared,
    route_label: &'static str,
) -> pingora::Result<Option<FreshHit>> {
    // A Range request goes to the state machine, whose range filter cuts the part
    // (`super::range`); a HEAD with Range is a HEAD.
    if p.force_revalidate || super::range::is_range_request(req) {
        return Ok(None);
    }
    let Some(entry) = fresh_entry(cache, req, p) else {
        return Ok(None);
    };
    let now = SystemTime::now();
    // The client's max-age / min-fresh (honour_client_no_cache): the state machine validates.
    if !p.client.accepts(entry.age(now), entry.ttl(now)) {
        return Ok(None);
    }
    let mut header = entry.header.clone();
    header.set_version(http::Version::HTTP_11);
    let not_modified = super::conditional::not_modified(req, &header);
    if not_modified {
        to_304(&mut header);
    }
    let header_only = not_modified || req.method == http::Method::HEAD || entry.body.is_empty();
    // The stored coding, as this client may have it (decoded for one that does not accept it).
    let Some(body) = cache.compression.serve_stored(
        &mut header,
        (!header_only).then(|| entry.body.clone()),
        &Accepted::parse(req),
    )?
    else {
        return Ok(None);
    };
    let outcome = Outcome::Hit {
        ttl: entry.ttl(now),
        collapsed: false,
    };
    let status = cache.finish_headers(&mut header, &outcome, Some(entry.age(now)), route_label)?;
    Ok(Some(FreshHit {
        header,
        body,
        status,
    }))
}
