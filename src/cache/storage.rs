//! `pingora_cache::Storage` on moka: a concurrent, byte-bounded (weigher) TinyLFU store.
//!
//! One moka value per stored response, keyed by pingora's 16-byte combined key hash. The
//! value keeps the response header and the freshness fields as plain in-memory structs, not
//! serialized: a hit rebuilds a `CacheMeta` by cloning the header (no zstd, no msgpack, no
//! header parse; pitfall 4). The body is one `Bytes` handed out without copying.
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
use pingora::{Error, ErrorType, Result};

use crate::metrics::METRICS;

/// Fixed per-entry overhead counted in the weight (moka node, Arc, struct fields).
const ENTRY_OVERHEAD: usize = 256;
/// How long past its stale windows an entry with a validator is kept for a conditional
/// revalidation (at least this, or its own freshness lifetime when longer).
const MIN_REVALIDATION_GRACE: Duration = Duration::from_secs(60);

/// A stored response: header and freshness in memory, body as one `Bytes`.
#[derive(Debug)]
pub struct Entry {
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
    weight: u32,
}

fn header_weight(h: &ResponseHeader) -> usize {
    h.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum::<usize>()
}

impl Entry {
    fn new(meta: &CacheMeta, body: Bytes) -> Self {
        let header = meta.response_header_copy();
        let fresh_until = meta.fresh_until();
        let swr_secs = meta.stale_while_revalidate_sec();
        let sie_secs = meta.stale_if_error_sec();
        let epoch = meta.epoch();
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
        let weight =
            (ENTRY_OVERHEAD + header_weight(&header) + body.len()).min(u32::MAX as usize) as u32;
        Entry {
            header,
            fresh_until,
            created: meta.created(),
            epoch,
            swr_secs,
            sie_secs,
            variance: meta.variance(),
            body,
            keep_until,
            weight,
        }
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
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Explicit => "explicit",
                    RemovalCause::Replaced => "replaced",
                };
                METRICS.cache_evictions.with_label_values(&[cause]).inc();
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
    pub fn insert_meta(&self, key: HashBinary, meta: &CacheMeta, body: Bytes) {
        let mut entry = Entry::new(meta, body);
        entry.weight = entry
            .weight
            .saturating_add(entry.body.len().min(u32::MAX as usize) as u32);
        self.insert(key, entry);
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

    fn miss_handler(&'static self, key: HashBinary, meta: &CacheMeta) -> MokaMiss {
        MokaMiss {
            storage: self,
            key,
            meta: Some(Entry::new(meta, Bytes::new())),
            body: Vec::new(),
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
    meta: Option<Entry>,
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
        let Some(mut entry) = self.meta.take() else {
            return Error::e_explain(ErrorType::InternalError, "miss handler finished twice");
        };
        let len = self.body.len();
        if let Some(declared) = declared_length(&entry.header) {
            if declared != len {
                // A truncated (or overlong) body must never become a cached answer.
                METRICS
                    .cache_store_rejections
                    .with_label_values(&["truncated"])
                    .inc();
                return Error::e_explain(
                    ErrorType::InternalError,
                    format!("body of {len} bytes does not match content-length {declared}"),
                );
            }
        }
        // Stored with an exact Content-Length, so a hit (state machine or fast path) answers
        // with a length instead of re-chunking.
        entry.header.remove_header(&http::header::TRANSFER_ENCODING);
        if !matches!(entry.header.status.as_u16(), 204 | 304) {
            entry
                .header
                .insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
        }
        entry.body = Bytes::from(std::mem::take(&mut self.body));
        entry.weight = entry
            .weight
            .saturating_add(len.min(u32::MAX as usize) as u32);
        let _ = self.complete;
        self.storage.insert(self.key, entry);
        Ok(MissFinishType::Created(len))
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
        let mut entry = Entry::new(meta, old.body.clone());
        entry.weight = entry
            .weight
            .saturating_add(old.body.len().min(u32::MAX as usize) as u32);
        self.insert(k, entry);
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
            Custom(r) if r == "upstream-error" || r == "304 on miss" || r == "client" => None,
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
