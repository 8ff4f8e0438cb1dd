//! Per-key rate limiting (GCRA). The gateway asks one question per counted request —
//! [`RateLimiter::check`] — and gets a [`Decision`] with everything it needs to answer: allowed
//! or not, and the IETF `RateLimit-Policy` / `RateLimit` / `Retry-After` header values.
//!
//! Interface only for now: the implementation (local GCRA on moka, Redis Lua backend, tiers,
//! shadow mode, fallback) lands with the rate-limit issue.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{RateLimitSettings, RedisSettings};
use crate::edge::KeyId;

/// What is being limited: an API key (by key id), or a client IP on anonymous routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    Key(KeyId),
    Ip(IpAddr),
}

/// One rate-limit decision.
#[derive(Debug, Clone)]
pub struct Decision {
    /// False only when the request must be refused with 429 (enforce mode, over the limit).
    pub allowed: bool,
    /// Over the limit (in shadow mode `allowed` stays true).
    pub limited: bool,
    pub tier: Arc<str>,
    /// Quota (burst) and window (seconds to refill a full burst) for `RateLimit-Policy`.
    pub quota: u32,
    pub window: Duration,
    pub remaining: u32,
    /// Time until the quota is fully available again.
    pub reset: Duration,
    /// Set when limited: how long until one request would be admitted.
    pub retry_after: Option<Duration>,
}

pub struct RateLimiter {
    _settings: RateLimitSettings,
}

impl RateLimiter {
    pub fn new(settings: &RateLimitSettings, _redis: &RedisSettings) -> anyhow::Result<Self> {
        Ok(Self {
            _settings: settings.clone(),
        })
    }

    pub async fn check(&self, _subject: Subject) -> Decision {
        Decision {
            allowed: true,
            limited: false,
            tier: Arc::from("default"),
            quota: 0,
            window: Duration::ZERO,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: None,
        }
    }
}

impl Decision {
    /// Response headers for this decision (RateLimit-Policy, RateLimit, and Retry-After when
    /// limited).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}
