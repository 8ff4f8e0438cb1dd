//! The HTTP cache: pingora-cache's state machine on a moka store, partitioned per key id,
//! RFC 9111 policy, fresh-hit fast path, scope invalidation on writes, admin purge.
//!
//! The gateway ([`crate::gateway`]) delegates every cache hook to [`Cache`]; this module owns
//! what those hooks decide. Until the cache issue lands, every request is a `BYPASS`.

use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use crate::config::{CacheSettings, UpstreamSettings};
use crate::gateway::RequestCtx;

/// What the cache did for one request, as `X-Cache` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheStatus {
    /// Not a cacheable request (or the cache is off).
    #[default]
    Bypass,
    Hit,
    Miss,
    Stale,
    Revalidated,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
        }
    }
}

/// Per-request cache state, kept in the gateway's [`RequestCtx`].
#[derive(Debug, Default)]
pub struct CacheCtx {
    pub status: CacheStatus,
}

pub struct Cache {
    settings: CacheSettings,
}

impl Cache {
    pub fn new(settings: &CacheSettings, _upstream: &UpstreamSettings) -> anyhow::Result<Self> {
        Ok(Self {
            settings: settings.clone(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Answers a fresh hit straight from the store. `Ok(true)` when the response was written.
    pub async fn serve_fresh_hit(
        &'static self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        Ok(false)
    }

    pub fn request_cache_filter(
        &'static self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        Ok(())
    }

    pub fn cache_key(
        &self,
        _session: &Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<CacheKey> {
        pingora::Error::e_explain(
            pingora::ErrorType::InternalError,
            "cache key requested while the cache is off",
        )
    }

    pub fn response_cache_filter(
        &self,
        _session: &Session,
        _resp: &ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<RespCacheable> {
        Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled))
    }

    pub fn cache_vary_filter(
        &self,
        _meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        _req: &RequestHeader,
    ) -> Option<HashBinary> {
        None
    }

    pub fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        _error: Option<&pingora::Error>,
    ) -> bool {
        false
    }

    /// Response headers for what the cache did (X-Cache, Cache-Status, Age).
    pub fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        resp.insert_header("x-cache", ctx.cache.status.as_str())?;
        Ok(())
    }

    /// Called with the response header of a write before it goes downstream: a successful
    /// write invalidates the scopes it touched.
    pub fn after_write(&self, _req: &RequestHeader, _resp: &ResponseHeader, _ctx: &mut RequestCtx) {
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
    pub fn purge(&self, _target: &PurgeTarget) -> &'static str {
        "cache disabled"
    }
}
