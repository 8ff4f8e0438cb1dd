//! Per-key rate limiting (GCRA). The gateway asks one question per counted request —
//! [`RateLimiter::check`] — and gets a [`Decision`] with everything it needs to answer: allowed
//! or not, and the IETF `RateLimit-Policy` / `RateLimit` / `Retry-After` header values.
//!
//! - [`gcra`]: the algorithm, pure, with a controllable clock.
//! - [`local`]: in-process state in up to 64 `Mutex<HashMap>` shards (bounded by `max_keys`; a
//!   subject whose state equals a fresh one's is swept).
//! - [`redis`]: the same algorithm as one Lua script in Redis, for fleet-wide limits.
//! - [`tiers`]: key id → tier (rate, burst); IP subjects and unlisted keys get `"default"`.
//! - [`headers`]: the header values.
//!
//! # Headers (draft-ietf-httpapi-ratelimit-headers, -08 onward; Structured Fields)
//!
//! ```text
//! RateLimit-Policy: "default";q=100;w=2   q = burst, w = burst/rate in seconds (rounded up, ≥ 1)
//! RateLimit: "default";r=57;t=1           r = remaining now, t = seconds until the full quota
//!                                         is back (rounded up)
//! Retry-After: 1                          only when the request is refused (429): seconds until
//!                                         one request would pass, rounded up, ≥ 1
//! ```
//!
//! In shadow mode a request over the limit is counted (`shadow_limited`) and reported as
//! `limited` with `retry_after` set, but `allowed` stays true and no `Retry-After` is emitted
//! (the response is not a refusal). When rate limiting is disabled, `check` allows everything and
//! [`Decision::headers`] is empty.
//!
//! # Redis failures
//!
//! With `backend = "redis"`, a Redis error or timeout (every call is bounded by `redis.timeout`)
//! hands the decision to `redis.on_error`: `local` (the in-process limiter decides), `allow` or
//! `deny`. `raster_edge_ratelimit_fallback_active` is 1 from the first failure to the next
//! success, each fallback decision increments `raster_edge_ratelimit_fallbacks_total{policy}`,
//! and every actual Redis error `raster_edge_redis_errors_total{op,kind}`.

pub mod gcra;
pub mod headers;
pub mod local;
pub mod redis;
pub mod tiers;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use crate::config::{Backend, Mode, OnError, RateLimitSettings, RedisSettings};
use crate::edge::KeyId;
use crate::metrics::METRICS;

use self::gcra::{Clock, MonotonicClock, Outcome, Quota};
use self::local::LocalStore;
use self::redis::RedisBackend;
use self::tiers::{TierPolicy, Tiers};

/// What is being limited: an API key (by key id), or a client IP on anonymous routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    Key(KeyId),
    Ip(IpAddr),
}

impl Subject {
    /// The subject for a client address: an IPv4 address as it is (an IPv4-mapped IPv6
    /// address as the IPv4 one), an IPv6 address by its /64 prefix. One IPv6 client usually
    /// holds a whole /64 (RFC 6177 end-site assignments), so counting single addresses would
    /// let it take 2^64 fresh quotas by rotating the interface identifier.
    pub fn for_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Subject::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Subject::Ip(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Subject::Ip(IpAddr::V6(std::net::Ipv6Addr::from(prefix)))
                }
            },
        }
    }
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
    /// `quota == 0`: rate limiting is disabled (no headers).
    pub quota: u32,
    pub window: Duration,
    pub remaining: u32,
    /// Time until the quota is fully available again.
    pub reset: Duration,
    /// Set when limited: how long until one request would be admitted.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// Response headers for this decision (RateLimit-Policy, RateLimit, and Retry-After when
    /// the request is refused). Empty when rate limiting is disabled.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        if self.quota == 0 {
            return Vec::new();
        }
        let mut h = Vec::with_capacity(3);
        h.push((
            headers::RATELIMIT_POLICY,
            headers::policy(&self.tier, self.quota, self.window),
        ));
        h.push((
            headers::RATELIMIT,
            headers::ratelimit(&self.tier, self.remaining, self.reset),
        ));
        if !self.allowed {
            let wait = self.retry_after.unwrap_or(Duration::from_secs(1));
            h.push((headers::RETRY_AFTER, headers::retry_after(wait)));
        }
        h
    }
}

/// Library errors of the rate limiter's construction.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error(transparent)]
    Tier(#[from] tiers::TierError),
    #[error("redis.url: {0}")]
    Redis(#[from] redis::RedisLimitError),
}

struct FallbackCounters {
    local: IntCounter,
    allow: IntCounter,
    deny: IntCounter,
}

pub struct RateLimiter {
    settings: RateLimitSettings,
    tiers: Tiers,
    local: LocalStore,
    redis: Option<RedisBackend>,
    on_error: OnError,
    fallback_active: AtomicBool,
    fallbacks: FallbackCounters,
}

impl RateLimiter {
    /// Builds the limiter. Never connects or blocks: with the Redis backend the connection is
    /// made in the background on the first `check` (inside the runtime), and `check` falls back
    /// until it is up. Fails only on invalid settings (tier key ids, Redis URL).
    pub fn new(settings: &RateLimitSettings, redis: &RedisSettings) -> anyhow::Result<Self> {
        Ok(Self::with_clock(
            settings,
            redis,
            Arc::new(MonotonicClock::new()),
        )?)
    }

    /// Like [`RateLimiter::new`] with the in-process limiter reading `clock` (tests, benches).
    pub fn with_clock(
        settings: &RateLimitSettings,
        redis: &RedisSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RateLimitError> {
        let tiers = Tiers::new(settings)?;
        let backend = match settings.backend {
            Backend::Redis if settings.enabled => Some(RedisBackend::new(redis)?),
            _ => None,
        };
        let counter = |p: &str| METRICS.ratelimit_fallbacks.with_label_values(&[p]);
        Ok(RateLimiter {
            local: LocalStore::new(settings.max_keys, clock),
            settings: settings.clone(),
            tiers,
            redis: backend,
            on_error: redis.on_error,
            fallback_active: AtomicBool::new(false),
            fallbacks: FallbackCounters {
                local: counter("local"),
                allow: counter("allow"),
                deny: counter("deny"),
            },
        })
    }

    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    /// True from a Redis failure until the next Redis success (this limiter's own view of
    /// `raster_edge_ratelimit_fallback_active`).
    pub fn fallback_active(&self) -> bool {
        self.fallback_active.load(Ordering::Acquire)
    }

    /// With the Redis backend: connected and not backing off after a failure. Always false with
    /// the local backend.
    pub fn redis_connected(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| r.connected())
    }

    /// Subjects tracked by the in-process limiter (runs moka's pending maintenance first).
    pub fn tracked_keys(&self) -> u64 {
        self.local.tracked_keys()
    }

    /// One decision for a counted request.
    pub async fn check(&self, subject: Subject) -> Decision {
        let Some(redis) = &self.redis else {
            return self.check_local(subject);
        };
        let tier = self.tiers.select(&subject);
        match redis.check(&subject, &tier.quota_us).await {
            Ok(outcome) => {
                self.set_fallback(false);
                self.decide(tier, &tier.quota_us, outcome)
            }
            Err(_) => {
                self.set_fallback(true);
                self.fallback(&subject, tier)
            }
        }
    }

    /// One decision by the in-process limiter only (what `check` does with `backend = "local"`;
    /// synchronous, no allocation).
    pub fn check_local(&self, subject: Subject) -> Decision {
        if !self.settings.enabled {
            return self.unlimited();
        }
        let tier = self.tiers.select(&subject);
        let outcome = self.local.check(&subject, tier);
        self.decide(tier, &tier.quota, outcome)
    }

    fn fallback(&self, subject: &Subject, tier: &Arc<TierPolicy>) -> Decision {
        match self.on_error {
            OnError::Local => {
                self.fallbacks.local.inc();
                let outcome = self.local.check(subject, tier);
                self.decide(tier, &tier.quota, outcome)
            }
            OnError::Allow => {
                self.fallbacks.allow.inc();
                let q = &tier.quota;
                let outcome = Outcome {
                    allowed: true,
                    remaining: q.burst,
                    reset: 0,
                    retry_after: 0,
                };
                self.decide(tier, q, outcome)
            }
            OnError::Deny => {
                self.fallbacks.deny.inc();
                let q = &tier.quota;
                // Retry once the backoff is over (at least the header's one second).
                let wait = 1_000_000_000 / q.unit_ns;
                let outcome = Outcome {
                    allowed: false,
                    remaining: 0,
                    reset: wait.max(q.tolerance),
                    retry_after: wait,
                };
                self.decide(tier, q, outcome)
            }
        }
    }

    fn set_fallback(&self, active: bool) {
        if self.fallback_active.load(Ordering::Relaxed) != active
            && self.fallback_active.swap(active, Ordering::AcqRel) != active
        {
            METRICS.ratelimit_fallback_active.set(i64::from(active));
            if active {
                tracing::warn!("redis rate limiting unavailable; fallback policy decides");
            } else {
                tracing::info!("redis rate limiting recovered");
            }
        }
    }

    /// Turns an outcome into a decision: applies the mode and counts it.
    #[inline]
    fn decide(&self, tier: &Arc<TierPolicy>, q: &Quota, o: Outcome) -> Decision {
        let shadow = self.settings.mode == Mode::Shadow;
        let allowed = o.allowed || shadow;
        if o.allowed {
            tier.allowed.inc();
        } else if shadow {
            tier.shadow_limited.inc();
        } else {
            tier.limited.inc();
        }
        Decision {
            allowed,
            limited: !o.allowed,
            tier: tier.name.clone(),
            quota: tier.quota.burst,
            window: tier.quota.window(),
            remaining: o.remaining,
            reset: q.ticks_to_duration(o.reset),
            retry_after: (!o.allowed).then(|| q.ticks_to_duration(o.retry_after)),
        }
    }

    fn unlimited(&self) -> Decision {
        Decision {
            allowed: true,
            limited: false,
            tier: self.tiers.default_tier().name.clone(),
            quota: 0,
            window: Duration::ZERO,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gcra::ManualClock;
    use super::*;
    use crate::config::{Count, Tier};
    use std::net::Ipv4Addr;

    pub(crate) fn settings(
        rate: f64,
        burst: u32,
        mode: Mode,
        tiers: Vec<Tier>,
    ) -> RateLimitSettings {
        RateLimitSettings {
            enabled: true,
            rate,
            burst,
            backend: Backend::Local,
            count: Count::All,
            mode,
            max_keys: 10_000,
            tiers,
        }
    }

    pub(crate) fn redis_settings() -> RedisSettings {
        RedisSettings {
            url: "redis://127.0.0.1:1".into(),
            timeout: Duration::from_millis(50),
            on_error: OnError::Local,
            key_prefix: "test".into(),
            invalidation: false,
        }
    }

    fn limiter(s: &RateLimitSettings) -> (RateLimiter, Arc<ManualClock>) {
        let clock = ManualClock::new();
        let rl = RateLimiter::with_clock(s, &redis_settings(), clock.clone()).unwrap();
        (rl, clock)
    }

    fn metric(result: &str, tier: &str) -> u64 {
        METRICS
            .ratelimit_decisions
            .with_label_values(&[result, tier])
            .get()
    }

    #[tokio::test]
    async fn enforce_burst_refill_and_headers() {
        let (rl, clock) = limiter(&settings(50.0, 100, Mode::Enforce, vec![]));
        let who = Subject::Key(KeyId([7; 16]));
        let before = metric("limited", "default");
        for i in 0..100u32 {
            let d = rl.check(who).await;
            assert!(d.allowed && !d.limited, "request {i}");
            assert_eq!(d.remaining, 99 - i);
        }
        let d = rl.check(who).await;
        assert!(!d.allowed && d.limited);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset, Duration::from_secs(2));
        assert_eq!(d.retry_after, Some(Duration::from_millis(20)));
        assert_eq!(
            d.headers(),
            vec![
                ("RateLimit-Policy", "\"default\";q=100;w=2".to_string()),
                ("RateLimit", "\"default\";r=0;t=2".to_string()),
                ("Retry-After", "1".to_string()),
            ]
        );
        assert!(metric("limited", "default") > before);
        // 860ms later: 43 intervals of 20ms refilled; one used now.
        clock.advance(Duration::from_millis(860));
        let d = rl.check(who).await;
        assert!(d.allowed);
        assert_eq!(d.remaining, 42);
        assert_eq!(d.reset, Duration::from_millis(1_160));
        assert_eq!(
            d.headers(),
            vec![
                ("RateLimit-Policy", "\"default\";q=100;w=2".to_string()),
                ("RateLimit", "\"default\";r=42;t=2".to_string()),
            ]
        );
        // Another subject is unaffected.
        let ip = Subject::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(rl.check(ip).await.remaining, 99);
    }

    #[tokio::test]
    async fn shadow_mode_counts_but_allows() {
        let tier = Tier {
            name: "shadow-test".into(),
            rate: 1.0,
            burst: 2,
            key_ids: vec!["5555555555555555".into()],
        };
        let (rl, _clock) = limiter(&settings(1.0, 2, Mode::Shadow, vec![tier]));
        let who = Subject::Key(KeyId([0x55; 16]));
        let before = metric("shadow_limited", "shadow-test");
        let limited_before = metric("limited", "shadow-test");
        for _ in 0..2 {
            assert!(!rl.check(who).await.limited);
        }
        let d = rl.check(who).await;
        assert!(d.allowed && d.limited);
        assert_eq!(&*d.tier, "shadow-test");
        assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
        // Informational headers only: nothing is refused.
        let h = d.headers();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].1, "\"shadow-test\";r=0;t=2");
        assert_eq!(metric("shadow_limited", "shadow-test"), before + 1);
        assert_eq!(metric("limited", "shadow-test"), limited_before);
    }

    #[tokio::test]
    async fn tiers_apply_per_key() {
        let gold = Tier {
            name: "gold".into(),
            rate: 1.0,
            burst: 5,
            key_ids: vec!["0101010101010101".repeat(2)],
        };
        let (rl, _clock) = limiter(&settings(1.0, 1, Mode::Enforce, vec![gold]));
        let g = Subject::Key(KeyId([1; 16]));
        let other = Subject::Key(KeyId([2; 16]));
        let d = rl.check(g).await;
        assert_eq!((&*d.tier, d.quota, d.remaining), ("gold", 5, 4));
        let d = rl.check(other).await;
        assert_eq!((&*d.tier, d.quota, d.remaining), ("default", 1, 0));
        assert!(!rl.check(other).await.allowed);
        assert!(rl.check(g).await.allowed);
    }

    #[tokio::test]
    async fn disabled_allows_without_headers() {
        let mut s = settings(1.0, 1, Mode::Enforce, vec![]);
        s.enabled = false;
        let (rl, _clock) = limiter(&s);
        let who = Subject::Key(KeyId([3; 16]));
        for _ in 0..10 {
            let d = rl.check(who).await;
            assert!(d.allowed && !d.limited);
            assert!(d.headers().is_empty());
        }
    }

    #[test]
    fn new_does_not_need_a_runtime_or_redis() {
        let mut s = settings(1.0, 1, Mode::Enforce, vec![]);
        s.backend = Backend::Redis;
        // No runtime, nothing listening at the URL: still fine.
        let rl = RateLimiter::new(&s, &redis_settings()).unwrap();
        assert!(!rl.fallback_active());
        let mut bad = redis_settings();
        bad.url = "not a url".into();
        assert!(RateLimiter::new(&s, &bad).is_err());
    }

    #[tokio::test]
    async fn redis_down_falls_back_quickly() {
        let mut s = settings(1.0, 1, Mode::Enforce, vec![]);
        s.backend = Backend::Redis;
        let (rl, _clock) = limiter(&s);
        let who = Subject::Key(KeyId([4; 16]));
        let t = std::time::Instant::now();
        let d = rl.check(who).await;
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert!(d.allowed);
        assert!(rl.fallback_active());
        // The local fallback limits.
        assert!(!rl.check(who).await.allowed);
    }
}

#[cfg(test)]
mod subject_tests {
    use super::Subject;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_prefix() {
        let a = Subject::for_ip(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"));
        let b = Subject::for_ip(ip("2001:db8:1:2::1"));
        let other = Subject::for_ip(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a, Subject::Ip(ip("2001:db8:1:2::")));
    }

    #[test]
    fn ipv4_and_mapped_ipv4_are_one_subject_per_address() {
        assert_eq!(
            Subject::for_ip(ip("::ffff:192.0.2.7")),
            Subject::for_ip(ip("192.0.2.7"))
        );
        assert_ne!(
            Subject::for_ip(ip("192.0.2.7")),
            Subject::for_ip(ip("192.0.2.8"))
        );
    }
}
