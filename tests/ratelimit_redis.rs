//! The Redis rate-limit backend against a real, private `redis-server` (one per test, on an
//! ephemeral port): shared limits across limiters, fallback when Redis dies or stalls, recovery
//! when it comes back, and the `on_error` policies.
//!
//! The tests run one at a time (a file-wide lock) because the fallback gauge is process-global.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raster_edge::config::{Backend, Count, Mode, OnError, RateLimitSettings, RedisSettings};
use raster_edge::edge::KeyId;
use raster_edge::metrics::METRICS;
use raster_edge::ratelimit::{RateLimiter, Subject};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

const TIMEOUT: Duration = Duration::from_millis(50);
/// Bound on one `check` while Redis misbehaves: the timeout plus generous slack.
const SLOW: Duration = Duration::from_millis(500);

fn settings(rate: f64, burst: u32) -> RateLimitSettings {
    RateLimitSettings {
        enabled: true,
        rate,
        burst,
        backend: Backend::Redis,
        count: Count::All,
        mode: Mode::Enforce,
        max_keys: 10_000,
        tiers: Vec::new(),
    }
}

fn redis_settings(url: &str, on_error: OnError) -> RedisSettings {
    RedisSettings {
        url: url.to_string(),
        timeout: TIMEOUT,
        on_error,
        key_prefix: "rl-test".into(),
        invalidation: false,
        invalidation_outage: raster_edge::config::OutagePolicy::Ttl,
    }
}

fn fresh_key() -> Subject {
    let n = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[8..].copy_from_slice(&std::process::id().to_be_bytes().repeat(2));
    Subject::Key(KeyId(b))
}

/// Checks until the limiter talks to Redis (or panics after `within`).
async fn wait_connected(rl: &RateLimiter, within: Duration) {
    let deadline = Instant::now() + within;
    let probe = fresh_key();
    loop {
        rl.check(probe).await;
        if rl.redis_connected() && !rl.fallback_active() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "limiter did not (re)connect to redis in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One check, asserting it came back within [`SLOW`].
async fn timed_check(rl: &RateLimiter, who: Subject) -> raster_edge::ratelimit::Decision {
    let t = Instant::now();
    let d = rl.check(who).await;
    let took = t.elapsed();
    assert!(took < SLOW, "check took {took:?} (timeout {TIMEOUT:?})");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limiters_share_one_quota() {
    let _serial = SERIAL.lock().await;
    let redis = common::Redis::start();
    let s = settings(0.1, 10);
    let a = RateLimiter::new(&s, &redis_settings(&redis.url(), OnError::Deny)).unwrap();
    let b = RateLimiter::new(&s, &redis_settings(&redis.url(), OnError::Deny)).unwrap();
    wait_connected(&a, Duration::from_secs(5)).await;
    wait_connected(&b, Duration::from_secs(5)).await;

    // Exact values from the script: burst 10 at 0.1/s (one every 10 s).
    let who = fresh_key();
    for i in 0..5u32 {
        let d = a.check(who).await;
        assert!(d.allowed, "request {i}");
        assert_eq!(d.remaining, 9 - i);
        let r = d.reset.as_millis();
        assert!(
            r > 10_000 * u128::from(i) && r <= 10_000 * u128::from(i + 1),
            "reset {r}ms"
        );
    }

    // A quick concurrent burst from both limiters: together no more than one quota.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let rl = if i % 2 == 0 { &a } else { &b };
        tasks.push(rl.check(who));
    }
    let decisions = futures_join_all(tasks).await;
    let admitted = decisions.iter().filter(|d| d.allowed).count();
    assert_eq!(admitted, 5, "5 left of the shared burst of 10");
    assert!(!a.fallback_active() && !b.fallback_active());
    let refused = decisions.iter().find(|d| !d.allowed).unwrap();
    assert_eq!(refused.remaining, 0);
    let retry = refused.retry_after.unwrap();
    assert!(
        retry > Duration::from_secs(9) && retry <= Duration::from_secs(10),
        "{retry:?}"
    );
    let h = refused.headers();
    assert_eq!(
        h[0],
        ("RateLimit-Policy", "\"default\";q=10;w=100".to_string())
    );
    assert_eq!(h[1], ("RateLimit", "\"default\";r=0;t=100".to_string()));
    assert_eq!(h[2], ("Retry-After", "10".to_string()));

    // Key layout: hash-tagged key id, with a TTL.
    let Subject::Key(k) = who else { unreachable!() };
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("rl-test:rl:{{{k}}}"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(ttl > 90_000 && ttl <= 100_001, "pttl {ttl}");
}

/// `join_all` without pulling in the futures crate: spawn-free, polls in order on this task.
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(futs.len());
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_falls_back_to_local_then_recovers() {
    let _serial = SERIAL.lock().await;
    let mut redis = common::Redis::start();
    let port = redis.port;
    let s = settings(0.1, 3);
    let a = RateLimiter::new(&s, &redis_settings(&redis.url(), OnError::Local)).unwrap();
    let b = RateLimiter::new(&s, &redis_settings(&redis.url(), OnError::Local)).unwrap();
    wait_connected(&a, Duration::from_secs(5)).await;
    wait_connected(&b, Duration::from_secs(5)).await;
    let who = fresh_key();
    assert!(a.check(who).await.allowed);

    let fallbacks_before = METRICS
        .ratelimit_fallbacks
        .with_label_values(&["local"])
        .get();
    redis.proc.kill();

    // Decisions keep flowing, fast, on the local limits (a fresh local burst of 3 per limiter).
    let mut admitted = 0;
    for _ in 0..10 {
        if timed_check(&a, who).await.allowed {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "local limiter decides while redis is down");
    assert!(a.fallback_active());
    assert_eq!(METRICS.ratelimit_fallback_active.get(), 1);
    assert!(
        METRICS
            .ratelimit_fallbacks
            .with_label_values(&["local"])
            .get()
            >= fallbacks_before + 10
    );
    // b has not noticed yet; its first check does.
    assert!(timed_check(&b, who).await.allowed);
    assert!(b.fallback_active());

    // Redis back on the same port (empty): both limiters share limits again within seconds.
    let _redis = common::Redis::start_on(port);
    wait_connected(&a, Duration::from_secs(8)).await;
    wait_connected(&b, Duration::from_secs(8)).await;
    assert!(!a.fallback_active() && !b.fallback_active());
    assert_eq!(METRICS.ratelimit_fallback_active.get(), 0);
    let who = fresh_key();
    let mut admitted = 0;
    for i in 0..10 {
        let rl = if i % 2 == 0 { &a } else { &b };
        if rl.check(who).await.allowed {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "one shared burst again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stalled_times_out_and_falls_back() {
    let _serial = SERIAL.lock().await;
    let redis = common::Redis::start();
    let rl = RateLimiter::new(
        &settings(1.0, 2),
        &redis_settings(&redis.url(), OnError::Local),
    )
    .unwrap();
    wait_connected(&rl, Duration::from_secs(5)).await;
    let errors_before = METRICS
        .redis_errors
        .with_label_values(&["ratelimit", "timeout"])
        .get();

    redis.proc.signal(19); // SIGSTOP
    let who = fresh_key();
    let mut admitted = 0;
    for _ in 0..6 {
        if timed_check(&rl, who).await.allowed {
            admitted += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(admitted, 2, "local burst");
    assert!(rl.fallback_active());
    assert_eq!(METRICS.ratelimit_fallback_active.get(), 1);
    assert!(
        METRICS
            .redis_errors
            .with_label_values(&["ratelimit", "timeout"])
            .get()
            > errors_before
    );

    redis.proc.signal(18); // SIGCONT
    wait_connected(&rl, Duration::from_secs(5)).await;
    assert!(!rl.fallback_active());
    assert_eq!(METRICS.ratelimit_fallback_active.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_deny_denies_and_allow_allows() {
    let _serial = SERIAL.lock().await;
    // Nothing listens here (never started), and a stalled Redis for the timeout path.
    let nothing = format!("redis://127.0.0.1:{}", common::free_port());
    let s = settings(100.0, 100);

    let deny = RateLimiter::new(&s, &redis_settings(&nothing, OnError::Deny)).unwrap();
    let allow = RateLimiter::new(&s, &redis_settings(&nothing, OnError::Allow)).unwrap();
    let who = fresh_key();
    let denied_before = METRICS
        .ratelimit_fallbacks
        .with_label_values(&["deny"])
        .get();
    for _ in 0..5 {
        let d = timed_check(&deny, who).await;
        assert!(!d.allowed && d.limited);
        assert!(d
            .headers()
            .iter()
            .any(|(n, v)| *n == "Retry-After" && v == "1"));
        let d = timed_check(&allow, who).await;
        assert!(d.allowed && !d.limited);
    }
    assert!(deny.fallback_active() && allow.fallback_active());
    assert!(
        METRICS
            .ratelimit_fallbacks
            .with_label_values(&["deny"])
            .get()
            >= denied_before + 5
    );

    let redis = common::Redis::start();
    let deny = RateLimiter::new(&s, &redis_settings(&redis.url(), OnError::Deny)).unwrap();
    wait_connected(&deny, Duration::from_secs(5)).await;
    assert!(deny.check(who).await.allowed);
    redis.proc.signal(19);
    let d = timed_check(&deny, who).await;
    assert!(!d.allowed, "deny while stalled");
    redis.proc.signal(18);
    wait_connected(&deny, Duration::from_secs(5)).await;
    assert!(deny.check(who).await.allowed);
}
