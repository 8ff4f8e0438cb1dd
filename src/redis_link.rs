//! One Redis connection for request-path calls outside rate limiting (the shared cache tier
//! and its leases): made in the background on first use and kept by a `ConnectionManager`
//! (which reconnects by itself), every call bounded by `redis.timeout` (the wait for the
//! connection included), and after a failure Redis is skipped for a short, growing backoff
//! (100 ms … 1 s) so an outage does not cost every request a timeout. Errors are counted in
//! `raster_edge_redis_errors_total{op}`; callers fall back (to local-only caching), never fail
//! the request.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisSettings;
use crate::metrics::{RedisErrorKind, RedisOp, METRICS};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const CONNECT_RETRY: Duration = Duration::from_millis(250);

/// The client for `[redis] url`.
pub fn client(settings: &RedisSettings) -> anyhow::Result<redis::Client> {
    Ok(redis::Client::open(settings.url.as_str())?)
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("redis call timed out")]
    Timeout,
    #[error("redis skipped after a recent failure")]
    Backoff,
    #[error("not inside a tokio runtime")]
    NoRuntime,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl LinkError {
    pub fn kind(&self) -> RedisErrorKind {
        match self {
            LinkError::Timeout | LinkError::Backoff => RedisErrorKind::Timeout,
            LinkError::NoRuntime => RedisErrorKind::NoRuntime,
            LinkError::Redis(e) => RedisErrorKind::of(e),
        }
    }
}

/// A `ConnectionManager` (which reconnects by itself once it exists) made in the background on
/// first use: callers wait for it within their own timeout, and a Redis that is down at start
/// costs no request more than that timeout. Shared by the rate limiter's backend and
/// [`RedisLink`].
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    conn: OnceLock<ConnectionManager>,
    connecting: AtomicBool,
    ready: tokio::sync::Notify,
    /// What the connection is for, in the log line that says it is up.
    purpose: &'static str,
}

/// There is no tokio runtime to run the connector on.
#[derive(Debug)]
pub struct NoRuntime;

/// Resets `connecting` if the connector task ends without a connection (runtime shut down).
struct ConnectingGuard(Arc<ConnectorInner>);

impl Drop for ConnectingGuard {
    fn drop(&mut self) {
        if self.0.conn.get().is_none() {
            self.0.connecting.store(false, Ordering::Release);
        }
    }
}

impl Connector {
    /// The connection settings every Redis user here shares, bounded by `timeout`.
    pub fn new(client: redis::Client, timeout: Duration, purpose: &'static str) -> Self {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(500)
            .set_connection_timeout(timeout.max(Duration::from_millis(500)))
            .set_response_timeout(timeout.max(Duration::from_millis(500)));
        Self {
            inner: Arc::new(ConnectorInner {
                client,
                config,
                conn: OnceLock::new(),
                connecting: AtomicBool::new(false),
                ready: tokio::sync::Notify::new(),
                purpose,
            }),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.inner.conn.get().is_some()
    }

    /// The connection, waiting (within the caller's timeout) for the background connector.
    pub async fn get(&self) -> Result<ConnectionManager, NoRuntime> {
        if let Some(c) = self.inner.conn.get() {
            return Ok(c.clone());
        }
        self.start()?;
        loop {
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(c) = self.inner.conn.get() {
                return Ok(c.clone());
            }
            notified.await;
        }
    }

    fn start(&self) -> Result<(), NoRuntime> {
        if self.inner.connecting.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.inner.connecting.store(false, Ordering::Release);
            return Err(NoRuntime);
        };
        let guard = ConnectingGuard(self.inner.clone());
        handle.spawn(async move {
            let inner = &guard.0;
            loop {
                match ConnectionManager::new_with_config(inner.client.clone(), inner.config.clone())
                    .await
                {
                    Ok(c) => {
                        let _ = inner.conn.set(c);
                        inner.ready.notify_waiters();
                        tracing::info!(purpose = inner.purpose, "connected to redis");
                        return;
                    }
                    Err(e) => {
                        METRICS
                            .redis_errors
                            .with_label_values(&[
                                RedisOp::Connect.as_str(),
                                RedisErrorKind::of(&e).as_str(),
                            ])
                            .inc();
                        tracing::warn!(error = %e, "redis connection failed; retrying");
                        tokio::time::sleep(CONNECT_RETRY).await;
                    }
                }
            }
        });
        Ok(())
    }
}

/// After a failed call Redis is skipped for a short, growing while (100 ms, doubling, at most
/// 1 s), so an outage costs each request one cheap check instead of a timeout. Shared by the
/// rate limiter's backend and [`RedisLink`].
pub struct Backoff {
    base: Instant,
    /// Skip Redis until this many ns after `base` (0: no backoff).
    skip_until: AtomicU64,
    failures: AtomicU32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            skip_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
        }
    }
}

impl Backoff {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX / 2)
    }

    /// True while Redis is being skipped after a failure.
    pub fn active(&self) -> bool {
        let until = self.skip_until.load(Ordering::Acquire);
        until != 0 && self.now_ns() < until
    }

    /// A call succeeded: the next one goes straight through.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.skip_until.store(0, Ordering::Release);
        }
    }

    /// A call failed: Redis is skipped for the returned while.
    pub fn failed(&self) -> Duration {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(8);
        let backoff = BACKOFF_MIN.saturating_mul(1 << n).min(BACKOFF_MAX);
        let until = self.now_ns() + u64::try_from(backoff.as_nanos()).unwrap_or(0);
        self.skip_until.store(until.max(1), Ordering::Release);
        backoff
    }
}

pub struct RedisLink {
    connector: Connector,
    op: RedisOp,
    timeout: Duration,
    backoff: Backoff,
}

impl RedisLink {
    /// Parses the URL; does not connect (that happens in the background on first use).
    pub fn new(settings: &RedisSettings, op: RedisOp) -> anyhow::Result<Self> {
        let timeout = settings.timeout.max(Duration::from_millis(1));
        Ok(Self {
            connector: Connector::new(client(settings)?, timeout, op.as_str()),
            op,
            timeout,
            backoff: Backoff::default(),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn in_backoff(&self) -> bool {
        self.backoff.active()
    }

    /// Runs `f` on the connection within `redis.timeout`. Failures are counted and start the
    /// backoff; [`LinkError::Backoff`] means no call was made.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, LinkError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.in_backoff() {
            return Err(LinkError::Backoff);
        }
        let run = async {
            let conn = self.connection().await?;
            Ok::<T, LinkError>(f(conn).await?)
        };
        let result = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Timeout),
        };
        match &result {
            Ok(_) => self.backoff.succeeded(),
            Err(e) => {
                METRICS
                    .redis_errors
                    .with_label_values(&[self.op.as_str(), e.kind().as_str()])
                    .inc();
                let backoff = self.backoff.failed();
                tracing::debug!(error = %e, ?backoff, op = self.op.as_str(), "redis call failed");
            }
        }
        result
    }

    async fn connection(&self) -> Result<ConnectionManager, LinkError> {
        self.connector
            .get()
            .await
            .map_err(|NoRuntime| LinkError::NoRuntime)
    }
}
