//! One stored response as the store keeps it: header and freshness in memory, body as one
//! `Bytes`. Entries own compact, exact-size memory (a header taken from pingora as is would keep
//! the origin connection's whole read buffer alive), and their weight is what they really cost
//! the heap, moka's bookkeeping included, so `cache.max_memory` bounds the process's memory and
//! not just payload bytes.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use pingora::{ErrorType, OrErr, Result};

/// Per-allocation cost on top of the requested size: the allocator's chunk header plus the
/// rounding of sizes to 16 bytes (glibc and jemalloc both land near this on average).
const ALLOC_OVERHEAD: usize = 16;
/// moka's own bookkeeping per entry, measured with a counting allocator (the
/// `weight_matches_measured_heap_cost` test): the `Arc`'d key, `ValueEntry`, `EntryInfo`,
/// deque and timer-wheel nodes, the hash-table bucket, and its write-log record.
const MOKA_PER_ENTRY: usize = 400;
/// How long past its stale windows an entry with a validator is kept for a conditional
/// revalidation (at least this, or its own freshness lifetime when longer).
const MIN_REVALIDATION_GRACE: Duration = Duration::from_secs(60);

/// A stored response: header and freshness in memory, body as one `Bytes`.
///
/// Both header and body own exact-size allocations of their own: a header taken as is from
/// pingora shares (through `Bytes` slices in its values and case map) the whole 4 KiB read
/// buffer the origin's response was parsed from, which is what made a 1.3 KB response cost
/// ~7.4 KB of RSS.
#[derive(Debug)]
pub struct Entry {
    /// Compact: no case map, every value a slice of one buffer (see [`compact_header`]).
    pub header: ResponseHeader,
    pub fresh_until: SystemTime,
    pub created: SystemTime,
    /// Reference point of `Age`: the last store or revalidation.
    pub epoch: SystemTime,
    pub swr_secs: u32,
    pub sie_secs: u32,
    pub variance: Option<HashBinary>,
    pub body: Bytes,
    /// Until when moka keeps it.
    keep_until: SystemTime,
    /// Estimated heap bytes this entry holds, moka's share included (see [`entry_cost`]).
    weight: u32,
}

/// A copy of `h` that holds no memory of anyone else's: the header values are copied into one
/// exact-size buffer and sliced from it, the header map is sized for exactly these headers,
/// and there is no case-preserving name map (names go out in pingora's canonical case; HTTP
/// header names are case-insensitive). A hit clones it cheaply: one map allocation, a
/// reference-count bump per value.
pub fn compact_header(h: &ResponseHeader) -> Result<ResponseHeader> {
    let total: usize = h.headers.values().map(|v| v.len()).sum();
    let mut buf = Vec::with_capacity(total);
    for v in h.headers.values() {
        buf.extend_from_slice(v.as_bytes());
    }
    let buf = Bytes::from(buf);
    let mut out = ResponseHeader::build_no_case(h.status, Some(h.headers.len()))?;
    out.set_version(h.version);
    out.set_reason_phrase(h.get_reason_phrase())?;
    let mut at = 0;
    for (name, v) in h.headers.iter() {
        let end = at + v.len();
        let mut value = http::HeaderValue::from_maybe_shared(buf.slice(at..end))
            .or_err(ErrorType::InvalidHTTPHeader, "stored header value")?;
        value.set_sensitive(v.is_sensitive());
        out.append_header(name.clone(), value)?;
        at = end;
    }
    Ok(out)
}

/// Heap bytes held by a compact header (see [`compact_header`]).
fn header_cost(h: &ResponseHeader) -> usize {
    // `HeaderMap`: an index table of 4-byte slots (a power of two, 4/3 of the usable capacity)
    // and a vector of buckets (hash, links, name, value).
    let cap = h.headers.capacity();
    let indices = (cap + cap / 3).next_power_of_two() * 4;
    let bucket = 2 * std::mem::size_of::<usize>()
        + std::mem::size_of::<usize>()
        + std::mem::size_of::<http::HeaderName>()
        + std::mem::size_of::<http::HeaderValue>();
    let values: usize = h.headers.values().map(|v| v.len()).sum();
    // Names outside `http`'s standard set are allocations of their own; `http` does not say
    // which are which, so every name is counted as one (an overestimate of a few bytes each).
    let names: usize = h
        .headers
        .keys()
        .map(|n| n.as_str().len() + ALLOC_OVERHEAD)
        .sum();
    let reason = h
        .get_reason_phrase()
        .filter(|r| Some(*r) != h.status.canonical_reason())
        .map_or(0, |r| r.len() + ALLOC_OVERHEAD);
    // Values buffer plus the `Bytes` shared header its slices point to.
    let values_buf = values + ALLOC_OVERHEAD + 32 + ALLOC_OVERHEAD;
    indices + ALLOC_OVERHEAD + cap * bucket + ALLOC_OVERHEAD + names + values_buf + reason
}

/// What an entry really costs the process: its `Arc` allocation, header, body (one exact
/// allocation) and moka's per-entry bookkeeping. This is the moka weight, so `max_memory`
/// bounds real memory and `cache_bytes` reports it.
fn entry_cost(header: &ResponseHeader, body: &Bytes) -> u32 {
    let body = if body.is_empty() {
        0
    } else {
        body.len() + ALLOC_OVERHEAD + 32
    };
    let arc = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Entry>() + ALLOC_OVERHEAD;
    (arc + MOKA_PER_ENTRY + header_cost(header) + body).min(u32::MAX as usize) as u32
}

/// The freshness fields of a `CacheMeta` (which is not `Clone`), kept by a miss handler until
/// its body is complete.
pub(super) struct Freshness {
    fresh_until: SystemTime,
    created: SystemTime,
    epoch: SystemTime,
    swr_secs: u32,
    sie_secs: u32,
    variance: Option<HashBinary>,
}

impl Freshness {
    /// The meta pingora-cache works with: these fields and `header`.
    pub(super) fn to_meta(&self, header: ResponseHeader) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.swr_secs,
            self.sie_secs,
            header,
        );
        if self.epoch != self.created {
            meta.set_epoch_override(self.epoch);
        }
        if let Some(v) = self.variance {
            meta.set_variance(v);
        }
        meta
    }

    pub(super) fn of(meta: &CacheMeta) -> Self {
        Freshness {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            epoch: meta.epoch(),
            swr_secs: meta.stale_while_revalidate_sec(),
            sie_secs: meta.stale_if_error_sec(),
            variance: meta.variance(),
        }
    }
}

impl Entry {
    pub(super) fn new(meta: &CacheMeta, body: Bytes) -> Result<Self> {
        Self::with_header(&Freshness::of(meta), meta.response_header(), body)
    }

    /// An entry with `f`'s freshness, storing a compact copy of `header`.
    pub(super) fn with_header(f: &Freshness, header: &ResponseHeader, body: Bytes) -> Result<Self> {
        let header = compact_header(header)?;
        let Freshness {
            fresh_until,
            created,
            epoch,
            swr_secs,
            sie_secs,
            variance,
        } = *f;
        let stale = Duration::from_secs(u64::from(swr_secs.max(sie_secs)));
        let has_validator = header.headers.contains_key(http::header::ETAG)
            || header.headers.contains_key(http::header::LAST_MODIFIED);
        let grace = if has_validator {
            fresh_until
                .duration_since(epoch)
                .unwrap_or_default()
                .max(MIN_REVALIDATION_GRACE)
        } else {
            Duration::ZERO
        };
        let keep_until = fresh_until
            .checked_add(stale.max(grace))
            .unwrap_or(fresh_until);
        let weight = entry_cost(&header, &body);
        Ok(Entry {
            header,
            fresh_until,
            created,
            epoch,
            swr_secs,
            sie_secs,
            variance,
            body,
            keep_until,
            weight,
        })
    }

    /// The `CacheMeta` pingora-cache works with, rebuilt without any decoding.
    pub fn to_meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.swr_secs,
            self.sie_secs,
            self.header.clone(),
        );
        if self.epoch != self.created {
            // `CacheMeta::new` sets updated = created; the override keeps Age counting from
            // the last revalidation.
            meta.set_epoch_override(self.epoch);
        }
        if let Some(v) = self.variance {
            meta.set_variance(v);
        }
        meta
    }

    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.fresh_until >= now
    }

    /// Whole seconds since the last store or revalidation.
    pub fn age(&self, now: SystemTime) -> u64 {
        now.duration_since(self.epoch).unwrap_or_default().as_secs()
    }

    /// Whole seconds of freshness left (negative once stale), for `Cache-Status: ttl=`.
    pub fn ttl(&self, now: SystemTime) -> i64 {
        match self.fresh_until.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Until when the store keeps it.
    pub fn keep_until(&self) -> SystemTime {
        self.keep_until
    }

    /// The same entry, `by` older: freshness, stale windows, `Age` and the store's expiry all
    /// move together (see `MokaStorage::age_entries`).
    pub fn aged(&self, by: Duration) -> Entry {
        let back = |t: SystemTime| t.checked_sub(by).unwrap_or(SystemTime::UNIX_EPOCH);
        Entry {
            header: self.header.clone(),
            fresh_until: back(self.fresh_until),
            created: back(self.created),
            epoch: back(self.epoch),
            swr_secs: self.swr_secs,
            sie_secs: self.sie_secs,
            variance: self.variance,
            body: self.body.clone(),
            keep_until: back(self.keep_until),
            weight: self.weight,
        }
    }
}
