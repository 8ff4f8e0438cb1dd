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

pub mod directives;
pub mod entry;
pub mod fast_path;
pub mod fill;
pub mod fleet;
pub mod invalidation;
pub mod key;
pub mod phase;
pub mod policy;
pub mod predictor;
pub mod status;
pub mod storage;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, NoCacheReason,
    RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use crate::config::{CacheSettings, Share, UpstreamSettings};
use crate::edge::{Admitted, Principal};
use crate::metrics::{InvalidationReason, METRICS};

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

pub struct Cache {
    settings: CacheSettings,
    authority: String,
    storage: &'static MokaStorage,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static UncacheableKeys,
    invalidation: Invalidation,
    /// Publishes local invalidations to the fleet (`redis.invalidation`).
    fleet: Option<fleet::Publisher>,
}

impl Cache {
    pub fn new(settings: &CacheSettings, upstream: &UpstreamSettings) -> anyhow::Result<Self> {
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
            invalidation: Invalidation::new(&settings.invalidation)?,
            fleet: None,
        })
    }

    /// Publishes every invalidation this instance makes to the fleet from now on.
    pub fn set_fleet(&mut self, publisher: fleet::Publisher) {
        self.fleet = Some(publisher);
    }

    fn publish(&self, bump: fleet::Bump) {
        if let Some(f) = &self.fleet {
            f.publish(bump);
        }
    }

    /// Applies an invalidation another instance made.
    pub fn apply_fleet_bump(&self, bump: &fleet::Bump) {
        match bump {
            fleet::Bump::Scope(s) => self.invalidation.bump_scope(s),
            fleet::Bump::Tree(t) => self.invalidation.bump_tree(t),
            fleet::Bump::Url(u) => self.invalidation.bump_url(u),
        }
        METRICS
            .cache_invalidations
            .with_label_values(&[InvalidationReason::Fleet.as_str()])
            .inc();
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

    /// Step 1 (in `request_filter`, once the edge admitted the request): is this request the
    /// cache's business, and under which key? The effective `Api-Version` is the client's, or
    /// the sidecar's pinned one it will be given.
    pub fn prepare(
        &self,
        req: &RequestHeader,
        admitted: Admitted,
        route: Option<usize>,
        pinned_version: Option<&str>,
    ) -> CacheCtx {
        if !self.settings.enabled {
            return CacheCtx::Bypass(BypassReason::Disabled);
        }
        if let Err(reason) = policy::request_cacheable(req) {
            return CacheCtx::Bypass(reason);
        }
        let partition = match (self.settings.share, admitted.principal) {
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
        let mut generations = Vec::with_capacity(8);
        self.invalidation.generations(path, pq, &mut generations);
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
            force_revalidate: self.settings.honor_client_no_cache
                && policy::client_wants_revalidation(req),
            lookup: Lookup::NotYet,
            store: None,
            revalidation: None,
            upstream_delay: Duration::ZERO,
            withheld: Vec::new(),
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
        ctx: &CacheCtx,
    ) -> pingora::Result<()> {
        if ctx.prepared().is_none() {
            return Ok(());
        }
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.settings.lock_timeout);
        // A HEAD miss is never stored (pingora-cache fills only from GET 200), yet with the lock
        // it would take the key's write permit and drop it unfinished ("Dangling cache lock").
        let head = session.req_header().method == http::Method::HEAD;
        session.cache.enable(
            self.storage,
            None,
            Some(self.predictor),
            (!head).then_some(self.lock),
            Some(overrides),
        );
        // No `set_max_file_size_bytes`: pingora-proxy enforces it on a body without a length
        // by failing the request mid-body, which with the store's streamed fills would cut off
        // the client. A declared length over the limit is refused in `response_cache_filter`;
        // an undeclared one is streamed whole and not stored (`storage`, `fill`).
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

    pub fn cache_hit_filter(
        &self,
        session: &Session,
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
        Ok(None)
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
    pub fn upstream_request(&self, downstream: &RequestHeader, req: &mut RequestHeader) {
        if downstream.method == http::Method::HEAD && req.method == http::Method::GET {
            req.set_method(http::Method::HEAD);
        }
    }

    /// In `upstream_response_filter`: remembers how long the origin took, and keeps a 304 so
    /// the revalidated header can take every field it carries.
    pub fn upstream_response(&self, resp: &ResponseHeader, took: Duration, ctx: &mut CacheCtx) {
        let Some(p) = ctx.prepared_mut() else { return };
        p.upstream_delay = took;
        if resp.status == http::StatusCode::NOT_MODIFIED {
            p.revalidation = Some(Box::new(resp.clone()));
        }
    }

    pub fn response_cache_filter(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        ctx: &mut CacheCtx,
    ) -> pingora::Result<RespCacheable> {
        let Some(p) = ctx.prepared_mut() else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        let merged;
        let resp = match p.revalidation.take() {
            Some(not_modified) => {
                merged = merge_not_modified(resp, &not_modified)?;
                &merged
            }
            // A HEAD response has no body to store for the GET (a 304 to a HEAD revalidation
            // does update the stored response, above).
            None if req.method == http::Method::HEAD => {
                return Ok(self.refuse(p, NoStoreReason::Head));
            }
            None => resp,
        };
        let route = p.route.and_then(|i| self.settings.routes.get(i));
        let now = SystemTime::now();
        let declared = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.settings.max_object_size as u64) {
            return Ok(self.refuse(p, NoStoreReason::TooLarge));
        }
        match policy::decide(&self.settings, route, req, resp, now) {
            Ok(f) => {
                p.store = Some(StoreDecision::Store);
                // RFC 9111 §4.2.3: corrected initial age = the origin's Age + response delay
                // (whole seconds, as Age counts). The origin's Date is not used for an
                // apparent age: its one-second resolution would age every response by up to
                // a second, and a skewed origin clock would age everything.
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
                for name in &f.strip {
                    for v in resp.headers.get_all(name.as_str()) {
                        p.withheld.push((name.clone(), v.clone()));
                    }
                    header.remove_header(name.as_str());
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
                Ok(RespCacheable::Cacheable(meta))
            }
            Err(reason) => Ok(self.refuse(p, reason)),
        }
    }

    fn refuse(&self, p: &mut Prepared, reason: NoStoreReason) -> RespCacheable {
        p.store = Some(StoreDecision::Refuse(reason));
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
        if let (Outcome::Miss { .. }, Some(p)) = (&outcome, ctx.prepared()) {
            // This request's own fetch: its client gets the origin's response whole (unless
            // it was served the origin's header itself, the cache having given up).
            let missing: Vec<bool> = p
                .withheld
                .iter()
                .map(|(name, _)| !resp.headers.contains_key(name.as_str()))
                .collect();
            for ((name, value), missing) in p.withheld.iter().zip(missing) {
                if missing {
                    resp.append_header(name.clone(), value.clone())?;
                }
            }
        }
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
    pub fn after_write(&self, req: &RequestHeader, resp: &ResponseHeader, body: Option<&[u8]>) {
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
        let bumped = self
            .invalidation
            .on_write(&req.method, path, pq, body, &locations);
        tracing::debug!(?bumped, "write invalidated");
        if self.fleet.is_some() {
            let invalidation::Bumped {
                scopes,
                trees,
                urls,
            } = bumped;
            scopes
                .into_iter()
                .for_each(|s| self.publish(fleet::Bump::Scope(s)));
            trees
                .into_iter()
                .for_each(|t| self.publish(fleet::Bump::Tree(t)));
            urls.into_iter()
                .for_each(|u| self.publish(fleet::Bump::Url(u)));
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
                self.invalidation.bump_tree(s);
                self.publish(fleet::Bump::Tree(s.clone()));
                "scope invalidated"
            }
            PurgeTarget::Url(u) => {
                self.invalidation.bump_url(u);
                self.publish(fleet::Bump::Url(u.clone()));
                "url invalidated"
            }
        }
    }
}
