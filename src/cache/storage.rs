//! `pingora_cache::Storage` on moka: a concurrent, byte-bounded (weigher) TinyLFU store.
//!
//! One moka value per stored response, keyed by pingora's 16-byte combined key hash. The
//! value keeps the response header and the freshness fields as plain in-memory structs, not
//! serialized: a hit rebuilds a `CacheMeta` by cloning the header (no zstd, no msgpack, no
//! header parse, which measured ~10% of proxy CPU per hit). The body is one `Bytes` handed out without copying.
//!
//! Stored entries own compact, exact-size memory (a header taken from pingora as is would
//! keep the origin connection's whole read buffer alive), and the weigher counts what an entry
//! really costs the heap, moka's bookkeeping included: `max_memory` bounds the process's
//! memory, not just payload bytes.
//!
//! Miss handlers buffer the body and insert only in `finish`: a handler dropped without
//! `finish` (aborted upstream, client gone, object over the size limit) stores nothing, and
//! `finish` itself refuses a body shorter or longer than its `Content-Length`.
//!
//! Entries leave moka by weight (TinyLFU picks the victims), by expiry (per entry: the end of
//! its stale windows, plus a revalidation grace when it has a validator), by purge, or by
//! replacement. Every removal is counted in `cache_evictions{cause}` and the entry/byte gauges.

use std::any::Any;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::Expiry;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::predictor::CacheablePredictor;
use pingora::cache::storage::{
    HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget, PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, HitHandler, MissHandler, NoCacheReason, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, OrErr, Result};

use crate::metrics::{EvictionCause, NoStoreReason, METRICS};

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
struct Freshness {
    fresh_until: SystemTime,
    created: SystemTime,
    epoch: SystemTime,
    swr_secs: u32,
    sie_secs: u32,
    variance: Option<HashBinary>,
}

impl Freshness {
    fn of(meta: &CacheMeta) -> Self {
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
    fn new(meta: &CacheMeta, body: Bytes) -> Result<Self> {
        Self::with_header(&Freshness::of(meta), meta.response_header(), body)
    }

    /// An entry with `f`'s freshness, storing a compact copy of `header`.
    fn with_header(f: &Freshness, header: &ResponseHeader, body: Bytes) -> Result<Self> {
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
}

struct EntryExpiry;

impl EntryExpiry {
    fn left(value: &Entry) -> Option<Duration> {
        Some(
            value
                .keep_until
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        )
    }
}

impl Expiry<HashBinary, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &HashBinary,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Self::left(value)
    }

    fn expire_after_update(
        &self,
        _key: &HashBinary,
        value: &Arc<Entry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        // A replaced value (refill, revalidation) brings its own lifetime.
        Self::left(value)
    }
}

/// Live totals, kept by insert and the eviction listener (moka's own counts lag).
#[derive(Default)]
struct Totals {
    entries: AtomicI64,
    bytes: AtomicI64,
}

pub struct MokaStorage {
    store: moka::sync::Cache<HashBinary, Arc<Entry>>,
    totals: Arc<Totals>,
    max_memory: u64,
    max_object_size: usize,
}

impl MokaStorage {
    pub fn new(max_memory: u64, max_object_size: usize) -> Self {
        let totals = Arc::new(Totals::default());
        let listener_totals = totals.clone();
        let store = moka::sync::Cache::builder()
            .max_capacity(max_memory)
            .weigher(|_k: &HashBinary, v: &Arc<Entry>| v.weight)
            .expire_after(EntryExpiry)
            .eviction_listener(move |_k, v: Arc<Entry>, cause| {
                let e = listener_totals.entries.fetch_sub(1, Ordering::AcqRel) - 1;
                let b = listener_totals
                    .bytes
                    .fetch_sub(i64::from(v.weight), Ordering::AcqRel)
                    - i64::from(v.weight);
                METRICS.cache_entries.set(e);
                METRICS.cache_bytes.set(b);
                let cause = match cause {
                    RemovalCause::Size => EvictionCause::Size,
                    RemovalCause::Expired => EvictionCause::Expired,
                    RemovalCause::Explicit => EvictionCause::Explicit,
                    RemovalCause::Replaced => EvictionCause::Replaced,
                };
                METRICS
                    .cache_evictions
                    .with_label_values(&[cause.as_str()])
                    .inc();
            })
            .build();
        Self {
            store,
            totals,
            max_memory,
            max_object_size,
        }
    }

    /// The entry under a storage key (primary or combined hash), if any.
    pub fn get(&self, key: &HashBinary) -> Option<Arc<Entry>> {
        self.store.get(key)
    }

    pub fn insert(&self, key: HashBinary, entry: Entry) {
        let w = i64::from(entry.weight);
        self.store.insert(key, Arc::new(entry));
        let e = self.totals.entries.fetch_add(1, Ordering::AcqRel) + 1;
        let b = self.totals.bytes.fetch_add(w, Ordering::AcqRel) + w;
        METRICS.cache_entries.set(e);
        METRICS.cache_bytes.set(b);
        if b > self.max_memory as i64 {
            // moka evicts in its housekeeping; run it now so the bound holds at every moment
            // anyone can observe, not only eventually.
            self.store.run_pending_tasks();
        }
    }

    /// Stores `body` under `meta` directly (benches, warm-up tools); the request path stores
    /// through miss handlers.
    /// A header that cannot be stored (it cannot happen for one pingora built) stores nothing.
    pub fn insert_meta(&self, key: HashBinary, meta: &CacheMeta, body: Bytes) {
        match Entry::new(meta, exact(body)) {
            Ok(entry) => self.insert(key, entry),
            Err(e) => tracing::warn!(error = %e, "entry not stored"),
        }
    }

    pub fn remove(&self, key: &HashBinary) -> bool {
        self.store.remove(key).is_some()
    }

    /// Bytes currently held (headers + bodies + overhead), as counted by the weigher.
    pub fn bytes(&self) -> i64 {
        self.totals.bytes.load(Ordering::Acquire)
    }

    pub fn entries(&self) -> i64 {
        self.totals.entries.load(Ordering::Acquire)
    }

    pub fn run_pending_tasks(&self) {
        self.store.run_pending_tasks();
    }

    /// Ages every stored entry by `by`, exactly as if that much time had passed for it:
    /// freshness, stale windows, `Age` and the store's own expiry all move together. Tests step
    /// through TTLs this way instead of sleeping; nothing on the request path calls it.
    pub fn age_entries(&self, by: Duration) {
        let back = |t: SystemTime| t.checked_sub(by).unwrap_or(SystemTime::UNIX_EPOCH);
        for (key, entry) in self.store.iter() {
            let aged = Entry {
                header: entry.header.clone(),
                fresh_until: back(entry.fresh_until),
                created: back(entry.created),
                epoch: back(entry.epoch),
                swr_secs: entry.swr_secs,
                sie_secs: entry.sie_secs,
                variance: entry.variance,
                body: entry.body.clone(),
                keep_until: back(entry.keep_until),
                weight: entry.weight,
            };
            self.insert(*key, aged);
        }
    }

    fn miss_handler(&'static self, key: HashBinary, meta: &CacheMeta) -> MokaMiss {
        MokaMiss {
            storage: self,
            key,
            pending: Some((Freshness::of(meta), meta.response_header_copy())),
            // Sized up front from Content-Length (bounded by the object limit) so the body is
            // one exact allocation instead of a doubling `Vec` with slack.
            body: Vec::with_capacity(
                declared_length(meta.response_header())
                    .unwrap_or(0)
                    .min(self.max_object_size),
            ),
            complete: false,
        }
    }
}

/// A stored body, read once.
pub struct MokaHit {
    body: Bytes,
    done: bool,
}

impl MokaHit {
    pub fn new(body: Bytes) -> Self {
        Self { body, done: false }
    }
}

#[async_trait]
impl HandleHit for MokaHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.clone()))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        // Range requests bypass the cache (they go to the origin untouched), so hits never
        // seek; saying so also keeps pingora from advertising `Accept-Ranges` on our behalf.
        false
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Buffers one response body; stores it only on `finish` of a complete body.
pub struct MokaMiss {
    storage: &'static MokaStorage,
    key: HashBinary,
    /// Freshness and header of the response being stored, until `finish`.
    pending: Option<(Freshness, ResponseHeader)>,
    body: Vec<u8>,
    complete: bool,
}

fn declared_length(h: &ResponseHeader) -> Option<usize> {
    h.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
}

#[async_trait]
impl HandleMiss for MokaMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        if self.body.len() + data.len() > self.storage.max_object_size {
            // pingora-cache enforces the size limit too; refusing here keeps memory bounded
            // whatever path writes.
            return Error::e_explain(ErrorType::InternalError, "object over max_object_size");
        }
        self.body.extend_from_slice(&data);
        if eof {
            self.complete = true;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let Some((fresh, mut header)) = self.pending.take() else {
            return Error::e_explain(ErrorType::InternalError, "miss handler finished twice");
        };
        let len = self.body.len();
        if let Some(declared) = declared_length(&header) {
            if declared != len {
                // A truncated (or overlong) body must never become a cached answer.
                METRICS
                    .cache_store_rejections
                    .with_label_values(&[NoStoreReason::Truncated.as_str()])
                    .inc();
                return Error::e_explain(
                    ErrorType::InternalError,
                    format!("body of {len} bytes does not match content-length {declared}"),
                );
            }
        }
        // Stored with an exact Content-Length, so a hit (state machine or fast path) answers
        // with a length instead of re-chunking.
        header.remove_header(&http::header::TRANSFER_ENCODING);
        if !matches!(header.status.as_u16(), 204 | 304) {
            header.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
        }
        let body = std::mem::take(&mut self.body);
        let body = if body.capacity() == body.len() {
            Bytes::from(body)
        } else {
            // `Bytes::from(Vec)` keeps the spare capacity; a copy drops it.
            Bytes::copy_from_slice(&body)
        };
        let entry = Entry::with_header(&fresh, &header, body)?;
        let _ = self.complete;
        self.storage.insert(self.key, entry);
        Ok(MissFinishType::Created(len))
    }
}

/// `body` in an allocation of its own and of its exact size: a `Bytes` may be a slice of a
/// larger buffer (a read buffer, a whole file) that storing it would keep alive.
fn exact(body: Bytes) -> Bytes {
    if body.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&body)
    }
}

#[async_trait]
impl Storage for MokaStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        Ok(self.store.get(&key.combined_bin()).map(|e| {
            let hit: HitHandler = Box::new(MokaHit::new(e.body.clone()));
            (e.to_meta(), hit)
        }))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(self.miss_handler(key.combined_bin(), meta)))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key: &CompactCacheKey = target.key();
        Ok(if self.remove(&key.combined_bin()) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let k = key.combined_bin();
        // Revalidation (304 merged): new header and freshness, same body (pitfall 9).
        let Some(old) = self.store.get(&k) else {
            return Ok(false);
        };
        self.insert(k, Entry::new(meta, old.body.clone())?);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Keys whose last response was uncacheable, remembered for `cache.uncacheable_ttl`, so
/// requests for them skip the lookup and the cache lock instead of queueing behind a fetch
/// that will not be stored.
pub struct UncacheableKeys {
    keys: moka::sync::Cache<HashBinary, ()>,
}

impl UncacheableKeys {
    pub fn new(ttl: Duration) -> Self {
        Self {
            keys: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
        }
    }
}

impl CacheablePredictor for UncacheableKeys {
    fn cacheable_prediction(&self, key: &CacheKey) -> bool {
        !self.keys.contains_key(&key.primary_bin())
    }

    fn mark_cacheable(&self, key: &CacheKey) -> bool {
        self.keys.remove(&key.primary_bin()).is_some()
    }

    fn mark_uncacheable(&self, key: &CacheKey, reason: NoCacheReason) -> Option<bool> {
        use NoCacheReason::*;
        match reason {
            // Transient or about this one request: the next one may well be cacheable.
            InternalError
            | StorageError
            | UpstreamError
            | Deferred
            | DeclinedToUpstream
            | CacheLockGiveUp
            | CacheLockTimeout
            | CacheLockRetryLimit
            | NeverEnabled
            | PredictedResponseTooLarge => None,
            // Only our own policy's refusals say something about the next response; a custom
            // reason of pingora-proxy's (a 304 to a request that had nothing to revalidate)
            // does not.
            Custom(r)
                if !NoStoreReason::from_custom(r).is_some_and(NoStoreReason::predicts_next) =>
            {
                None
            }
            _ => {
                let k = key.primary_bin();
                let new = !self.keys.contains_key(&k);
                self.keys.insert(k, ());
                Some(new)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(body_len: usize, ttl: u64) -> CacheMeta {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-length", body_len.to_string())
            .unwrap();
        h.insert_header("etag", "\"e\"").unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(ttl), now, 0, 0, h)
    }

    fn leak(s: MokaStorage) -> &'static MokaStorage {
        Box::leak(Box::new(s))
    }

    #[tokio::test]
    async fn finished_miss_is_stored_and_hit_returns_body() {
        let s = leak(MokaStorage::new(1 << 20, 1 << 16));
        let key = CacheKey::new(b"k".to_vec(), "");
        let trace = pingora::cache::trace::Span::inactive().handle();
        let mut miss = s
            .get_miss_handler(&key, &meta(5, 10), &trace)
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"hello"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        let (m, mut hit) = s.lookup(&key, &trace).await.unwrap().unwrap();
        assert!(m.is_fresh(SystemTime::now()));
        assert_eq!(m.headers().get("etag").unwrap(), "\"e\"");
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "hello");
        assert!(hit.read_body().await.unwrap().is_none());
        assert_eq!(s.entries(), 1);
    }

    #[tokio::test]
    async fn dropped_or_truncated_miss_stores_nothing() {
        let s = leak(MokaStorage::new(1 << 20, 1 << 16));
        let key = CacheKey::new(b"k".to_vec(), "");
        let trace = pingora::cache::trace::Span::inactive().handle();
        let mut miss = s
            .get_miss_handler(&key, &meta(5, 10), &trace)
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"hel"), false)
            .await
            .unwrap();
        drop(miss);
        assert!(s.lookup(&key, &trace).await.unwrap().is_none());
        let mut miss = s
            .get_miss_handler(&key, &meta(1000, 10), &trace)
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"0123456789"), true)
            .await
            .unwrap();
        assert!(miss.finish().await.is_err());
        assert!(s.lookup(&key, &trace).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_body_is_refused() {
        let s = leak(MokaStorage::new(1 << 20, 8));
        let key = CacheKey::new(b"k".to_vec(), "");
        let trace = pingora::cache::trace::Span::inactive().handle();
        let mut miss = s
            .get_miss_handler(&key, &meta(20, 10), &trace)
            .await
            .unwrap();
        assert!(miss
            .write_body(Bytes::from(vec![0u8; 20]), true)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn bytes_stay_within_bound_under_churn() {
        let bound = 64 * 1024;
        let s = leak(MokaStorage::new(bound, 1 << 16));
        let trace = pingora::cache::trace::Span::inactive().handle();
        for i in 0..2000u32 {
            let key = CacheKey::new(i.to_le_bytes().to_vec(), "");
            let mut miss = s
                .get_miss_handler(&key, &meta(1000, 60), &trace)
                .await
                .unwrap();
            miss.write_body(Bytes::from(vec![1u8; 1000]), true)
                .await
                .unwrap();
            miss.finish().await.unwrap();
            assert!(
                s.bytes() <= bound as i64,
                "bytes {} over {bound}",
                s.bytes()
            );
        }
        s.run_pending_tasks();
        assert!(s.entries() > 0);
    }

    #[tokio::test]
    async fn update_meta_keeps_body() {
        let s = leak(MokaStorage::new(1 << 20, 1 << 16));
        let key = CacheKey::new(b"k".to_vec(), "");
        let trace = pingora::cache::trace::Span::inactive().handle();
        let mut miss = s.get_miss_handler(&key, &meta(2, 0), &trace).await.unwrap();
        miss.write_body(Bytes::from_static(b"ok"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        assert!(s.update_meta(&key, &meta(2, 30), &trace).await.unwrap());
        let (m, mut hit) = s.lookup(&key, &trace).await.unwrap().unwrap();
        assert!(m.fresh_sec() >= 29);
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "ok");
    }
}
