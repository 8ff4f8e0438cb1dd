//! Per-key rate limiting through the real gateway: exact admission for a burst, Raster-style
//! 429s that never reach the origin, IETF RateLimit headers, keys isolated from each other,
//! cache hits free with `count = "upstream"`, and the Redis backend shared by two instances,
//! surviving Redis being killed, restarted and stalled.

mod common;

use raster_edge::metrics;

use std::time::{Duration, Instant};

use common::transport::Transport;
use common::{auth, client, Edge, Mock, Redis};
use serde_json::Value;

const ASSETS: &str = "/organizations/monogram-labs/libraries/barcelona/assets";

/// A slow refill (one request every 10 s) so the test's own duration adds nothing.
fn limits(burst: u32, extra: &str) -> String {
    format!("[cache]\nenabled = false\n[rate_limit]\nrate = 0.1\nburst = {burst}\n{extra}")
}

/// A request over the gateway's transport (checked: the answer came back over it too).
async fn get(edge: &Edge, key: &str, path: &str) -> reqwest::Response {
    let r = edge
        .client()
        .get(edge.url(path))
        .headers(auth(key))
        .send()
        .await
        .expect("request");
    assert_eq!(r.version(), edge.transport.version());
    r
}

over_transports!(
    test_burst_plus_n_gets_exactly_n_429s_that_never_reach_origin,
    burst_plus_n
);
async fn burst_plus_n(t: Transport) {
    let mock = Mock::start();
    let edge = Edge::start_over(t, &mock.url(), &limits(10, ""));
    let (mut ok, mut limited) = (0, 0);
    for i in 0..13 {
        let r = get(&edge, "demo-read", &format!("{ASSETS}?page={}", i + 1)).await;
        assert!(
            r.headers().get("ratelimit-policy").is_some(),
            "RateLimit-Policy on every response"
        );
        assert!(
            r.headers().get("ratelimit").is_some(),
            "RateLimit on every response"
        );
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                let retry: u64 = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("numeric Retry-After");
                assert!(retry >= 1);
                assert_eq!(
                    r.headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok()),
                    Some("application/json")
                );
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], "RATE_LIMITED");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((ok, limited), (10, 3));
    assert_eq!(mock.requests().await, 10, "a 429 must not reach the origin");
    let limited_metric = edge
        .metric(
            metrics::RATELIMIT_DECISIONS_TOTAL,
            &[("result", metrics::RateLimitResult::Limited.as_str())],
        )
        .await;
    assert_eq!(limited_metric, 3.0);
}

over_transports!(test_other_key_is_unaffected_by_a_limited_key, keys_isolated);
async fn keys_isolated(t: Transport) {
    let mock = Mock::start();
    let edge = Edge::start_over(t, &mock.url(), &limits(3, ""));
    for _ in 0..5 {
        get(&edge, "demo-read", "/me").await;
    }
    assert_eq!(get(&edge, "demo-read", "/me").await.status(), 429);
    assert_eq!(get(&edge, "demo-write", "/me").await.status(), 200);
}

#[tokio::test]
async fn test_remaining_counts_down_in_ratelimit_header() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &limits(5, ""));
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = get(&edge, "demo-read", "/me").await;
        let h = r
            .headers()
            .get("ratelimit")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let r_val: u32 = h
            .split(';')
            .find_map(|p| p.trim().strip_prefix("r="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no r= in {h}"));
        remaining.push(r_val);
    }
    assert_eq!(remaining, vec![4, 3, 2]);
}

#[tokio::test]
async fn test_shadow_mode_counts_but_never_rejects() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &limits(2, "mode = \"shadow\"\n"));
    for _ in 0..5 {
        assert_eq!(get(&edge, "demo-read", "/me").await.status(), 200);
    }
    let shadow = edge
        .metric(
            metrics::RATELIMIT_DECISIONS_TOTAL,
            &[("result", metrics::RateLimitResult::ShadowLimited.as_str())],
        )
        .await;
    assert_eq!(shadow, 3.0);
}

over_transports!(test_count_upstream_lets_cache_hits_through, hits_free);
async fn hits_free(t: Transport) {
    let mock = Mock::start();
    let edge = Edge::start_over(
        t,
        &mock.url(),
        "[rate_limit]\nrate = 0.1\nburst = 2\ncount = \"upstream\"\n",
    );
    // Small pages (under compression's min_size): a ~3 KB page compressed into the store over
    // h2 was sometimes not stored at all, an open defect of its own; this test is about tokens.
    let page = |n: u32| format!("{ASSETS}?page={n}&pageSize=5");
    // One miss spends one token; hits of the same URL are free.
    assert_eq!(get(&edge, "demo-read", &page(1)).await.status(), 200);
    // The fill is committed as the miss's body ends; over h2 the next stream may start before
    // that, so wait for the entry (a bounded poll of the store's gauge, not a TTL sleep).
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge.metric(metrics::CACHE_ENTRIES, &[]).await < 1.0 {
        assert!(Instant::now() < deadline, "the miss was never stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..9 {
        assert_eq!(get(&edge, "demo-read", &page(1)).await.status(), 200);
    }
    assert_eq!(mock.requests().await, 1);
    // Misses spend the rest.
    assert_eq!(get(&edge, "demo-read", &page(2)).await.status(), 200);
    assert_eq!(get(&edge, "demo-read", &page(3)).await.status(), 429);
    // Hits still flow while the key is limited for upstream-bound requests.
    assert_eq!(get(&edge, "demo-read", &page(1)).await.status(), 200);
}

#[tokio::test]
async fn test_anonymous_requests_are_limited_by_client_ip() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &limits(2, ""));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = client()
            .post(edge.url("/libraries"))
            .header("api-version", "2026-05-20")
            .json(&serde_json::json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
}

fn redis_limits(redis: &Redis, burst: u32, extra: &str) -> String {
    format!(
        "[cache]\nenabled = false\n[rate_limit]\nrate = 0.1\nburst = {burst}\nbackend = \"redis\"\n[edge]\nkey_id_secret = \"shared-fleet-secret\"\n[redis]\nurl = \"{}\"\ntimeout = \"100ms\"\n{extra}",
        redis.url()
    )
}

#[tokio::test]
async fn test_two_instances_sharing_redis_admit_one_quota() {
    let redis = Redis::start();
    let mock = Mock::start();
    let a = Edge::start(&mock.url(), &redis_limits(&redis, 10, ""));
    let b = Edge::start(&mock.url(), &redis_limits(&redis, 10, ""));
    let mut admitted = 0;
    for i in 0..30 {
        let edge = if i % 2 == 0 { &a } else { &b };
        if get(edge, "demo-read", "/me").await.status() == 200 {
            admitted += 1;
        }
    }
    assert!(
        (10..=11).contains(&admitted),
        "admitted {admitted} with a shared quota of 10"
    );
    assert_eq!(a.metric(metrics::RATELIMIT_FALLBACK_ACTIVE, &[]).await, 0.0);
}

#[tokio::test]
async fn test_redis_killed_falls_back_to_local_then_recovers_on_restart() {
    let mut redis = Redis::start();
    let port = redis.port;
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &redis_limits(&redis, 5, ""));
    assert_eq!(get(&edge, "demo-read", "/me").await.status(), 200);

    redis.proc.kill();
    // Requests keep flowing on local limits.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        statuses.push(get(&edge, "demo-read", "/me").await.status().as_u16());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "local limits still apply: {statuses:?}"
    );
    assert_eq!(
        edge.metric(metrics::RATELIMIT_FALLBACK_ACTIVE, &[]).await,
        1.0
    );
    assert!(edge.metric(metrics::RATELIMIT_FALLBACKS_TOTAL, &[]).await >= 1.0);

    // Redis comes back: decisions go to Redis again and the fallback gauge drops.
    let redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        get(&edge, "demo-write", "/me").await;
        if edge.metric(metrics::RATELIMIT_FALLBACK_ACTIVE, &[]).await == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover after Redis restarted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = redis::Client::open(redis.url()).unwrap();
    let mut conn = c.get_multiplexed_async_connection().await.unwrap();
    let keys: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert!(keys >= 1, "shared state is in Redis again");
}

#[tokio::test]
async fn test_redis_stalled_times_out_and_falls_back_with_bounded_latency() {
    let redis = Redis::start();
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &redis_limits(&redis, 50, ""));
    assert_eq!(get(&edge, "demo-read", "/me").await.status(), 200);
    redis.proc.signal(19); // SIGSTOP: connections stay open, nothing answers
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(get(&edge, "demo-read", "/me").await.status(), 200);
        worst = worst.max(started.elapsed());
    }
    redis.proc.signal(18); // SIGCONT, so the harness can stop it cleanly
                           // 100 ms Redis timeout; the rest is a debug-build gateway and the origin.
    assert!(
        worst < Duration::from_millis(700),
        "worst latency {worst:?}"
    );
    assert!(edge.metric(metrics::RATELIMIT_FALLBACKS_TOTAL, &[]).await >= 1.0);
}

#[tokio::test]
async fn test_on_error_deny_refuses_while_redis_is_down() {
    let mut redis = Redis::start();
    let mock = Mock::start();
    let edge = Edge::start(
        &mock.url(),
        &redis_limits(&redis, 5, "on_error = \"deny\"\n"),
    );
    redis.proc.kill();
    let r = get(&edge, "demo-read", "/me").await;
    assert_eq!(r.status(), 429);
    assert_eq!(mock.requests().await, 0);
}
