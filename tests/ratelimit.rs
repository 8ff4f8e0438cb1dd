//! Per-key rate limiting through the real gateway: exact admission for a burst, Raster-style
//! 429s that never reach the origin, IETF RateLimit headers, keys isolated from each other,
//! cache hits free with `count = "upstream"`, and the Redis backend shared by two instances,
//! surviving Redis being killed, restarted and stalled.

mod common;

use raster_edge::metrics;

use std::time::{Duration, Instant};

use common::{auth, client, Edge, Mock, Redis};
use serde_json::Value;

const ASSETS: &str = "/organizations/monogram-labs/libraries/barcelona/assets";

/// A slow refill (one request every 10 s) so the test's own duration adds nothing.
fn limits(burst: u32, extra: &str) -> String {
    format!("[cache]\nenabled = false\n[rate_limit]\nrate = 0.1\nburst = {burst}\n{extra}")
}

async fn get(edge: &Edge, key: &str, path: &str) -> reqwest::Response {
    client()
        .get(edge.url(path))
        .headers(auth(key))
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn test_burst_plus_n_gets_exactly_n_429s_that_never_reach_origin() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &limits(10, ""));
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

#[tokio::test]
async fn test_other_key_is_unaffected_by_a_limited_key() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &limits(3, ""));
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

#[tokio::test]
async fn test_count_upstream_lets_cache_hits_through() {
    let mock = Mock::start();
    let edge = Edge::start(
        &mock.url(),
        "[rate_limit]\nrate = 0.1\nburst = 2\ncount = \"upstream\"\n",
    );
    // One miss spends one token; hits of the same URL are free.
    for _ in 0..10 {
        assert_eq!(get(&edge, "demo-read", ASSETS).await.status(), 200);
    }
    assert_eq!(mock.requests().await, 1);
    // Misses spend the rest.
    assert_eq!(
        get(&edge, "demo-read", &format!("{ASSETS}?page=2"))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&edge, "demo-read", &format!("{ASSETS}?page=3"))
            .await
            .status(),
        429
    );
    // Hits still flow while the key is limited for upstream-bound requests.
    assert_eq!(get(&edge, "demo-read", ASSETS).await.status(), 200);
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

/// Key rotation (docs/SECURITY.md, "Rate-limit evasion"): the gateway cannot tell a valid key
/// from an invalid one without the origin, so every fresh key gets a fresh quota and its first
/// request reaches the origin (which answers 401, never stored). One invalid key repeated is
/// limited like any key: past its burst it gets 429 without an origin request.
#[tokio::test]
async fn test_rotated_keys_each_cost_one_origin_request_repeated_ones_are_limited() {
    let mock = Mock::start();
    // The cache on: a 401 is not stored either, so nothing answers for the origin.
    let edge = Edge::start(&mock.url(), "[rate_limit]\nrate = 0.1\nburst = 2\n");
    for i in 0..5 {
        let r = get(&edge, &format!("sk-rotated-{i}"), ASSETS).await;
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.expect("envelope");
        assert_eq!(v["error"]["code"], "INVALID_API_KEY");
    }
    assert_eq!(mock.requests().await, 5, "one origin request per fresh key");
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(get(&edge, "sk-rotated-0", ASSETS).await.status().as_u16());
        }
        v
    };
    // sk-rotated-0 used 1 of its burst of 2 above.
    assert_eq!(statuses, [401, 429, 429, 429]);
    assert_eq!(mock.requests().await, 6, "a 429 never reaches the origin");
}
