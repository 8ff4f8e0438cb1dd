//! Fleet-wide invalidation through Redis pub/sub: a write or an admin purge on one instance
//! makes the other instances' cached reads fresh, and a Redis outage never blocks writes.

mod common;

use raster_edge::metrics;

use std::time::{Duration, Instant};

use common::inproc::InProcess;
use common::{auth, client, CutProxy, Edge, Mock, Redis};
use serde_json::{json, Value};

const LIB: &str = "/organizations/monogram-labs/libraries/barcelona";

fn fleet_config(redis: &Redis) -> String {
    fleet_config_url(&redis.url())
}

fn fleet_config_url(url: &str) -> String {
    format!(
        "[rate_limit]\nenabled = false\n[admin]\ntoken = \"admin-secret\"\n[[cache.routes]]\nname = \"assets\"\npath = \"/organizations/{{org}}/libraries/{{library}}/assets\"\nttl = \"300s\"\n[redis]\nurl = \"{url}\"\ninvalidation = true\n"
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

/// Waits until `edge` reports its generations synced (`want`) or not.
async fn wait_synced(edge: &Edge, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = edge.metric(metrics::FLEET_SYNCED, &[]).await;
        if (v == 1.0) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fleet_synced never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tag(edge: &Edge, asset: &str, tag: &str) {
    let r = client()
        .post(edge.url(&format!("{LIB}/assets/tag")))
        .headers(auth("demo-write"))
        .json(&json!({"assetIds": [asset], "tags": [tag]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

#[tokio::test]
async fn test_fleet_bump_missed_while_cut_off_is_applied_on_reconnect() {
    let redis = Redis::start();
    let proxy = CutProxy::start(([127, 0, 0, 1], redis.port).into());
    let mock = Mock::start();
    let a = Edge::start(&mock.url(), &fleet_config(&redis));
    // B reaches Redis only through the proxy the test cuts.
    let b = Edge::start(&mock.url(), &fleet_config_url(&proxy.url()));
    wait_for_link(&a, &b, &format!("{LIB}/assets?probe=3")).await;
    wait_synced(&b, true).await;

    let read = format!("{LIB}/assets?pageSize=5");
    assert_eq!(x_cache(&b, &read).await.0, "MISS");
    assert_eq!(x_cache(&b, &read).await.0, "HIT");

    proxy.cut();
    wait_synced(&b, false).await;
    tag(&a, "bcn-0003", "written-while-cut").await;
    // The default policy (`ttl`) keeps serving B's copy while B cannot know better: this is
    // the bump pub/sub alone would lose for good.
    let (x, body) = x_cache(&b, &read).await;
    assert_eq!(x, "HIT");
    assert!(!body.to_string().contains("written-while-cut"));

    proxy.restore();
    wait_synced(&b, true).await;
    // Reconciled from Redis before counting itself synced: the very next read is fresh.
    let (x, body) = x_cache(&b, &read).await;
    assert_eq!(x, "MISS");
    assert!(body.to_string().contains("written-while-cut"), "{body}");
    assert!(
        b.metric(
            metrics::FLEET_RECONCILES_TOTAL,
            &[("reason", metrics::ReconcileReason::Reconnect.as_str())]
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn test_fleet_instance_started_later_reads_generations_from_redis() {
    let redis = Redis::start();
    let mock = Mock::start();
    let a = Edge::start(&mock.url(), &fleet_config(&redis));
    wait_synced(&a, true).await;
    tag(&a, "bcn-0004", "before-b").await;
    let b = Edge::start(&mock.url(), &fleet_config(&redis));
    wait_synced(&b, true).await;
    // B never received the bump's message, yet its generation for the library is the fleet's.
    assert!(
        b.metric(
            metrics::CACHE_INVALIDATIONS_TOTAL,
            &[("reason", metrics::InvalidationReason::Fleet.as_str())]
        )
        .await
            >= 1.0,
        "the start-up reconciliation applied A's bumps"
    );
}

#[tokio::test]
async fn test_fleet_outage_policy_max_age_refuses_old_hits_while_cut_off() {
    let redis = Redis::start();
    let proxy = CutProxy::start(([127, 0, 0, 1], redis.port).into());
    let mock = Mock::start();
    let a = Edge::start(&mock.url(), &fleet_config(&redis));
    let cfg = format!(
        "{}invalidation_outage = \"max-age\"\ninvalidation_outage_max_age = \"10s\"\n",
        fleet_config_url(&proxy.url())
    );
    // In process, so the test can age B's entries instead of sleeping.
    let b = InProcess::start(&mock.url(), &cfg);
    let b_url = |p: &str| format!("http://{}{}", b.addr, p);
    let get = |p: String| async move {
        let r = client()
            .get(p)
            .headers(auth("demo-read"))
            .send()
            .await
            .unwrap();
        let x = r.headers()["x-cache"].to_str().unwrap().to_string();
        (x, r.text().await.unwrap())
    };
    let read = format!("{LIB}/assets?pageSize=6");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.cache().fleet_allows_hit(Duration::from_secs(3600)) {
        assert!(Instant::now() < deadline, "B never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(b_url(&read)).await.0, "MISS");
    assert_eq!(get(b_url(&read)).await.0, "HIT");

    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.cache().fleet_allows_hit(Duration::from_secs(3600)) {
        assert!(Instant::now() < deadline, "B never noticed the cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tag(&a, "bcn-0005", "while-b-is-cut").await;
    // Young enough: served.
    assert_eq!(get(b_url(&read)).await.0, "HIT");
    // 30 s old (the route's TTL is 300 s): not served while B cannot know, refetched.
    b.age(Duration::from_secs(30));
    let (x, body) = get(b_url(&read)).await;
    assert_ne!(x, "HIT");
    assert!(body.contains("while-b-is-cut"), "{body}");
    // The refetched copy is young again, so it is served.
    assert_eq!(get(b_url(&read)).await.0, "HIT");
}
