//! Fleet-wide invalidation through Redis pub/sub: a write or an admin purge on one instance
//! makes the other instances' cached reads fresh, and a Redis outage never blocks writes.

mod common;

use raster_edge::metrics;

use std::time::{Duration, Instant};

use common::{auth, client, Edge, Mock, Redis};
use serde_json::{json, Value};

const LIB: &str = "/organizations/monogram-labs/libraries/barcelona";

fn fleet_config(redis: &Redis) -> String {
    format!(
        "[rate_limit]\nenabled = false\n[admin]\ntoken = \"admin-secret\"\n[redis]\nurl = \"{}\"\ninvalidation = true\n[[cache.routes]]\nname = \"assets\"\npath = \"/organizations/{{org}}/libraries/{{library}}/assets\"\nttl = \"300s\"\n",
        redis.url()
    )
}

async fn x_cache(edge: &Edge, path: &str) -> (String, Value) {
    let r = client()
        .get(edge.url(path))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    let x = r
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (x, r.json().await.unwrap())
}

/// Polls `path` on `edge` until it is no longer served from cache (the fleet message arrived).
async fn wait_until_miss(edge: &Edge, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (x, body) = x_cache(edge, path).await;
        if x == "MISS" {
            return body;
        }
        assert!(Instant::now() < deadline, "still {x} on the other instance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Both instances have the link up once a purge on one reaches the other.
async fn wait_for_link(a: &Edge, b: &Edge, probe: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        x_cache(b, probe).await;
        client()
            .post(a.admin_url("/admin/purge"))
            .bearer_auth("admin-secret")
            .json(&json!({"url": probe}))
            .send()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if x_cache(b, probe).await.0 == "MISS" {
            return;
        }
        assert!(Instant::now() < deadline, "fleet link never came up");
    }
}

#[tokio::test]
async fn test_fleet_write_on_one_instance_invalidates_the_other() {
    let redis = Redis::start();
    let mock = Mock::start();
    let a = Edge::start(&mock.url(), &fleet_config(&redis));
    let b = Edge::start(&mock.url(), &fleet_config(&redis));
    wait_for_link(&a, &b, &format!("{LIB}/assets?probe=1")).await;

    let read = format!("{LIB}/assets?pageSize=3");
    assert_eq!(x_cache(&b, &read).await.0, "MISS");
    assert_eq!(x_cache(&b, &read).await.0, "HIT");

    let r = client()
        .post(a.url(&format!("{LIB}/assets/tag")))
        .headers(auth("demo-write"))
        .json(&json!({"assetIds": ["bcn-0001"], "tags": ["fleet-tag"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let body = wait_until_miss(&b, &read).await;
    assert!(body.to_string().contains("fleet-tag"), "{body}");
    assert!(
        b.metric(
            metrics::CACHE_INVALIDATIONS_TOTAL,
            &[("reason", metrics::InvalidationReason::Fleet.as_str())]
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn test_fleet_admin_purge_reaches_every_instance() {
    let redis = Redis::start();
    let mock = Mock::start();
    let a = Edge::start(&mock.url(), &fleet_config(&redis));
    let b = Edge::start(&mock.url(), &fleet_config(&redis));
    wait_for_link(&a, &b, &format!("{LIB}/assets?probe=2")).await;
    let read = format!("{LIB}/assets?page=2");
    x_cache(&b, &read).await;
    assert_eq!(x_cache(&b, &read).await.0, "HIT");
    let r = client()
        .post(a.admin_url("/admin/purge"))
        .bearer_auth("admin-secret")
        .json(&json!({"scope": LIB}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_until_miss(&b, &read).await;
}

#[tokio::test]
async fn test_fleet_redis_down_never_blocks_writes_and_local_invalidation() {
    let mut redis = Redis::start();
    let mock = Mock::start();
    let a = Edge::start(&mock.url(), &fleet_config(&redis));
    redis.proc.kill();
    let read = format!("{LIB}/assets?pageSize=4");
    x_cache(&a, &read).await;
    assert_eq!(x_cache(&a, &read).await.0, "HIT");
    let started = Instant::now();
    let r = client()
        .post(a.url(&format!("{LIB}/assets/tag")))
        .headers(auth("demo-write"))
        .json(&json!({"assetIds": ["bcn-0002"], "tags": ["offline-tag"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(started.elapsed() < Duration::from_secs(2));
    let (x, body) = x_cache(&a, &read).await;
    assert_eq!(x, "MISS");
    assert!(body.to_string().contains("offline-tag"));
}
