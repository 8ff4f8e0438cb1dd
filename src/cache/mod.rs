//! The HTTP cache: pingora-cache's state machine on a moka store, partitioned per key id,
//! RFC 9111 policy, fresh-hit fast path, scope invalidation on writes, admin purge.
//!
//! The gateway ([`crate::gateway`]) calls the cache in request order, handing it the cache's
//! own per-request state ([`CacheCtx`], see [`phase`]) and nothing else of the request context:
//! 1. [`Cache::prepare`] (in `request_filter`): bypass with a reason, or prepared with the key;
//! 2. [`Cache::fresh_hit`]: a fresh stored response, ready to send, answered without the state
//!    machine ([`fast_path`]);
//! 3. the pingora-cache hooks ([`Cache::request_cache_filter`] … [`Cache::should_serve_stale`]);
//! 4. [`Cache::response_filter`]: `X-Cache`, `Cache-Status`, `Age` and the lookup metric;
//! 5. [`Cache::after_write`]: what a successful write invalidates.
//!
//! Modules: [`storage`] (`pingora_cache::Storage` on moka), [`entry`] (one stored response and its
//! real memory cost), [`predictor`] (which keys skip the cache lock),
//! [`key`] (primary key framing and `Vary` variance), [`policy`] (what may be stored and for how
//! long), [`status`] (`X-Cache`, `Cache-Status`), [`invalidation`] (scope / tree / URL
//! generations, write rules, purge), [`fleet`] (invalidations across instances through Redis).
//!
//! Every place where we work around pingora-cache, and why, is listed in
//! `docs/ARCHITECTURE.md` ("Where we work around pingora-cache").

pub mod conditional;
pub mod directives;
pub mod entry;
pub mod fast_path;
pub mod fleet;
pub mod invalidation;
pub mod key;
pub mod phase;
pub mod policy;
pub mod predictor;
pub mod range;
pub mod shared;
pub mod status;
pub mod storage;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, NoCacheReason,
    RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use crate::compression::Compression;
use crate::config::{CacheSettings, CompressionSettings, Share, UpstreamSettings};
use crate::edge::{Admitted, Principal};
use crate::metrics::METRICS;

pub use invalidation::Invalidation;
use key::Partition;
pub use phase::{
    BypassReason, CacheCtx, Lookup, NoStoreReason, Prepared, StaleKind, StoreDecision,
};
use predictor::UncacheableKeys;
pub use status::{CacheStatus, Outcome};
pub use storage::MokaStorage;

/// A fresh stored response, with the cache's headers, ready for the gateway to decorate and send.
pub struct FreshHit {
    pub header: ResponseHeader,
    /// `None` when only the header goes out (HEAD, 304, empty body).
    pub body: Option<Bytes>,
    pub status: CacheStatus,
}

/// The part of the cache's configuration a reload replaces (route rules and TTLs, what may be
/// stored, client revalidation, invalidation rules). The gateway reads it once per request and
/// hands it to the steps that decide; the store, the lock and the generations stay.
/// `settings` also holds the keys that cannot change live, equal to the boot values (a reload
/// that changes one is refused).
#[derive(Debug, Clone)]
pub struct CacheLive {
    pub settings: CacheSettings,
    pub rules: invalidation::Rules,
}

impl CacheLive {
    pub fn new(settings: &CacheSettings) -> Self {
        Self {
            settings: settings.clone(),
            rules: invalidation::Rules::new(&settings.invalidation),
        }
    }
}

pub struct Cache {
    settings: CacheSettings,
    authority: String,
    storage: &'static MokaStorage,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static UncacheableKeys,
    invalidation: Invalidation,
    /// Publishes local invalidations to the fleet (`redis.invalidation`).
    fleet: Option<fleet::Publisher>,
    /// Whether generations match the fleet's; decides hits while they may not.
    fleet_state: Option<std::sync::Arc<fleet::FleetState>>,
    /// Content codings: the stored coding, and what every reader serves from it.
    compression: Compression,
}

impl Cache {
    pub fn new(
        settings: &CacheSettings,
        upstream: &UpstreamSettings,
        compression: &CompressionSettings,
    ) -> anyhow::Result<Self> {
        // Everything pingora-cache is handed must be 'static; the cache lives as long as the
        // process, so these are leaked once at start.
        let storage: &'static MokaStorage = Box::leak(Box::new(MokaStorage::new(
            settings.max_memory,
            settings.max_object_size,
        )));
        // A writer holding the lock longer than the age timeout lets waiters stampede the
        // origin, so the age timeout covers the slowest allowed origin response.
        let age_timeout = settings
            .lock_timeout
            .max(upstream.connect_timeout + upstream.read_timeout);
        let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(age_timeout));
        let predictor: &'static UncacheableKeys =
            Box::leak(Box::new(UncacheableKeys::new(settings.uncacheable_ttl)));
        Ok(Self {
            settings: settings.clone(),
            authority: upstream.authority.clone(),
            storage,
            lock,
            predictor,
            invalidation: Invalidation::new(),
            fleet: None,
            fleet_state: None,
            compression: Compression::new(compression),
        })
    }

    /// Publishes every invalidation this instance makes to the fleet from now on, and serves
    /// hits by `state` (see [`fleet::FleetState::allows_hit`]).
    pub fn set_fleet(
        &mut self,
        publisher: fleet::Publisher,
        state: std::sync::Arc<fleet::FleetState>,
    ) {
        self.fleet = Some(publisher);
        self.fleet_state = Some(state);
    }

    fn publish(&self, bump: fleet::Bump, provisional: u64) {
        if let Some(f) = &self.fleet {
            f.publish(bump, provisional);
        }
    }

    /// May a stored response of this age be served as a hit, given the fleet link's state?
    pub fn fleet_allows_hit(&self, age: Duration) -> bool {
        self.fleet_state.as_ref().is_none_or(|s| s.allows_hit(age))
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    pub fn storage(&self) -> &'static MokaStorage {
        self.storage
    }

    pub fn invalidation(&self) -> &Invalidation {
        &self.invalidation
    }

    pub fn compression(&self) -> &Compression {
        &self.compression
    }

    /// Step 1 (in `request_filter`, once the edge admitted the request): is this request the
    /// cache's business, and under which key? The effective `Api-Version` is the client's, or
    /// the sidecar's pinned one it will be given.
    pub fn prepare(
        &self,
        req: &RequestHeader,
        admitted: Admitted,
        route: Option<usize>,
        pinned_version: Option<&str>,
        live: &CacheLive,
    ) -> CacheCtx {
        if !self.settings.enabled {
            return CacheCtx::Bypass(BypassReason::Disabled);
        }
        if let Err(reason) = policy::request_cacheable(req) {
            return CacheCtx::Bypass(reason);
        }
        let partition = match (live.settings.share, admitted.principal) {
            (Share::Shared, _) => Partition::Shared,
            (Share::PerKey, Principal::Key(id)) => Partition::Key(id),
            (Share::PerKey, Principal::Anonymous) => Partition::Anonymous,
        };
        let version: &[u8] = match req.headers.get("api-version") {
            Some(v) if !admitted.inject_version => v.as_bytes(),
            _ => pinned_version.map(str::as_bytes).unwrap_or_default(),
        };
        let path = req.uri.path();
        let pq = req.uri.path_and_query().map_or(path, |p| p.as_str());
        // Request directives only when the operator lets clients steer the cache.
        let client = if live.settings.honor_client_no_cache {
            directives::RequestDirectives::of(req)
        } else {
            directives::RequestDirectives::default()
        };
        let mut generations = Vec::with_capacity(8);
        self.invalidation
            .generations(&live.rules, path, pq, &mut generations);
        CacheCtx::Prepared(Prepared {
            key: key::primary(&key::KeyParts {
                authority: &self.authority,
                path_and_query: pq,
                api_version: version,
                partition,
                generations: &generations,
            }),
            partition,
            route,
            force_revalidate: client.no_cache || client.max_age == Some(0),
            client,
            lookup: Lookup::NotYet,
            store: None,
            revalidation: None,
            upstream_delay: Duration::ZERO,
        })
    }

    /// Step 2: the fresh stored response for a prepared request, with the cache's headers and
    /// the lookup recorded, when the fast path may answer it (`cache.fast_path`).
    pub fn fresh_hit(
        &self,
        req: &RequestHeader,
        ctx: &CacheCtx,
        route_label: &'static str,
    ) -> pingora::Result<Option<FreshHit>> {
        if !self.settings.fast_path {
            return Ok(None);
        }
        let Some(prepared) = ctx.prepared() else {
            return Ok(None);
        };
        fast_path::fresh_hit(self, req, prepared, route_label)
    }

    pub fn request_cache_filter(
        &'static self,
        session: &mut Session,
        ctx: &mut CacheCtx,
    ) -> pingora::Result<()> {
        let Some(p) = ctx.prepared_mut() else {
            return Ok(());
        };
        if session.subrequest_ctx.is_some() {
            // A background refresh is the cache's own request: the client's directives that
            // spawned it (`max-stale`, `no-store`…) must not stop it from refreshing.
            p.client = directives::RequestDirectives::default();
        }
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.settings.lock_timeout);
        // A HEAD miss is never stored (pingora-cache fills only from GET 200), yet with the lock
        // it would take the key's write permit and drop it unfinished ("Dangling cache lock").
        let head = session.req_header().method == http::Method::HEAD;
        // Likewise a request with `no-store`, and a conditional one whose miss forwards the
        // client's condition, may store nothing, so other requests must not wait on them.
        let req = session.req_header();
        let conditional = self.settings.forward_conditional_misses
            && (req.headers.contains_key(http::header::IF_NONE_MATCH)
                || req.headers.contains_key(http::header::IF_MODIFIED_SINCE));
        let no_store = conditional || p.client.no_store;
        session.cache.enable(
            self.storage,
            None,
            Some(self.predictor),
            (!head && !no_store).then_some(self.lock),
            Some(overrides),
        );
        session
            .cache
            .set_max_file_size_bytes(self.settings.max_object_size);
        Ok(())
    }

    pub fn cache_key(&self, ctx: &CacheCtx) -> pingora::Result<CacheKey> {
        match ctx.prepared() {
            Some(p) => Ok(CacheKey::new(p.key.clone(), "")),
            // pingora only asks for a key once `request_cache_filter` enabled the cache, which
            // it does only for prepared requests.
            None => pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "cache key requested for a request that is not cacheable",
            ),
        }
    }

    /// The state machine's reader of the client's request directives (RFC 9111 §5.2.1), the
    /// same rules as the fast path's: `no-cache`, `max-age`, `min-fresh` force a validation of
    /// a fresh entry; `max-stale` lets a stale one be used as is, unless the stored response
    /// forbids serving it stale.
    pub fn cache_hit_filter(
        &self,
        session: &Session,
        meta: &CacheMeta,
        is_fresh: bool,
        ctx: &mut CacheCtx,
    ) -> pingora::Result<Option<ForcedFreshness>> {
        let Some(p) = ctx.prepared_mut() else {
            return Ok(None);
        };
        p.lookup = Lookup::Hit {
            collapsed: session.cache.lock_duration().is_some(),
        };
        if p.force_revalidate {
            // Client no-cache, allowed by config: validate with the origin before use.
            return Ok(Some(ForcedFreshness::ForceExpired));
        }
        let now = SystemTime::now();
        let age = meta.age().as_secs();
        let fresh_left = match meta.fresh_until().duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
        };
        if is_fresh {
            if !p.client.accepts(age, fresh_left) {
                return Ok(Some(ForcedFreshness::ForceExpired));
            }
            return Ok(None);
        }
        let staleness = fresh_left.unsigned_abs();
        let client_takes_stale = p.client.accepts_stale(staleness)
            && !p.client.no_cache
            && p.client.max_age.is_none_or(|m| age <= u64::from(m));
        if client_takes_stale && policy::may_serve_stale(&self.settings, meta.response_header()) {
            return Ok(Some(ForcedFreshness::ForceFresh));
        }
        Ok(None)
    }

    /// After [`Self::cache_hit_filter`]: while this instance's generations may be behind the
    /// fleet's, an entry too old for `redis.invalidation_outage` is revalidated, not served.
    pub fn fleet_hit_filter(&self, meta: &CacheMeta) -> Option<ForcedFreshness> {
        (!self.fleet_allows_hit(meta.age())).then_some(ForcedFreshness::ForceExpired)
    }

    /// In `proxy_upstream_filter`: the request may not go to the origin (`only-if-cached`,
    /// honoured with `cache.honor_client_no_cache`): nothing stored could answer it.
    pub fn only_if_cached(&self, ctx: &CacheCtx) -> bool {
        ctx.prepared().is_some_and(|p| p.client.only_if_cached)
    }

    /// `range_header_filter`: a Range request on a stored (or being stored) complete response
    /// ([`range`]). A stored body in a coding this client does not accept is decoded for it
    /// on the way out ([`crate::compression`]), so the stored bytes are not the representation
    /// it gets: then the whole response is sent (a server may ignore `Range`).
    pub fn range_header_filter(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        client: &crate::compression::Accepted,
    ) -> pingora::proxy::RangeType {
        if let crate::compression::Coded::Known(coding) = crate::compression::content_coding(resp) {
            if !client.accepts(coding) {
                return pingora::proxy::RangeType::None;
            }
        }
        range::header_filter(req, resp)
    }

    pub fn cache_miss(&self, session: &mut Session, ctx: &mut CacheCtx) {
        session.cache.cache_miss();
        if let Some(p) = ctx.prepared_mut() {
            p.lookup = Lookup::Miss;
        }
    }

    /// In `upstream_request_filter`, after pingora-cache rewrote the request for a fill: a
    /// HEAD goes to the origin as HEAD (RFC 9110 §9.3.2), not as the GET pingora makes of it.
    /// Its response is never stored as the GET's (see [`Self::response_cache_filter`]).
    ///
    /// On a miss with nothing stored to revalidate, the client's own `If-None-Match` /
    /// `If-Modified-Since` (which pingora-cache removed) go to the origin (RFC 9111 §4.3.2): a
    /// 304 then reaches the client as is and nothing is stored; a 200 is stored as usual.
    pub fn upstream_request(
        &self,
        session: &Session,
        ctx: &CacheCtx,
        req: &mut RequestHeader,
    ) -> pingora::Result<()> {
        let downstream = session.req_header();
        if downstream.method == http::Method::HEAD && req.method == http::Method::GET {
            req.set_method(http::Method::HEAD);
        }
        if !self.settings.forward_conditional_misses {
            return Ok(());
        }
        let nothing_stored = session.cache.enabled() && session.cache.maybe_cache_meta().is_none();
        if nothing_stored && ctx.prepared().is_some_and(|p| p.lookup == Lookup::Miss) {
            for name in [http::header::IF_NONE_MATCH, http::header::IF_MODIFIED_SINCE] {
                for v in downstream.headers.get_all(&name) {
                    req.append_header(name.clone(), v.clone())?;
                }
            }
        }
        Ok(())
    }

    /// In `upstream_response_filter`: remembers how long the origin took, and keeps a 304 so
    /// the revalidated header can take every field it carries.
    pub fn upstream_response(&self, resp: &ResponseHeader, took: Duration, ctx: &mut CacheCtx) {
        let Some(p) = ctx.prepared_mut() else { return };
        p.upstream_delay = took;
        if resp.status == http::StatusCode::NOT_MODIFIED && matches!(p.lookup, Lookup::Hit { .. }) {
            p.revalidation = Some(Box::new(resp.clone()));
        }
    }

    pub fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut CacheCtx,
        live: &CacheLive,
    ) -> pingora::Result<RespCacheable> {
        let req = session.req_header();
        let Some(p) = ctx.prepared_mut() else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        let merged;
        let resp = match p.revalidation.take() {
            Some(not_modified) => {
                merged = merge_not_modified(resp, &not_modified)?;
                &merged
            }
            // A HEAD response has no body to store for the GET; it may update the stored GET's
            // header (RFC 9111 §4.3.5; a 304 to a HEAD revalidation does, above).
            None if req.method == http::Method::HEAD => {
                if resp.status == http::StatusCode::OK {
                    self.head_updates_stored_get(session, resp, p, live)?;
                }
                return Ok(self.refuse(p, NoStoreReason::Head));
            }
            None => resp,
        };
        if p.client.no_store {
            // RFC 9111 §5.2.1.5: nothing of the response to this request is stored (a 304
            // refresh of an existing entry included).
            return Ok(self.refuse(p, NoStoreReason::RequestNoStore));
        }
        let route = p.route.and_then(|i| live.settings.routes.get(i));
        let now = SystemTime::now();
        match policy::decide(&live.settings, route, req, resp, now) {
            Ok(f) => {
                p.store = Some(StoreDecision::Store);
                Ok(RespCacheable::Cacheable(self.meta_for(&f, resp, p, now)?))
            }
            Err(reason) => Ok(self.refuse(p, reason)),
        }
    }

    /// The `CacheMeta` to store `resp` with, given the policy's freshness.
    fn meta_for(
        &self,
        f: &policy::Freshness,
        resp: &ResponseHeader,
        p: &Prepared,
        now: SystemTime,
    ) -> pingora::Result<CacheMeta> {
        // RFC 9111 §4.2.3: corrected initial age = the origin's Age + response delay (whole
        // seconds, as Age counts). The origin's Date is not used for an apparent age: its
        // one-second resolution would age every response by up to a second, and a skewed
        // origin clock would age everything.
        let delay = Duration::from_secs(p.upstream_delay.as_secs());
        let initial_age = f.age + delay;
        let fresh = f.fresh.saturating_sub(delay);
        let fresh_until = if fresh.is_zero() {
            // Stored only to be revalidated: stale from the start.
            now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
        } else {
            now + fresh
        };
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let mut header = resp.clone();
        header.remove_header(&http::header::CONNECTION);
        self.compression.store_header(&mut header)?;
        for name in &f.strip {
            header.remove_header(name.as_str());
        }
        if !header.headers.contains_key(http::header::DATE) {
            // RFC 9110 §6.6.1: a cache that receives a response without Date records the time
            // it was received as its Date.
            header.insert_header(http::header::DATE, httpdate::fmt_http_date(now))?;
        }
        let mut meta = CacheMeta::new(
            fresh_until,
            now,
            secs(f.stale_while_revalidate),
            secs(f.stale_if_error),
            header,
        );
        if !initial_age.is_zero() {
            // Age counts from the epoch: both readers add the resident time to it.
            meta.set_epoch_override(now.checked_sub(initial_age).unwrap_or(now));
        }
        Ok(meta)
    }

    /// RFC 9111 §4.3.5: a 200 to a HEAD that went to the origin (the stored GET was stale, or
    /// the client asked for validation, and the origin ignored the condition) updates the
    /// stored GET response it could have been served from when their validators match (and
    /// `Content-Length`, if the HEAD response has one); otherwise the stored response is
    /// marked stale. The update is a 304's (every field replaced but framing), with the
    /// freshness the policy gives the updated header.
    fn head_updates_stored_get(
        &self,
        session: &Session,
        head: &ResponseHeader,
        p: &Prepared,
        live: &CacheLive,
    ) -> pingora::Result<()> {
        let Some(stored) = session.cache.maybe_cache_meta() else {
            return Ok(());
        };
        let key = session.cache.cache_key().combined_bin();
        let stored_header = stored.response_header();
        let now = SystemTime::now();
        if !policy::head_matches_stored(stored_header, head) {
            self.storage.mark_stale(&key, now);
            return Ok(());
        }
        let updated = merge_not_modified(stored_header, head)?;
        let route = p.route.and_then(|i| live.settings.routes.get(i));
        let get = {
            let mut r = session.req_header().clone();
            r.set_method(http::Method::GET);
            r
        };
        match policy::decide(&live.settings, route, &get, &updated, now) {
            Ok(f) => {
                let mut meta = self.meta_for(&f, &updated, p, now)?;
                if let Some(v) = stored.variance() {
                    meta.set_variance_key(v);
                }
                self.storage.replace_meta(&key, &meta)?;
            }
            // The updated response may no longer be stored (`no-store` now, …): drop it.
            Err(_) => {
                self.storage.remove(&key);
            }
        }
        Ok(())
    }

    fn refuse(&self, p: &mut Prepared, reason: NoStoreReason) -> RespCacheable {
        p.store = Some(StoreDecision::Refuse(reason));
        if let Some(shared) = self.storage.shared() {
            // Nothing will be stored: waiters elsewhere in the fleet fetch themselves now.
            shared.release(&pingora::cache::key::hash_key(&p.key));
        }
        METRICS
            .cache_store_rejections
            .with_label_values(&[reason.as_str()])
            .inc();
        RespCacheable::Uncacheable(NoCacheReason::Custom(reason.as_str()))
    }

    pub fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &CacheCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let partition = ctx.prepared().map_or(Partition::Shared, |p| p.partition);
        key::variance(meta.response_header(), req, partition)
    }

    pub fn should_serve_stale(&self, error: Option<&pingora::Error>) -> bool {
        match error {
            // pingora only asks within the entry's stale-while-revalidate window, but its
            // default answer for "no error" is false, which would never serve it.
            None => true,
            // stale-if-error: the origin failed (connect error, timeout, 5xx); pingora only
            // asks within the entry's window.
            Some(e) => {
                e.esource() == &pingora::ErrorSource::Upstream
                    || matches!(e.etype(), pingora::ErrorType::HTTPStatus(s) if *s >= 500)
            }
        }
    }

    /// What happened to this request, from pingora-cache's phase and our own state.
    fn outcome(&self, session: &Session, ctx: &CacheCtx, fwd_status: Option<u16>) -> Outcome {
        let p = match ctx {
            CacheCtx::Bypass(reason) => {
                return Outcome::Bypass {
                    detail: reason.as_str(),
                }
            }
            CacheCtx::Prepared(p) => p,
        };
        let now = SystemTime::now();
        let ttl = |m: &CacheMeta| match m.fresh_until().duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        let meta_ttl = session.cache.maybe_cache_meta().map_or(0, ttl);
        let stored = p.store == Some(StoreDecision::Store);
        let refused = match p.store {
            Some(StoreDecision::Refuse(r)) => Some(r),
            _ => None,
        };
        match session.cache.phase() {
            CachePhase::Hit => Outcome::Hit {
                ttl: meta_ttl,
                collapsed: matches!(p.lookup, Lookup::Hit { collapsed: true }),
            },
            CachePhase::StaleUpdating => Outcome::Stale {
                ttl: meta_ttl,
                kind: StaleKind::WhileRevalidate,
                fwd_status: None,
            },
            CachePhase::Stale => Outcome::Stale {
                ttl: meta_ttl,
                kind: StaleKind::IfError,
                fwd_status,
            },
            CachePhase::Revalidated => Outcome::Revalidated {
                ttl: meta_ttl,
                stored: true,
            },
            CachePhase::RevalidatedNoCache(_) => Outcome::Revalidated {
                ttl: meta_ttl,
                stored: false,
            },
            CachePhase::Miss => Outcome::Miss {
                stale: false,
                fwd_status,
                stored,
                detail: refused,
            },
            CachePhase::Expired => Outcome::Miss {
                stale: true,
                fwd_status,
                stored,
                detail: refused,
            },
            CachePhase::Disabled(reason) if p.lookup != Lookup::NotYet => Outcome::Miss {
                stale: false,
                fwd_status,
                stored: false,
                detail: refused.or(Some(disabled_reason(reason))),
            },
            _ => Outcome::Bypass {
                detail: NoStoreReason::Uncacheable.as_str(),
            },
        }
    }

    /// Adds `X-Cache`, `Cache-Status` (and `Age` when served from the store) and records the
    /// lookup. Shared by the state machine and the fast path, so the two cannot drift apart.
    fn finish_headers(
        &self,
        resp: &mut ResponseHeader,
        outcome: &Outcome,
        age: Option<u64>,
        route_label: &'static str,
    ) -> pingora::Result<CacheStatus> {
        let status = outcome.status();
        resp.insert_header("x-cache", status.as_str())?;
        resp.insert_header("cache-status", outcome.cache_status())?;
        if let Some(age) = age {
            resp.insert_header(http::header::AGE, age.to_string())?;
        }
        METRICS
            .cache_lookups
            .with_label_values(&[outcome.metric(), route_label])
            .inc();
        Ok(status)
    }

    /// Step 4: response headers for what the cache did (X-Cache, Cache-Status, Age) on a
    /// response from the state machine. `fwd_status` is the origin's status, when asked.
    pub fn response_filter(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &CacheCtx,
        fwd_status: Option<u16>,
        route_label: &'static str,
    ) -> pingora::Result<CacheStatus> {
        let outcome = self.outcome(session, ctx, fwd_status);
        if let CachePhase::Disabled(NoCacheReason::ResponseTooLarge) = session.cache.phase() {
            METRICS
                .cache_store_rejections
                .with_label_values(&[NoStoreReason::TooLarge.as_str()])
                .inc();
        }
        let age = match outcome {
            Outcome::Hit { .. } | Outcome::Stale { .. } | Outcome::Revalidated { .. } => {
                session.cache.maybe_cache_meta().map(|m| m.age().as_secs())
            }
            _ => None,
        };
        self.finish_headers(resp, &outcome, age, route_label)
    }

    /// Step 5, with the response header of a write before it goes downstream: a successful
    /// write invalidates the scopes it touched. `body` is the inspected request body, if any.
    pub fn after_write(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        body: Option<&[u8]>,
        live: &CacheLive,
    ) {
        if !self.settings.enabled || !(200..400).contains(&resp.status.as_u16()) {
            return;
        }
        let path = req.uri.path();
        let pq = req.uri.path_and_query().map_or(path, |p| p.as_str());
        let locations: Vec<String> = [http::header::LOCATION, http::header::CONTENT_LOCATION]
            .iter()
            .filter_map(|h| resp.headers.get(h))
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| invalidation::same_origin_target(v, &self.authority, path))
            .collect();
        let bumped =
            self.invalidation
                .on_write(&live.rules, &req.method, path, pq, body, &locations);
        tracing::debug!(?bumped, "write invalidated");
        self.publish_bumped(bumped);
    }

    /// A successful GraphQL mutation (2xx; a GraphQL error answer may still have applied part
    /// of a mutation, so the response body is not consulted): invalidates what it may have
    /// changed, for every key ([`Invalidation::on_graphql`]).
    pub fn after_graphql(&self, w: &invalidation::GraphqlWrite<'_>) {
        if !self.settings.enabled {
            return;
        }
        let bumped = self.invalidation.on_graphql(w);
        tracing::debug!(?bumped, "graphql mutation invalidated");
        self.publish_bumped(bumped);
    }

    fn publish_bumped(&self, bumped: invalidation::Bumped) {
        if self.fleet.is_some() {
            let invalidation::Bumped {
                scopes,
                trees,
                urls,
                provisional,
            } = bumped;
            let bumps = scopes
                .into_iter()
                .map(fleet::Bump::Scope)
                .chain(trees.into_iter().map(fleet::Bump::Tree))
                .chain(urls.into_iter().map(fleet::Bump::Url));
            for (b, p) in bumps.zip(provisional) {
                self.publish(b, p);
            }
        }
    }
}

/// Fields a 304 never replaces in the stored response (RFC 9111 §3.2): the framing of the
/// stored body, and the hop-by-hop fields that are never stored (§3.1).
const NOT_UPDATED_BY_304: &[&str] = &[
    "content-length",
    "content-range",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authentication-info",
];

/// The stored header updated by a 304 (RFC 9111 §3.2, §4.3.4): every field the 304 carries
/// replaces the stored one, unknown and `X-`/`Content-` fields included, except
/// [`NOT_UPDATED_BY_304`] and the fields its `Connection` names. pingora-cache's own merge
/// (`revalidate_merge_header`, which made `stored`) copies only five fields. A stored `Age`
/// the 304 does not repeat is dropped: the age restarts from the 304.
fn merge_not_modified(
    stored: &ResponseHeader,
    not_modified: &ResponseHeader,
) -> pingora::Result<ResponseHeader> {
    let connection: Vec<String> = not_modified
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = stored.clone();
    if !not_modified.headers.contains_key(http::header::AGE) {
        out.remove_header(&http::header::AGE);
    }
    for name in not_modified.headers.keys() {
        let n = name.as_str();
        if NOT_UPDATED_BY_304.contains(&n) || connection.iter().any(|c| c == n) {
            continue;
        }
        out.remove_header(name);
        for v in not_modified.headers.get_all(name) {
            out.append_header(name.clone(), v.clone())?;
        }
    }
    Ok(out)
}

fn disabled_reason(reason: NoCacheReason) -> NoStoreReason {
    match reason {
        NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => {
            NoStoreReason::TooLarge
        }
        NoCacheReason::CacheLockGiveUp => NoStoreReason::LockReleased,
        NoCacheReason::CacheLockTimeout => NoStoreReason::LockTimeout,
        NoCacheReason::Custom(r) => {
            NoStoreReason::from_custom(r).unwrap_or(NoStoreReason::Uncacheable)
        }
        _ => NoStoreReason::Uncacheable,
    }
}

/// What an admin purge names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeTarget {
    /// A scope such as `/organizations/o/libraries/l`: every read under it, for every key.
    Scope(String),
    /// One URL (path and query), for every key.
    Url(String),
}

impl PurgeTarget {
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            scope: Option<String>,
            url: Option<String>,
        }
        let r: Req = serde_json::from_slice(body).map_err(|e| {
            format!("expected {{\"scope\": \"/organizations/…\"}} or {{\"url\": \"/…\"}}: {e}")
        })?;
        match (r.scope, r.url) {
            (Some(s), None) if s.starts_with('/') => Ok(Self::Scope(s)),
            (None, Some(u)) if u.starts_with('/') => Ok(Self::Url(u)),
            (Some(_), Some(_)) => Err("give either scope or url, not both".into()),
            (None, None) => Err("give scope or url".into()),
            _ => Err("scope and url are paths starting with '/'".into()),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Scope(s) => serde_json::json!({ "scope": s }),
            Self::Url(u) => serde_json::json!({ "url": u }),
        }
    }
}

impl Cache {
    /// Invalidates `target` for every key. Returns a short description of what was done.
    pub fn purge(&self, target: &PurgeTarget) -> &'static str {
        if !self.settings.enabled {
            return "cache disabled";
        }
        match target {
            // A tree bump: the scope itself and everything below it.
            PurgeTarget::Scope(s) => {
                let p = self.invalidation.bump_tree(s);
                self.publish(fleet::Bump::Tree(s.clone()), p);
                "scope invalidated"
            }
            PurgeTarget::Url(u) => {
                let p = self.invalidation.bump_url(u);
                self.publish(fleet::Bump::Url(u.clone()), p);
                "url invalidated"
            }
        }
    }
}
