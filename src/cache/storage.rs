//! `pingora_cache::Storage` on moka: a concurrent, byte-bounded (weigher) LRU store.
//!
//! One moka value per stored response, keyed by pingora's 16-byte combined key hash. The
//! value keeps the response header and the freshness fields as plain in-memory structs, not
//! serialized: a hit rebuilds a `CacheMeta` by cloning the header (no zstd, no msgpack, no
//! header parse, which measured ~10% of proxy CPU per hit). The body is one `Bytes` handed out without copying.
//!
//! Entries ([`super::entry`]) own compact, exact-size memory and weigh what they really cost,
//! so `max_memory` bounds the process's memory, not just payload bytes.
//!
//! Miss handlers buffer the body and insert only in `finish`: a handler dropped without
//! `finish` (aborted upstream, client gone, object over the size limit) stores nothing, and
//! `finish` itself refuses a body shorter or longer than its `Content-Length`.
//!
//! Eviction is LRU, not moka's default TinyLFU: TinyLFU admits a new entry only when it has
//! been asked for more often than the victim, so a store full of entries past their freshness
//! and stale windows (kept for revalidation) or of an earlier working set refused the fresh
//! responses of a new one, and sent their requests to the origin again and again (the
//! `keys-uniform` benchmark: ~16k origin requests in a measured run). Under LRU a fresh entry is
//! always admitted, and the least recently used (an earlier set's, expired ones first) leave.
//!
//! Entries leave moka by weight (least recently used first), by expiry (per entry: the end of
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
use pingora::cache::storage::{
    HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget, PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, HitHandler, MissHandler, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

use super::entry::{Entry, Freshness};
use crate::metrics::{EvictionCause, NoStoreReason, METRICS};

struct EntryExpiry;

impl EntryExpiry {
    fn left(value: &Entry) -> Option<Duration> {
        Some(
            value
                .keep_until()
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
            .weigher(|_k: &HashBinary, v: &Arc<Entry>| v.weight())
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .expire_after(EntryExpiry)
            .eviction_listener(move |_k, v: Arc<Entry>, cause| {
                let e = listener_totals.entries.fetch_sub(1, Ordering::AcqRel) - 1;
                let b = listener_totals
                    .bytes
                    .fetch_sub(i64::from(v.weight()), Ordering::AcqRel)
                    - i64::from(v.weight());
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
        let w = i64::from(entry.weight());
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

    /// The weight bound (`cache.max_memory`).
    pub fn max_memory(&self) -> u64 {
        self.max_memory
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
        for (key, entry) in self.store.iter() {
            let aged = entry.aged(by);
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

    fn key(set: &str, i: usize) -> HashBinary {
        CacheKey::new(format!("{set}-{i}").into_bytes(), "").combined_bin()
    }

    /// A store full of a first working set, each entry asked for many times and then past its
    /// freshness (kept for revalidation), admits a second set seen once each, whole, in one
    /// pass: nothing past its windows wins over a fresh entry, and nothing of an old set
    /// outranks a new one for having been popular.
    #[test]
    fn a_new_working_set_is_admitted_in_one_pass() {
        let body = Bytes::from(vec![b'x'; 1000]);
        let one = Entry::new(&meta(body.len(), 60), body.clone())
            .unwrap()
            .weight() as u64;
        let n = 200;
        let s = MokaStorage::new(one * n as u64 + one / 2, 1 << 16);
        for i in 0..n {
            s.insert_meta(key("old", i), &meta(body.len(), 60), body.clone());
        }
        for _ in 0..20 {
            for i in 0..n {
                assert!(s.get(&key("old", i)).is_some());
            }
        }
        s.run_pending_tasks();
        // The old set goes stale, still kept (it has a validator: revalidation grace).
        s.age_entries(Duration::from_secs(61));
        s.run_pending_tasks();
        assert_eq!(s.entries(), n as i64);
        for i in 0..n {
            s.insert_meta(key("new", i), &meta(body.len(), 60), body.clone());
            s.run_pending_tasks();
        }
        let admitted = (0..n).filter(|&i| s.get(&key("new", i)).is_some()).count();
        assert_eq!(admitted, n, "every fresh entry of the new set is stored");
        let kept = (0..n).filter(|&i| s.get(&key("old", i)).is_some()).count();
        assert_eq!(kept, 0, "the stale set made room");
        assert!(s.bytes() <= s.max_memory() as i64);
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
