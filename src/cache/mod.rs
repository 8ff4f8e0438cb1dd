//! The HTTP cache: pingora-cache's state machine on a moka store, partitioned per key id,
//! RFC 9111 policy, fresh-hit fast path, scope invalidation on writes, admin purge.
//!
//! The gateway ([`crate::gateway`]) delegates every cache hook to [`Cache`]; this module owns
//! what those hooks decide:
//! - [`storage`]: `pingora_cache::Storage` on moka (hit/miss handlers), the uncacheable-key
//!   predictor;
//! - [`key`]: primary key framing and `Vary` variance;
//! - [`policy`]: what may be stored and for how long;
//! - [`status`]: `X-Cache`, `Cache-Status`, the lookup metric;
//! - [`invalidation`]: scope / tree / URL generations, write rules, purge;
//! - [`fast_path`]: fresh hits answered in `request_filter` from the same store.
//!
//! What we do at our layer because pingora-cache falls short (and why):
//! - `should_serve_stale(None)` returns true: the default never serves stale-while-revalidate
//!   (pitfall 1).
//! - Our own policy instead of `filters::resp_cacheable`: per-key mode must store `private`
//!   and authorized responses, and stale-if-error must not be applied to every response
//!   (pitfalls 2, 3).
//! - The meta stays in memory in the moka value, not serialized (pitfall 4).
//! - The lock age timeout is at least the upstream connect + read timeout (pitfall 5).
//! - Stored headers get an exact `Content-Length` at `finish`, and a finish whose body does not
//!   match the declared length stores nothing: pingora can finish a miss for a body cut short.
//! - Uncacheable keys are remembered in a moka set with a TTL (`uncacheable_ttl`) through
//!   pingora's `CacheablePredictor`, whose stock implementation is an LRU without expiry.

pub mod fast_path;
pub mod fleet;
pub mod invalidation;
pub mod key;
pub mod policy;
pub mod status;
pub mod storage;

use std::time::{Duration, SystemTime};

use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, HitHandler,
    NoCacheReason, RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use crate::config::{CacheSettings, Share, UpstreamSettings};
use crate::gateway::RequestCtx;
use crate::metrics::METRICS;

pub use invalidation::Invalidation;
use key::Partition;
pub use status::{CacheStatus, Outcome};
pub use storage::MokaStorage;
use storage::UncacheableKeys;

/// Per-request cache state, kept in the gateway's [`RequestCtx`].
#[derive(Debug, Default)]
pub struct CacheCtx {
    /// What `X-Cache` said (the access log and request metrics read it).
    pub status: CacheStatus,
    /// Why the request is not cacheable, when it is not.
    bypass: Option<&'static str>,
    /// The primary key bytes, computed once per request.
    primary: Option<Vec<u8>>,
    partition: Option<Partition>,
    /// Index of the matching `cache.routes` rule.
    route: Option<usize>,
    /// The client asked for revalidation and `honor_client_no_cache` allows it.
    force_revalidate: bool,
    /// A lookup ran (hit filter or miss).
    looked_up: bool,
    /// This request waited on another request's fetch.
    collapsed: bool,
    /// The policy's decision on the upstream response.
    store_decision: Option<Result<(), &'static str>>,
}

pub struct Cache {
    settings: CacheSettings,
    authority: String,
    storage: &'static MokaStorage,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static UncacheableKeys,
    invalidation: Invalidation,
    lock_wait: Duration,
    /// `cache.fast_path`: answer fresh hits in `request_filter`.
    fast_path: bool,
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
        // Pitfall 5: a writer holding the lock longer than the age timeout lets waiters
        // stampede the origin, so the age timeout covers the slowest allowed origin response.
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
            lock_wait: settings.lock_timeout,
            fast_path: settings.fast_path,
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
            .with_label_values(&["fleet"])
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

    /// Decides whether the request is cacheable and computes its key, once. Runs first thing
    /// in the cache's part of `request_filter` (before the fast path).
    fn prepare(&self, session: &Session, ctx: &mut RequestCtx, pinned_version: Option<&str>) {
        if ctx.cache.primary.is_some() || ctx.cache.bypass.is_some() {
            return;
        }
        if !self.settings.enabled {
            ctx.cache.bypass = Some("disabled");
            return;
        }
        let req = session.req_header();
        if let Err(reason) = policy::request_cacheable(req) {
            ctx.cache.bypass = Some(reason);
            return;
        }
        let Some(admitted) = ctx.admitted else {
            ctx.cache.bypass = Some("unadmitted");
            return;
        };
        let partition = match (self.settings.share, admitted.principal) {
            (Share::Shared, _) => Partition::Shared,
            (Share::PerKey, crate::edge::Principal::Key(id)) => Partition::Key(id),
            (Share::PerKey, crate::edge::Principal::Anonymous) => Partition::Anonymous,
        };
        // The effective version: the client's, or the sidecar's pinned one it will get.
        let version: &[u8] = match req.headers.get("api-version") {
            Some(v) if !admitted.inject_version => v.as_bytes(),
            _ => pinned_version.map(str::as_bytes).unwrap_or_default(),
        };
        let path = req.uri.path();
        let pq = req.uri.path_and_query().map_or(path, |p| p.as_str());
        let mut generations = Vec::with_capacity(8);
        self.invalidation.generations(path, pq, &mut generations);
        ctx.cache.primary = Some(key::primary(&key::KeyParts {
            authority: &self.authority,
            path_and_query: pq,
            api_version: version,
            partition,
            generations: &generations,
        }));
        ctx.cache.partition = Some(partition);
        // The gateway's route lookup runs on the same `cache.routes` table, in order.
        ctx.cache.route = ctx.route_index;
        ctx.cache.force_revalidate =
            self.settings.honor_client_no_cache && policy::client_wants_revalidation(req);
    }

    /// Answers a fresh hit straight from the store. `Ok(true)` when the response was written.
    pub async fn serve_fresh_hit(
        &'static self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        pinned_version: Option<&str>,
    ) -> pingora::Result<bool> {
        self.prepare(session, ctx, pinned_version);
        if !self.fast_path {
            return Ok(false);
        }
        fast_path::serve(self, session, ctx).await
    }

    pub fn request_cache_filter(
        &'static self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if ctx.cache.bypass.is_some() || ctx.cache.primary.is_none() {
            return Ok(());
        }
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.lock_wait);
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
        session
            .cache
            .set_max_file_size_bytes(self.settings.max_object_size);
        Ok(())
    }

    pub fn cache_key(&self, _session: &Session, ctx: &mut RequestCtx) -> pingora::Result<CacheKey> {
        match &ctx.cache.primary {
            Some(p) => Ok(CacheKey::new(p.clone(), "")),
            None => pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "cache key requested for a request that is not cacheable",
            ),
        }
    }

    pub fn cache_hit_filter(
        &self,
        session: &Session,
        _meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        _is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<ForcedFreshness>> {
        ctx.cache.looked_up = true;
        ctx.cache.status = CacheStatus::Hit;
        if session.cache.lock_duration().is_some() {
            ctx.cache.collapsed = true;
        }
        if ctx.cache.force_revalidate {
            // Client no-cache, allowed by config: validate with the origin before use.
            return Ok(Some(ForcedFreshness::ForceExpired));
        }
        Ok(None)
    }

    pub fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        session.cache.cache_miss();
        ctx.cache.looked_up = true;
        ctx.cache.status = CacheStatus::Miss;
    }

    pub fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<RespCacheable> {
        let route = ctx.cache.route.and_then(|i| self.settings.routes.get(i));
        let now = SystemTime::now();
        match policy::decide(&self.settings, route, session.req_header(), resp, now) {
            Ok(f) => {
                ctx.cache.store_decision = Some(Ok(()));
                let fresh_until = if f.fresh.is_zero() {
                    // Stored only to be revalidated: stale from the start.
                    now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
                } else {
                    now + f.fresh
                };
                let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
                let mut header = resp.clone();
                header.remove_header(&http::header::CONNECTION);
                Ok(RespCacheable::Cacheable(CacheMeta::new(
                    fresh_until,
                    now,
                    secs(f.stale_while_revalidate),
                    secs(f.stale_if_error),
                    header,
                )))
            }
            Err(reason) => {
                ctx.cache.store_decision = Some(Err(reason));
                METRICS
                    .cache_store_rejections
                    .with_label_values(&[reason])
                    .inc();
                Ok(RespCacheable::Uncacheable(NoCacheReason::Custom(reason)))
            }
        }
    }

    pub fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let partition = ctx.cache.partition.unwrap_or(Partition::Shared);
        key::variance(meta.response_header(), req, partition)
    }

    pub fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&pingora::Error>,
    ) -> bool {
        match error {
            // Pitfall 1: stale-while-revalidate. pingora only asks within the entry's window.
            None => true,
            // stale-if-error: the origin failed (connect error, timeout, 5xx); pingora only
            // asks within the entry's window.
            Some(e) => {
                e.esource() == &pingora::ErrorSource::Upstream
                    || matches!(e.etype(), pingora::ErrorType::HTTPStatus(s) if *s >= 500)
            }
        }
    }

    /// What happened to this request, from pingora-cache's phase and our own notes.
    fn outcome(&self, session: &Session, ctx: &RequestCtx) -> Outcome {
        let now = SystemTime::now();
        let ttl = |m: &CacheMeta| match m.fresh_until().duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        let meta = session.cache.maybe_cache_meta();
        let fwd_status = ctx.upstream_status;
        let stored = matches!(ctx.cache.store_decision, Some(Ok(())));
        let detail = match ctx.cache.store_decision {
            Some(Err(r)) => Some(r),
            _ => None,
        };
        match session.cache.phase() {
            CachePhase::Hit => Outcome::Hit {
                ttl: meta.map_or(0, ttl),
                collapsed: ctx.cache.collapsed,
            },
            CachePhase::StaleUpdating => Outcome::Stale {
                ttl: meta.map_or(0, ttl),
                detail: "stale-while-revalidate",
                fwd_status: None,
            },
            CachePhase::Stale => Outcome::Stale {
                ttl: meta.map_or(0, ttl),
                detail: "stale-if-error",
                fwd_status,
            },
            CachePhase::Revalidated => Outcome::Revalidated {
                ttl: meta.map_or(0, ttl),
                stored: true,
            },
            CachePhase::RevalidatedNoCache(_) => Outcome::Revalidated {
                ttl: meta.map_or(0, ttl),
                stored: false,
            },
            CachePhase::Miss => Outcome::Miss {
                stale: false,
                fwd_status,
                stored,
                detail,
            },
            CachePhase::Expired => Outcome::Miss {
                stale: true,
                fwd_status,
                stored,
                detail,
            },
            CachePhase::Disabled(reason) if ctx.cache.looked_up => Outcome::Miss {
                stale: false,
                fwd_status,
                stored: false,
                detail: detail.or(Some(disabled_detail(reason))),
            },
            CachePhase::Disabled(_) | CachePhase::Bypass if ctx.cache.primary.is_some() => {
                Outcome::Bypass {
                    detail: "uncacheable",
                }
            }
            _ => Outcome::Bypass {
                detail: ctx.cache.bypass.unwrap_or("disabled"),
            },
        }
    }

    /// Adds `X-Cache`, `Cache-Status` (and `Age` when served from the store) and records the
    /// lookup. Shared by the state machine and the fast path.
    fn finish_headers(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        outcome: &Outcome,
        age: Option<u64>,
    ) -> pingora::Result<()> {
        let status = outcome.status();
        ctx.cache.status = status;
        resp.insert_header("x-cache", status.as_str())?;
        resp.insert_header("cache-status", outcome.cache_status())?;
        if let Some(age) = age {
            resp.insert_header(http::header::AGE, age.to_string())?;
        }
        METRICS
            .cache_lookups
            .with_label_values(&[outcome.metric(), ctx.route])
            .inc();
        Ok(())
    }

    /// Response headers for what the cache did (X-Cache, Cache-Status, Age).
    pub fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if ctx.subrequest {
            // A background refresh: nobody sees this response, and the client request that
            // spawned it was already counted.
            return Ok(());
        }
        let outcome = self.outcome(session, ctx);
        if let CachePhase::Disabled(NoCacheReason::ResponseTooLarge) = session.cache.phase() {
            METRICS
                .cache_store_rejections
                .with_label_values(&["too-large"])
                .inc();
        }
        let age = match outcome {
            Outcome::Hit { .. } | Outcome::Stale { .. } | Outcome::Revalidated { .. } => {
                session.cache.maybe_cache_meta().map(|m| m.age().as_secs())
            }
            _ => None,
        };
        self.finish_headers(resp, ctx, &outcome, age)
    }

    /// Called with the response header of a write before it goes downstream: a successful
    /// write invalidates the scopes it touched.
    pub fn after_write(&self, req: &RequestHeader, resp: &ResponseHeader, ctx: &mut RequestCtx) {
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
        let bumped = self.invalidation.on_write(
            &req.method,
            path,
            pq,
            ctx.write_body.as_deref(),
            &locations,
        );
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

fn disabled_detail(reason: NoCacheReason) -> &'static str {
    match reason {
        NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => "too-large",
        NoCacheReason::CacheLockGiveUp => "lock-released",
        NoCacheReason::CacheLockTimeout => "lock-timeout",
        NoCacheReason::Custom(r) => r,
        _ => "uncacheable",
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
