//! Fleet-wide limits: the same GCRA as [`super::gcra`], run atomically inside Redis by one Lua
//! script per decision (EVALSHA; the `redis` crate reloads the script on NOSCRIPT, e.g. after a
//! Redis restart).
//!
//! Key layout: `{prefix}:rl:{<key id, 32 hex>}` for API keys and `{prefix}:rl:ip:{<address>}` for
//! client IPs. The braces are a Redis Cluster hash tag, so a subject's key always lives on one
//! slot. The value is the subject's TAT in microseconds of Redis server time (`TIME`, read inside
//! the script, so gateways with skewed clocks agree); the key expires (`PX`) when the TAT is
//! reached, which is exactly when it stops mattering.
//!
//! Every call is bounded by `redis.timeout` (connection wait included). The connection is made
//! in the background on first use and kept by a `ConnectionManager`, which reconnects by
//! itself; after a failure Redis is skipped for a short, growing backoff (100 ms … 1 s) so an
//! outage does not cost every request a timeout.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use super::gcra::{Outcome, Quota};
use super::Subject;
use crate::config::RedisSettings;
use crate::metrics::{RedisErrorKind, RedisOp, METRICS};
use crate::redis_link::{Backoff, Connector, NoRuntime};

/// The GCRA step. KEYS[1] = subject key; ARGV[1] = emission interval, ARGV[2] = tolerance
/// (both µs). Returns `{allowed (0|1), TAT - now (µs)}` with the TAT after the decision.
pub const GCRA_LUA: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  local v = tonumber(stored)
  if v and v > now then tat = v end
end
local new_tat = tat + interval
if new_tat - tolerance > now then
  return {0, tat - now}
end
local ttl_ms = math.min(math.floor((new_tat - now) / 1000) + 1, 2592000000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl_ms))
return {1, new_tat - now}
"#;

#[derive(Debug, thiserror::Error)]
pub enum RedisLimitError {
    #[error("redis call timed out")]
    Timeout,
    #[error("redis skipped after a recent failure")]
    Backoff,
    #[error("not inside a tokio runtime")]
    NoRuntime,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from the rate-limit script")]
    BadReply,
}

impl RedisLimitError {
    /// `kind` label of `raster_edge_redis_errors_total` (a backoff is no Redis error and is
    /// never counted there).
    pub fn kind(&self) -> RedisErrorKind {
        match self {
            RedisLimitError::Timeout | RedisLimitError::Backoff => RedisErrorKind::Timeout,
            RedisLimitError::NoRuntime => RedisErrorKind::NoRuntime,
            RedisLimitError::BadReply => RedisErrorKind::BadReply,
            RedisLimitError::Redis(e) => RedisErrorKind::of(e),
        }
    }
}

pub struct RedisBackend {
    connector: Connector,
    script: Script,
    prefix: String,
    timeout: Duration,
    backoff: Backoff,
}

impl RedisBackend {
    /// Parses the URL; does not connect (that happens in the background on first use).
    pub fn new(settings: &RedisSettings) -> Result<RedisBackend, RedisLimitError> {
        let client = redis::Client::open(settings.url.as_str())?;
        let timeout = settings.timeout.max(Duration::from_millis(1));
        Ok(RedisBackend {
            connector: Connector::new(client, timeout, "rate limiting"),
            script: Script::new(GCRA_LUA),
            prefix: settings.key_prefix.clone(),
            timeout,
            backoff: Backoff::default(),
        })
    }

    /// The Redis key of a subject.
    pub fn key(&self, subject: &Subject) -> String {
        redis_key(&self.prefix, subject)
    }

    /// True once the connection is established and Redis is not being skipped after a failure.
    pub fn connected(&self) -> bool {
        self.connector.is_connected() && !self.in_backoff()
    }

    /// True while Redis is being skipped after a failure.
    pub fn in_backoff(&self) -> bool {
        self.backoff.active()
    }

    /// One decision for `subject` under `quota` (microsecond ticks). Errors are already counted
    /// in `raster_edge_redis_errors_total` (except [`RedisLimitError::Backoff`]).
    pub async fn check(
        &self,
        subject: &Subject,
        quota: &Quota,
    ) -> Result<Outcome, RedisLimitError> {
        if self.in_backoff() {
            return Err(RedisLimitError::Backoff);
        }
        let result = match tokio::time::timeout(self.timeout, self.call(subject, quota)).await {
            Ok(r) => r,
            Err(_) => Err(RedisLimitError::Timeout),
        };
        match &result {
            Ok(_) => self.backoff.succeeded(),
            Err(e) => {
                METRICS
                    .redis_errors
                    .with_label_values(&[RedisOp::RateLimit.as_str(), e.kind().as_str()])
                    .inc();
                let backoff = self.backoff.failed();
                tracing::debug!(error = %e, ?backoff, "redis rate limit failed; using the fallback");
            }
        }
        result
    }

    async fn call(&self, subject: &Subject, quota: &Quota) -> Result<Outcome, RedisLimitError> {
        let mut conn = self.connection().await?;
        let (allowed, ahead): (i64, i64) = self
            .script
            .key(self.key(subject))
            .arg(quota.interval)
            .arg(quota.tolerance)
            .invoke_async(&mut conn)
            .await?;
        let ahead = u64::try_from(ahead).map_err(|_| RedisLimitError::BadReply)?;
        Ok(Outcome::from_parts(quota, allowed == 1, ahead))
    }

    /// The connection, waiting (within the caller's timeout) for the background connector.
    async fn connection(&self) -> Result<ConnectionManager, RedisLimitError> {
        self.connector
            .get()
            .await
            .map_err(|NoRuntime| RedisLimitError::NoRuntime)
    }
}

/// `{prefix}:rl:{<32 hex>}` or `{prefix}:rl:ip:{<address>}`.
pub fn redis_key(prefix: &str, subject: &Subject) -> String {
    match subject {
        Subject::Key(k) => format!("{prefix}:rl:{{{k}}}"),
        Subject::Ip(ip) => format!("{prefix}:rl:ip:{{{ip}}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::KeyId;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn keys_are_hash_tagged() {
        let k = Subject::Key(KeyId([0xab; 16]));
        assert_eq!(
            redis_key("raster-edge", &k),
            "raster-edge:rl:{abababababababababababababababab}"
        );
        let ip = Subject::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(redis_key("p", &ip), "p:rl:ip:{10.0.0.1}");
        let ip6 = Subject::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(redis_key("p", &ip6), "p:rl:ip:{::1}");
    }
}
