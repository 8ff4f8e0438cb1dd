//! `pingora_cache::Storage` on moka: a concurrent, byte-bounded (weigher) TinyLFU store.
//!
//! One moka value per stored response, keyed by pingora's 16-byte combined key hash. The
//! value keeps the response header and the freshness fields as plain in-memory structs, not
//! serialized: a hit rebuilds a `CacheMeta` by cloning the header (no zstd, no msgpack, no
//! header parse, which measured ~10% of proxy CPU per hit). The body is one `Bytes` handed out without copying.
//!
//! Entries ([`super::entry`]) own compact, exact-size memory and weigh what they really cost,
//! so `max_memory` bounds the process's memory, not just payload bytes.
//!
//! A miss writes into a [`Fill`] (`super::fill`): a body readable while it arrives, by the miss
//! itself and by every request for the same key that looks it up meanwhile (pingora-cache's
//! streaming partial write, so a fetch outlives a client that goes away and lock waiters stream
//! with the first client). It is inserted only in `finish`: a handler dropped without `finish`
//! (aborted upstream) stores nothing and its readers get an error, `finish` refuses a body
//! shorter or longer than its `Content-Length`, and a body over `max_object_size` is streamed
//! to the readers it has but never stored.
//!
//! Entries leave moka by weight (TinyLFU picks the victims), by expiry (per entry: the end of
//! its stale windows, plus a revalidation grace when it has a validator), by purge, or by
//! replacement. Every removal is counted in `cache_evictions{cause}` and the entry/byte gauges.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::Expiry;
use parking_lot::Mutex;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget, PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, HitHandler, MissHandler, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

use super::entry::{Entry, Freshness};
use super::fill::{Fill, FillReader, FillState};
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
    /// Responses being stored that a lookup may join, by storage key (more than one only when
    /// two fetches for a key run at once: lock timeout, or a key that skips the lock).
    fills: Mutex<HashMap<HashBinary, Vec<Arc<Fill>>>>,
    /// Fills whose own miss has not taken its reader yet (`lookup_streaming_write`), by id.
    unclaimed: Mutex<HashMap<u64, Arc<Fill>>>,
    next_fill: AtomicU64,
}

impl MokaStorage {
    pub fn new(max_memory: u64, max_object_size: usize) -> Self {
        let totals = Arc::new(Totals::default());
        let listener_totals = totals.clone();
        let store = moka::sync::Cache::builder()
            .max_capacity(max_memory)
            .weigher(|_k: &HashBinary, v: &Arc<Entry>| v.weight())
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
            fills: Mutex::new(HashMap::new()),
            unclaimed: Mutex::new(HashMap::new()),
            next_fill: AtomicU64::new(0),
        }
    }

    /// Takes a fill out of the lookups (stored, abandoned, oversized or purged).
    fn detach(&self, key: &HashBinary, id: u64) {
        let mut fills = self.fills.lock();
        if let Some(v) = fills.get_mut(key) {
            v.retain(|f| f.id != id);
            if v.is_empty() {
                fills.remove(key);
            }
        }
    }

    /// Responses being stored right now (gauge-like; for tests and inspection).
    pub fn fills_in_progress(&self) -> usize {
        self.fills.lock().values().map(Vec::len).sum()
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
        let id = self.next_fill.fetch_add(1, Ordering::Relaxed);
        let fill = Arc::new(Fill::new(id, meta, 16));
        self.fills.lock().entry(key).or_default().push(fill.clone());
        self.unclaimed.lock().insert(id, fill.clone());
        MokaMiss {
            storage: self,
            key,
            pending: Some((Freshness::of(meta), meta.response_header_copy())),
            tag: id.to_le_bytes(),
            fill,
        }
    }
}

/// A reader of a response being stored.
pub struct FillHit {
    reader: FillReader,
}

#[async_trait]
impl HandleHit for FillHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        self.reader.read().await
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
        false
    }

    fn get_eviction_weight(&self) -> usize {
        0
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
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

/// Writes one response body into its [`Fill`]; stores it only on `finish` of a complete body.
pub struct MokaMiss {
    storage: &'static MokaStorage,
    key: HashBinary,
    /// Freshness and header of the response being stored, until `finish`.
    pending: Option<(Freshness, ResponseHeader)>,
    /// The fill's id, as pingora's streaming-write tag.
    tag: [u8; 8],
    fill: Arc<Fill>,
}

impl Drop for MokaMiss {
    fn drop(&mut self) {
        // Finished or not, the fill leaves the lookups; unfinished, its readers get an error.
        self.fill.end(FillState::Failed);
        self.storage.detach(&self.key, self.fill.id);
        self.storage.unclaimed.lock().remove(&self.fill.id);
    }
}

fn declared_length(h: &ResponseHeader) -> Option<usize> {
    h.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
}

#[async_trait]
impl HandleMiss for MokaMiss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        // Past max_object_size the body is still streamed to the readers it has (the client
        // that fetched it among them) but never stored, so no new reader may join.
        if self.fill.push(data, self.storage.max_object_size)? {
            self.storage.detach(&self.key, self.fill.id);
        }
        Ok(())
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.tag)
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let Some((fresh, mut header)) = self.pending.take() else {
            return Error::e_explain(ErrorType::InternalError, "miss handler finished twice");
        };
        let len = self.fill.written();
        let oversized = self.fill.is_oversized();
        if oversized || self.fill.is_discarded() {
            // Every reader gets its end; nothing is stored. Not an error: pingora-proxy would
            // disable the cache and cut off the readers still streaming this body.
            self.fill.end(FillState::Complete);
            if oversized {
                METRICS
                    .cache_store_rejections
                    .with_label_values(&[NoStoreReason::TooLarge.as_str()])
                    .inc();
            }
            return Ok(MissFinishType::Created(0));
        }
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
        // One exact allocation, not the read buffers the chunks may be slices of.
        let Some(body) = self.fill.whole_body() else {
            return Error::e_explain(ErrorType::InternalError, "fill lost its chunks");
        };
        let entry = Entry::with_header(&fresh, &header, body)?;
        // Stored before the fill leaves the lookups (on drop), so a lookup always finds one.
        self.storage.insert(self.key, entry);
        self.fill.end(FillState::Complete);
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
        let k = key.combined_bin();
        // A response being stored wins over a stored one: it is the newer (a refill of an
        // expired entry), and reading it is what coalesces requests onto one fetch.
        let joining = self
            .fills
            .lock()
            .get(&k)
            .and_then(|v| v.iter().find_map(|f| Some((f.meta(), f.reader()?))));
        if let Some((meta, reader)) = joining {
            let hit: HitHandler = Box::new(FillHit { reader });
            return Ok(Some((meta, hit)));
        }
        Ok(self.store.get(&k).map(|e| {
            let hit: HitHandler = Box::new(MokaHit::new(e.body.clone()));
            (e.to_meta(), hit)
        }))
    }

    async fn lookup_streaming_write(
        &'static self,
        _key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let id = streaming_write_tag
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_le_bytes);
        let fill = id.and_then(|id| self.unclaimed.lock().remove(&id));
        let Some(reader) = fill.as_ref().and_then(|f| f.reader()) else {
            // pingora-cache panics on `None` here; an error fails this one request instead.
            return Error::e_explain(ErrorType::InternalError, "no fill for this miss");
        };
        let meta = fill.map(|f| f.meta());
        let hit: HitHandler = Box::new(FillHit { reader });
        Ok(meta.map(|m| (m, hit)))
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
        // A response being stored when the purge came may predate what the purge is for:
        // nobody new joins it, and it is not stored.
        let purged_fills = self.fills.lock().remove(&key.combined_bin());
        for f in purged_fills.into_iter().flatten() {
            f.discard();
        }
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

    fn support_streaming_partial_write(&self) -> bool {
        true
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

    async fn read_all(hit: &mut HitHandler) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = hit.read_body().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_lookup_during_a_miss_reads_the_growing_body_then_the_entry_is_stored() {
        let s = leak(MokaStorage::new(1 << 20, 1 << 16));
        let key = CacheKey::new(b"k".to_vec(), "");
        let trace = pingora::cache::trace::Span::inactive().handle();
        let mut miss = s
            .get_miss_handler(&key, &meta(4, 10), &trace)
            .await
            .unwrap();
        let (_, mut own) = s
            .lookup_streaming_write(&key, miss.streaming_write_tag(), &trace)
            .await
            .unwrap()
            .unwrap();
        miss.write_body(Bytes::from_static(b"ab"), false)
            .await
            .unwrap();
        let (m, mut joined) = s.lookup(&key, &trace).await.unwrap().unwrap();
        assert!(m.is_fresh(SystemTime::now()));
        assert_eq!(joined.read_body().await.unwrap().unwrap(), "ab");
        assert_eq!(s.fills_in_progress(), 1);
        miss.write_body(Bytes::from_static(b"cd"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        assert_eq!(read_all(&mut joined).await.unwrap(), b"cd");
        assert_eq!(read_all(&mut own).await.unwrap(), b"abcd");
        assert_eq!(s.fills_in_progress(), 0);
        let (_, mut hit) = s.lookup(&key, &trace).await.unwrap().unwrap();
        assert!(
            hit.as_any().downcast_ref::<MokaHit>().is_some(),
            "the stored entry"
        );
        assert_eq!(read_all(&mut hit).await.unwrap(), b"abcd");
    }

    #[tokio::test]
    async fn an_abandoned_miss_fails_its_readers_and_stores_nothing() {
        let s = leak(MokaStorage::new(1 << 20, 1 << 16));
        let key = CacheKey::new(b"k".to_vec(), "");
        let trace = pingora::cache::trace::Span::inactive().handle();
        let mut miss = s
            .get_miss_handler(&key, &meta(4, 10), &trace)
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"ab"), false)
            .await
            .unwrap();
        let (_, mut joined) = s.lookup(&key, &trace).await.unwrap().unwrap();
        drop(miss);
        assert_eq!(joined.read_body().await.unwrap().unwrap(), "ab");
        assert!(joined.read_body().await.is_err(), "an error, not an end");
        assert!(s.lookup(&key, &trace).await.unwrap().is_none());
        assert_eq!(s.fills_in_progress(), 0);
    }

    #[tokio::test]
    async fn a_purge_during_a_miss_keeps_it_from_being_stored() {
        let s = leak(MokaStorage::new(1 << 20, 1 << 16));
        let key = CacheKey::new(b"k".to_vec(), "");
        let trace = pingora::cache::trace::Span::inactive().handle();
        let mut miss = s
            .get_miss_handler(&key, &meta(2, 10), &trace)
            .await
            .unwrap();
        let (_, mut joined) = s.lookup(&key, &trace).await.unwrap().unwrap();
        let compact = key.to_compact();
        s.purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &trace,
        )
        .await
        .unwrap();
        assert_eq!(s.fills_in_progress(), 0, "nobody new joins it");
        miss.write_body(Bytes::from_static(b"ok"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        assert_eq!(
            read_all(&mut joined).await.unwrap(),
            b"ok",
            "its readers get it whole"
        );
        assert!(
            s.lookup(&key, &trace).await.unwrap().is_none(),
            "not stored"
        );
    }

    /// A body of unknown length over `max_object_size`: its readers get all of it, nothing is
    /// stored, and no lookup joins it once it is over.
    #[tokio::test]
    async fn an_oversized_body_is_streamed_to_its_readers_and_not_stored() {
        let s = leak(MokaStorage::new(1 << 20, 8));
        let key = CacheKey::new(b"k".to_vec(), "");
        let trace = pingora::cache::trace::Span::inactive().handle();
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("transfer-encoding", "chunked").unwrap();
        let now = SystemTime::now();
        let m = CacheMeta::new(now + Duration::from_secs(10), now, 0, 0, h);
        let mut miss = s.get_miss_handler(&key, &m, &trace).await.unwrap();
        let (_, mut own) = s
            .lookup_streaming_write(&key, miss.streaming_write_tag(), &trace)
            .await
            .unwrap()
            .unwrap();
        miss.write_body(Bytes::from_static(b"0123456"), false)
            .await
            .unwrap();
        assert_eq!(own.read_body().await.unwrap().unwrap(), "0123456");
        miss.write_body(Bytes::from_static(b"789ab"), false)
            .await
            .unwrap();
        assert!(
            s.lookup(&key, &trace).await.unwrap().is_none(),
            "no one joins"
        );
        miss.write_body(Bytes::from_static(b"c"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        assert_eq!(read_all(&mut own).await.unwrap(), b"789abc");
        assert!(
            s.lookup(&key, &trace).await.unwrap().is_none(),
            "not stored"
        );
    }

    /// moka's TinyLFU admission: a scan of one-off misses (a client walking query strings)
    /// does not push out entries that are read often; the newcomers lose to them instead.
    #[tokio::test]
    async fn a_scan_of_one_off_entries_does_not_evict_hot_ones() {
        let bound = 256 * 1024;
        let s = leak(MokaStorage::new(bound, 1 << 16));
        let store = |i: u32| async move {
            let trace = pingora::cache::trace::Span::inactive().handle();
            let key = CacheKey::new(i.to_le_bytes().to_vec(), "");
            let mut miss = s
                .get_miss_handler(&key, &meta(1000, 60), &trace)
                .await
                .unwrap();
            miss.write_body(Bytes::from(vec![1u8; 1000]), true)
                .await
                .unwrap();
            miss.finish().await.unwrap();
            key.combined_bin()
        };
        // Over half full (moka counts frequencies from then on), with room for the hot ones.
        for i in 1000..1080u32 {
            store(i).await;
        }
        assert!(
            s.bytes() > bound as i64 / 2 && s.bytes() < bound as i64 * 3 / 4,
            "{}",
            s.bytes()
        );
        let mut hot = Vec::new();
        for i in 0..10u32 {
            hot.push(store(i).await);
        }
        for _ in 0..20 {
            for k in &hot {
                assert!(s.get(k).is_some());
            }
            s.run_pending_tasks();
        }
        for i in 100_000..101_000u32 {
            store(i).await;
        }
        s.run_pending_tasks();
        let kept = hot.iter().filter(|k| s.get(k).is_some()).count();
        assert_eq!(kept, hot.len(), "hot entries evicted by a scan");
        assert!(s.bytes() <= bound as i64);
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
