//! Fleet-wide invalidation through Redis (`redis.invalidation = true`), with generations that
//! live in Redis so that no invalidation can be lost.
//!
//! **Where generations live.** Every scope, tree and URL bump (a successful write, an admin
//! purge) runs one Lua script ([`BUMP_LUA`]) that takes the next number of the fleet's sequence
//! (`<prefix>:gen:{gen}:seq`), records it as the name's generation in a sorted set per kind
//! (`<prefix>:gen:{gen}:scope|tree|url`, member = name, score = generation) and publishes
//! `{seq, from, kind, name}` on `<prefix>:invalidate`. Every instance therefore computes the
//! same generations, hence the same cache keys, which is what lets the shared tier
//! ([`super::shared`]) be shared. Each sorted set is capped ([`FLEET_CAPACITY`]); a name that
//! falls out raises the kind's floor (`<prefix>:gen:{gen}:floor`), which every instance applies,
//! so a forgotten name reads a newer generation, never an older one.
//!
//! **Until Redis answers**, a local bump takes effect at once with a provisional value unique
//! to this process ([`super::invalidation::PROVISIONAL`]); the fleet number replaces it when
//! the script returns. Bumps made while Redis is unreachable are queued (up to [`MAX_PENDING`])
//! and run after reconnecting.
//!
//! **Reconciliation.** Sequence numbers are contiguous, so an instance knows exactly which
//! bumps it has applied. On start, on every reconnection, when a message arrives out of
//! sequence (a gap), and when a liveness check finds the sequence ahead of it, the instance
//! reads every name bumped after its last applied number (`ZRANGEBYSCORE (applied +inf`) and
//! the floors, in pages, before it counts itself synced again. After any Redis or network
//! outage the staleness window therefore ends when the instance reconnects, not at the TTL.
//!
//! **While not synced** (not yet reconciled, or Redis unreachable), hits follow
//! `redis.invalidation_outage`: `ttl` serves them as usual (staleness bounded by the route TTL),
//! `max-age` serves only entries whose age is at most `redis.invalidation_outage_max_age` and
//! revalidates the others with the origin.
//!
//! **Liveness without polling.** A connection cut silently (no RST, a paused Redis) is not
//! noticed by a subscriber. Instead of a timer, a cache hit that finds the last confirmed
//! contact older than [`VERIFY_AFTER`] asks the link for a check (the sequence read, bounded by
//! `redis.timeout`); an idle gateway sends nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::MultiplexedConnection;
use redis::Script;
use tokio::sync::{mpsc, Notify};

use super::invalidation::GenKind;
use super::Cache;
use crate::config::{OutagePolicy, RedisSettings};
use crate::metrics::{
    InvalidationReason, ReconcileReason, RedisErrorKind, RedisOp, FLEET, METRICS,
};

/// Bumps kept while Redis is unreachable; older ones are dropped first.
const MAX_PENDING: usize = 10_000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Names remembered per kind in Redis before the floor takes over (as locally).
pub const FLEET_CAPACITY: u64 = 200_000;
/// Names read per round trip while reconciling.
const RECONCILE_PAGE: usize = 5_000;
/// A hit older than this since the last confirmed contact with Redis asks for a check.
pub const VERIFY_AFTER: Duration = Duration::from_secs(1);
/// Bound on one reconciliation page (it may carry thousands of names).
const RECONCILE_TIMEOUT_MIN: Duration = Duration::from_secs(2);

/// Initialises the sequence, when Redis has none (first use, or Redis lost its data), from
/// Redis's clock in microseconds, so numbers after a data loss are larger than any before it.
const INIT_SEQ: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
"#;

/// One bump. KEYS: seq, the kind's sorted set, floors. ARGV: kind, name, channel, instance,
/// capacity. Returns the bump's generation.
pub const BUMP_LUA: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, ARGV[2])
if redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[5]) then
  local popped = redis.call('ZPOPMIN', KEYS[2], 1)
  local old = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
  if tonumber(popped[2]) > old then redis.call('HSET', KEYS[3], ARGV[1], popped[2]) end
end
redis.call('PUBLISH', ARGV[3], '{"seq":' .. string.format('%d', seq) .. ',"from":' ..
  cjson.encode(ARGV[4]) .. ',"kind":"' .. ARGV[1] .. '","name":' .. cjson.encode(ARGV[2]) .. '}')
return seq
"#;

/// One invalidation, as it travels between instances.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Bump {
    Scope(String),
    Tree(String),
    Url(String),
}

impl Bump {
    pub fn kind(&self) -> GenKind {
        match self {
            Bump::Scope(_) => GenKind::Scope,
            Bump::Tree(_) => GenKind::Tree,
            Bump::Url(_) => GenKind::Url,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Bump::Scope(n) | Bump::Tree(n) | Bump::Url(n) => n,
        }
    }
}

/// A message as the bump script publishes it.
#[derive(serde::Deserialize)]
struct Message {
    seq: u64,
    /// The publishing instance (its own messages are not counted as fleet invalidations).
    from: String,
    kind: GenKind,
    name: String,
}

/// A local bump on its way to Redis: the name and the provisional value it set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalBump {
    pub bump: Bump,
    pub provisional: u64,
}

/// The sending half, held by the [`Cache`]: never blocks the request path.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<LocalBump>,
}

impl Publisher {
    pub fn publish(&self, bump: Bump, provisional: u64) {
        // The receiver lives as long as the process; a send can only fail during exit.
        let _ = self.tx.send(LocalBump { bump, provisional });
    }
}

/// Whether this instance's generations are known to match the fleet's, shared between the
/// link (which sets it) and the cache's hit paths (which ask [`FleetState::allows_hit`]).
pub struct FleetState {
    synced: AtomicBool,
    policy: OutagePolicy,
    base: Instant,
    /// Milliseconds after `base` of the last confirmed contact with Redis.
    last_ok_ms: AtomicU64,
    check_requested: AtomicBool,
    check: Notify,
}

impl FleetState {
    pub fn new(policy: OutagePolicy) -> Self {
        FLEET.synced.set(0);
        Self {
            synced: AtomicBool::new(false),
            policy,
            base: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
            check_requested: AtomicBool::new(false),
            check: Notify::new(),
        }
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn set_synced(&self, synced: bool) {
        if synced {
            self.last_ok_ms.store(self.now_ms(), Ordering::Release);
        }
        if self.synced.swap(synced, Ordering::AcqRel) != synced {
            FLEET.synced.set(i64::from(synced));
            if synced {
                tracing::info!("fleet generations synced");
            } else {
                tracing::warn!(policy = ?self.policy, "fleet generations not synced; hits follow redis.invalidation_outage");
            }
        }
    }

    fn contact(&self) {
        self.last_ok_ms.store(self.now_ms(), Ordering::Release);
    }

    /// May a stored response of this age be served as a hit now?
    pub fn allows_hit(&self, age: Duration) -> bool {
        if self.synced() {
            let last = self.last_ok_ms.load(Ordering::Acquire);
            if self.now_ms().saturating_sub(last) > VERIFY_AFTER.as_millis() as u64
                && !self.check_requested.swap(true, Ordering::AcqRel)
            {
                self.check.notify_one();
            }
            return true;
        }
        match self.policy {
            OutagePolicy::Ttl => true,
            OutagePolicy::MaxAge(max) => age <= max,
        }
    }
}

pub fn channel() -> (Publisher, mpsc::UnboundedReceiver<LocalBump>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Publisher { tx }, rx)
}

pub fn channel_name(settings: &RedisSettings) -> String {
    format!("{}:invalidate", settings.key_prefix)
}

/// The Redis keys of the fleet's generations (one hash tag: one Cluster slot, so the bump
/// script may touch them all).
#[derive(Clone)]
pub struct GenKeys {
    pub seq: String,
    pub floor: String,
    scope: String,
    tree: String,
    url: String,
}

impl GenKeys {
    pub fn new(prefix: &str) -> Self {
        let k = |s: &str| format!("{prefix}:gen:{{gen}}:{s}");
        Self {
            seq: k("seq"),
            floor: k("floor"),
            scope: k("scope"),
            tree: k("tree"),
            url: k("url"),
        }
    }

    pub fn set(&self, kind: GenKind) -> &str {
        match kind {
            GenKind::Scope => &self.scope,
            GenKind::Tree => &self.tree,
            GenKind::Url => &self.url,
        }
    }
}

/// The fleet link as a background service: it stops with the server, and while Redis is up it
/// waits on its channels only (local bumps, remote messages, check requests), never on a timer.
pub struct Link {
    client: redis::Client,
    channel: String,
    keys: GenKeys,
    instance: String,
    timeout: Duration,
    cache: &'static Cache,
    state: Arc<FleetState>,
    rx: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<LocalBump>>>,
}

impl Link {
    pub fn new(
        settings: &RedisSettings,
        cache: &'static Cache,
        state: Arc<FleetState>,
        rx: mpsc::UnboundedReceiver<LocalBump>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: crate::redis_link::client(settings)?,
            channel: channel_name(settings),
            keys: GenKeys::new(&settings.key_prefix),
            instance: format!("{:016x}", rand::random::<u64>()),
            timeout: settings.timeout.max(Duration::from_millis(1)),
            cache,
            state,
            rx: parking_lot::Mutex::new(Some(rx)),
        })
    }
}

#[async_trait::async_trait]
impl BackgroundService for Link {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(rx) = self.rx.lock().take() else {
            return;
        };
        tokio::select! {
            _ = run(self, rx) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[derive(Debug)]
struct LinkError(redis::RedisError);

impl From<redis::RedisError> for LinkError {
    fn from(e: redis::RedisError) -> Self {
        LinkError(e)
    }
}

fn timed_out() -> LinkError {
    LinkError(redis::RedisError::from((
        redis::ErrorKind::IoError,
        "fleet link call timed out",
    )))
}

async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(timed_out()),
    }
}

async fn run(link: &Link, mut rx: mpsc::UnboundedReceiver<LocalBump>) {
    let pending = parking_lot::Mutex::new(VecDeque::<LocalBump>::new());
    // The last fleet number this instance applied, everything before it included.
    let mut applied: u64 = 0;
    let mut backoff = BACKOFF_MIN;
    loop {
        match session(link, &mut rx, &pending, &mut applied).await {
            Ok(()) => return, // the publisher side is gone: the process is exiting
            Err(e) => {
                link.state.set_synced(false);
                METRICS
                    .redis_errors
                    .with_label_values(&[
                        RedisOp::Invalidation.as_str(),
                        RedisErrorKind::of(&e.0).as_str(),
                    ])
                    .inc();
                tracing::warn!(error = %e.0, retry_in_ms = backoff.as_millis() as u64, "fleet invalidation link down");
            }
        }
        // Keep queueing local bumps while waiting to reconnect.
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(b)) => queue(&pending, b),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Sends the queued bumps in order, one at a time; one that fails goes back to the front, so a
/// failed send keeps every bump not yet sent.
async fn flush<F, Fut, E>(
    pending: &parking_lot::Mutex<VecDeque<LocalBump>>,
    mut send: F,
) -> Result<(), E>
where
    F: FnMut(LocalBump) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    loop {
        let Some(b) = pending.lock().pop_front() else {
            return Ok(());
        };
        if let Err(e) = send(b.clone()).await {
            pending.lock().push_front(b);
            return Err(e);
        }
    }
}

fn queue(pending: &parking_lot::Mutex<VecDeque<LocalBump>>, b: LocalBump) {
    let mut p = pending.lock();
    if p.len() >= MAX_PENDING {
        p.pop_front();
    }
    p.push_back(b);
}

/// Runs one bump through Redis and confirms its provisional value with the fleet number.
async fn send_bump(
    link: &Link,
    conn: &mut MultiplexedConnection,
    b: &LocalBump,
) -> Result<(), LinkError> {
    let kind = b.bump.kind();
    let seq: u64 = bounded(
        link.timeout,
        Script::new(BUMP_LUA)
            .key(&link.keys.seq)
            .key(link.keys.set(kind))
            .key(&link.keys.floor)
            .arg(kind.as_str())
            .arg(b.bump.name())
            .arg(&link.channel)
            .arg(&link.instance)
            .arg(FLEET_CAPACITY)
            .invoke_async(conn),
    )
    .await?;
    link.cache
        .invalidation()
        .confirm(kind, b.bump.name(), b.provisional, seq);
    link.state.contact();
    Ok(())
}

/// The fleet's current sequence number (initialised if Redis has none).
async fn current_seq(link: &Link, conn: &mut MultiplexedConnection) -> Result<u64, LinkError> {
    let script = format!("{INIT_SEQ}\nreturn redis.call('GET', KEYS[1])");
    let s: String = bounded(
        link.timeout,
        Script::new(&script).key(&link.keys.seq).invoke_async(conn),
    )
    .await?;
    s.parse::<u64>().map_err(|_| {
        LinkError(redis::RedisError::from((
            redis::ErrorKind::TypeError,
            "fleet sequence is not a number",
        )))
    })
}

/// Applies every bump after `applied` and the floors; returns the number now applied.
async fn reconcile(
    link: &Link,
    conn: &mut MultiplexedConnection,
    applied: u64,
    reason: ReconcileReason,
) -> Result<u64, LinkError> {
    let limit = link.timeout.max(RECONCILE_TIMEOUT_MIN);
    let seq = current_seq(link, conn).await?;
    // A sequence behind ours: Redis lost its data and numbers restarted (from its clock, so
    // above every earlier one); read everything it has.
    let from = if seq < applied { 0 } else { applied };
    let inv = link.cache.invalidation();
    let floors: Vec<(String, u64)> = bounded(
        limit,
        redis::cmd("HGETALL")
            .arg(&link.keys.floor)
            .query_async(conn),
    )
    .await?;
    for (kind, floor) in floors {
        if let Some(k) = GenKind::ALL.iter().find(|k| k.as_str() == kind) {
            inv.raise_floor(*k, floor);
        }
    }
    let mut changed = 0u64;
    for kind in GenKind::ALL {
        let mut offset = 0usize;
        loop {
            let page: Vec<(String, f64)> = bounded(
                limit,
                redis::cmd("ZRANGEBYSCORE")
                    .arg(link.keys.set(kind))
                    .arg(format!("({from}"))
                    .arg("+inf")
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(RECONCILE_PAGE)
                    .query_async(conn),
            )
            .await?;
            for (name, g) in &page {
                if inv.apply_fleet(kind, name, *g as u64) {
                    changed += 1;
                }
            }
            if page.len() < RECONCILE_PAGE {
                break;
            }
            offset += page.len();
        }
    }
    FLEET.reconciles.with_label_values(&[reason.as_str()]).inc();
    if changed > 0 {
        METRICS
            .cache_invalidations
            .with_label_values(&[InvalidationReason::Fleet.as_str()])
            .inc_by(changed);
    }
    tracing::info!(
        reason = reason.as_str(),
        from,
        to = seq,
        changed,
        "fleet generations reconciled"
    );
    Ok(seq.max(applied))
}

/// One connected period: subscribe, reconcile, send what is pending, then send local bumps and
/// apply remote ones until something fails. `Ok` only when the local side has shut down.
async fn session(
    link: &Link,
    rx: &mut mpsc::UnboundedReceiver<LocalBump>,
    pending: &parking_lot::Mutex<VecDeque<LocalBump>>,
    applied: &mut u64,
) -> Result<(), LinkError> {
    let connect = link.timeout.max(Duration::from_millis(500));
    let mut pubsub = bounded(connect, link.client.get_async_pubsub()).await?;
    bounded(connect, pubsub.subscribe(&link.channel)).await?;
    let mut conn = bounded(connect, link.client.get_multiplexed_async_connection()).await?;
    tracing::info!(channel = %link.channel, "fleet invalidation link up");
    // Subscribed first, then reconciled: a bump made in between is both read and received,
    // and applying it twice is harmless.
    let reason = if *applied == 0 {
        ReconcileReason::Start
    } else {
        ReconcileReason::Reconnect
    };
    *applied = reconcile(link, &mut conn, *applied, reason).await?;
    link.state.set_synced(true);
    flush(pending, |b| {
        let mut conn = conn.clone();
        async move { send_bump(link, &mut conn, &b).await }
    })
    .await?;
    let inv = link.cache.invalidation();
    let mut messages = pubsub.on_message();
    loop {
        tokio::select! {
            local = rx.recv() => {
                let Some(b) = local else { return Ok(()) };
                if let Err(e) = send_bump(link, &mut conn, &b).await {
                    queue(pending, b);
                    return Err(e);
                }
            }
            _ = link.state.check.notified() => {
                link.state.check_requested.store(false, Ordering::Release);
                let seq = current_seq(link, &mut conn).await?;
                if seq != *applied {
                    // Messages were lost without the subscription noticing.
                    *applied = reconcile(link, &mut conn, *applied, ReconcileReason::Check).await?;
                }
                link.state.set_synced(true);
            }
            remote = messages.next() => {
                let Some(msg) = remote else {
                    return Err(redis::RedisError::from((redis::ErrorKind::IoError, "subscription closed")).into());
                };
                let Ok(payload) = msg.get_payload::<String>() else { continue };
                let m = match serde_json::from_str::<Message>(&payload) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "ignoring malformed invalidation message");
                        continue;
                    }
                };
                link.state.contact();
                if m.seq > *applied + 1 {
                    // A gap: some bumps never reached us. Not synced until they are read.
                    link.state.set_synced(false);
                    *applied = reconcile(link, &mut conn, *applied, ReconcileReason::Gap).await?;
                    link.state.set_synced(true);
                }
                if inv.apply_fleet(m.kind, &m.name, m.seq) && m.from != link.instance {
                    METRICS
                        .cache_invalidations
                        .with_label_values(&[InvalidationReason::Fleet.as_str()])
                        .inc();
                }
                *applied = (*applied).max(m.seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(i: u64) -> LocalBump {
        LocalBump {
            bump: Bump::Url(format!("/u{i}")),
            provisional: i,
        }
    }

    #[tokio::test]
    async fn a_failed_send_keeps_every_unsent_bump() {
        let pending = parking_lot::Mutex::new(VecDeque::new());
        for i in 0..5 {
            queue(&pending, local(i));
        }
        let mut sent = Vec::new();
        let r = flush(&pending, |b| {
            let fail = sent.len() == 2;
            if !fail {
                sent.push(b);
            }
            async move {
                if fail {
                    Err("redis went away")
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(sent, [local(0), local(1)]);
        let left: Vec<LocalBump> = pending.lock().iter().cloned().collect();
        let want: Vec<LocalBump> = (2..5).map(local).collect();
        assert_eq!(
            left, want,
            "the failed bump and everything after it stay queued"
        );
        // The next connected period sends them all, in order.
        let mut later = Vec::new();
        flush(&pending, |b| {
            later.push(b);
            async { Ok::<(), &str>(()) }
        })
        .await
        .unwrap();
        assert_eq!(later, want);
        assert!(pending.lock().is_empty());
    }

    #[test]
    fn messages_have_a_readable_shape() {
        let m: Message = serde_json::from_str(
            r#"{"seq":1764866000000001,"from":"ab","kind":"scope","name":"/organizations/o/libraries/l"}"#,
        )
        .unwrap();
        assert_eq!(m.seq, 1_764_866_000_000_001);
        assert_eq!(m.from, "ab");
        assert_eq!(m.kind, GenKind::Scope);
        assert_eq!(m.name, "/organizations/o/libraries/l");
    }

    #[test]
    fn generation_keys_share_one_cluster_slot() {
        let k = GenKeys::new("raster-edge");
        for key in [&k.seq, &k.floor, &k.scope, &k.tree, &k.url] {
            assert!(key.contains("{gen}"), "{key}");
        }
        assert_eq!(k.set(GenKind::Url), "raster-edge:gen:{gen}:url");
    }

    #[test]
    fn outage_policy_decides_hits_only_while_not_synced() {
        let s = FleetState::new(OutagePolicy::MaxAge(Duration::from_secs(10)));
        assert!(s.allows_hit(Duration::from_secs(5)));
        assert!(!s.allows_hit(Duration::from_secs(11)));
        s.set_synced(true);
        assert!(s.allows_hit(Duration::from_secs(3600)));
        let t = FleetState::new(OutagePolicy::Ttl);
        assert!(t.allows_hit(Duration::from_secs(3600)));
    }
}
