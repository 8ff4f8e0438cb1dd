//! The cache's per-request state as a type, in the spirit of pingora-cache's own `CachePhase`
//! and `NoCacheReason`: a request is either not the cache's business ([`CacheCtx::Bypass`],
//! with the reason) or [`CacheCtx::Prepared`] with everything every later hook needs (the key,
//! the partition, the route rule), computed once by [`super::Cache::prepare`]. A hook that finds
//! a request unprepared has nothing to do, by construction rather than by convention.
//!
//! The reasons are enums whose `as_str()` is the `Cache-Status` detail and the metric label
//! value, so no code compares reason strings.

use std::time::Duration;

use pingora::http::ResponseHeader;

use super::key::Partition;

/// Why a request does not use the cache at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
    /// `cache.enabled = false`.
    Disabled,
    /// Not GET or HEAD.
    Method,
    /// A `Range` request: passed through untouched.
    Range,
    /// Answered before the cache step (edge refusal, rate limit, reserved path).
    Unadmitted,
}

impl BypassReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Method => "method",
            Self::Range => "range",
            Self::Unadmitted => "unadmitted",
        }
    }
}

pub use crate::metrics::NoStoreReason;

impl NoStoreReason {
    /// The reason behind a `NoCacheReason::Custom` this gateway produced.
    pub fn from_custom(label: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == label)
    }

    /// Whether the key should skip the cache lock for a while (`cache.uncacheable_ttl`): a
    /// response that will be refused again next time. An origin error says nothing about the
    /// next response, so it is not remembered.
    pub fn predicts_next(self) -> bool {
        !matches!(
            self,
            Self::UpstreamError
                | Self::LockReleased
                | Self::LockTimeout
                | Self::Truncated
                | Self::Head
        )
    }
}

/// The two kinds of stale serving (RFC 5861).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleKind {
    /// Served stale while one background request refreshes it.
    WhileRevalidate,
    /// Served stale because the origin failed.
    IfError,
}

impl StaleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WhileRevalidate => "stale-while-revalidate",
            Self::IfError => "stale-if-error",
        }
    }
}

/// What the lookup found, once it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lookup {
    #[default]
    NotYet,
    /// An entry was found; `collapsed` when it was stored by the fetch this request waited on.
    Hit {
        collapsed: bool,
    },
    Miss,
}

/// The policy's verdict on the upstream response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDecision {
    Store,
    Refuse(NoStoreReason),
}

/// A cacheable request, with everything the later hooks need.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The primary key bytes (pingora-cache hashes them into the storage key).
    pub key: Vec<u8>,
    pub partition: Partition,
    /// Index of the matching `cache.routes` rule.
    pub route: Option<usize>,
    /// The client asked for revalidation and `honor_client_no_cache` allows it.
    pub force_revalidate: bool,
    pub lookup: Lookup,
    pub store: Option<StoreDecision>,
    /// The origin's 304, kept from `upstream_response_filter` until the revalidated header is
    /// built (pingora-cache merges only a few of its fields).
    pub revalidation: Option<Box<ResponseHeader>>,
    /// Time the request spent upstream (RFC 9111 §4.2.3 `response_delay`).
    pub upstream_delay: Duration,
    /// Fields the policy keeps out of storage (`no-cache="…"`, `private="…"`), as the origin
    /// sent them. pingora-proxy serves a miss from the stored header (streaming fills), so the
    /// request that fetched the response gets them back in `response_filter`.
    pub withheld: Vec<(String, http::HeaderValue)>,
}

/// The cache's state for one request.
#[derive(Debug, Clone)]
pub enum CacheCtx {
    Bypass(BypassReason),
    Prepared(Prepared),
}

impl Default for CacheCtx {
    fn default() -> Self {
        Self::Bypass(BypassReason::Unadmitted)
    }
}

impl CacheCtx {
    pub fn prepared(&self) -> Option<&Prepared> {
        match self {
            Self::Prepared(p) => Some(p),
            Self::Bypass(_) => None,
        }
    }

    pub fn prepared_mut(&mut self) -> Option<&mut Prepared> {
        match self {
            Self::Prepared(p) => Some(p),
            Self::Bypass(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_no_store_reason_round_trips_through_its_label() {
        for &r in NoStoreReason::ALL {
            assert_eq!(NoStoreReason::from_custom(r.as_str()), Some(r));
        }
        assert_eq!(NoStoreReason::from_custom("304 on miss"), None);
    }
}
