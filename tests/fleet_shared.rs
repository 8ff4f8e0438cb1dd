//! The shared tier (`[cache.shared]`) and fleet-wide coalescing, against real gateways, a real
//! `redis-server` and `raster-mock`: an instance serves what another fetched, per-key isolation
//! and invalidation hold across the tier, a corrupt value is a miss, Redis down is local-only
//! caching, and a cold key asked on three instances at once costs the origin one request.

mod common;

use std::time::{Duration, Instant};

use common::{auth, client, Edge, Mock, Redis};
use raster_edge::metrics;
use serde_json::json;

const LIB: &str = "/organizations/monogram-labs/libraries/barcelona";

fn shared_config(redis: &Redis) -> String {
    format!(
        "[rate_limit]\nenabled = false\n[admin]\ntoken = \"admin-secret\"\n[edge]\nkey_id_secret = \"fleet-test-secret-0123456789abcdef\"\n[cache]\nlock_timeout = \"3s\"\n[[cache.routes]]\nname = \"assets\"\npath = \"/organizations/{{org}}/libraries/{{library}}/assets\"\nttl = \"300s\"\n[cache.shared]\nenabled = true\n[redis]\nurl = \"{}\"\ninvalidation = true\ntimeout = \"200ms\"\n",
        redis.url()
    )
}

async fn get(edge: &Edge, path: &str, key: &str) -> (String, String) {
    let r = client()
        .get(edge.url(path))
        .headers(auth(key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let x = r
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (x, r.text().await.unwrap())
}

async fn wait_synced(edges: &[&Edge]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for e in edges {
        while e.metric(metrics::FLEET_SYNCED, &[]).await != 1.0 {
            assert!(Instant::now() < deadline, "an instance never synced");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn shared(edge: &Edge, result: metrics::SharedLookup) -> f64 {
    edge.metric(
        metrics::SHARED_LOOKUPS_TOTAL,
        &[("result", result.as_str())],
    )
    .await
}

/// Waits until `n` values were written to the shared tier by `edge` (writes are background).
async fn wait_stored(edge: &Edge, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge
        .metric(
            metrics::SHARED_STORES_TOTAL,
            &[("result", metrics::SharedStore::Stored.as_str())],
        )
        .await
        < n
    {
        assert!(
            Instant::now() < deadline,
            "nothing stored in the shared tier"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn redis_conn(redis: &Redis) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

#[tokio::test]
async fn test_shared_tier_serves_what_another_instance_fetched() {
    let redis = Redis::start();
    let mock = Mock::start();
    let a = Edge::start(&mock.url(), &shared_config(&redis));
    let b = Edge::start(&mock.url(), &shared_config(&redis));
    wait_synced(&[&a, &b]).await;
    let read = format!("{LIB}/assets?pageSize=7");

    let before = mock.requests().await;
    let (x, body_a) = get(&a, &read, "demo-read").await;
    assert_eq!(x, "MISS");
    wait_stored(&a, 1.0).await;
    let (x, body_b) = get(&b, &read, "demo-read").await;
    assert_eq!(x, "HIT", "B found A's response in Redis");
    assert_eq!(body_a, body_b);
    assert_eq!(mock.requests().await - before, 1, "one origin request");
    assert!(shared(&b, metrics::SharedLookup::Hit).await >= 1.0);
    assert!(
        b.metric(
            metrics::SHARED_BYTES_TOTAL,
            &[("direction", metrics::SharedDirection::Read.as_str())]
        )
        .await
            > 0.0
    );
    // Now local on B.
    assert_eq!(get(&b, &read, "demo-read").await.0, "HIT");

    // Per-key isolation holds across the tier: another key's read goes to the origin.
    let (x, _) = get(&b, &read, "demo-write").await;
    assert_eq!(x, "MISS");
    assert_eq!(mock.requests().await - before, 2);

    // A write on A moves the whole fleet to new keys: B's next read is the origin's.
    let r = client()
        .post(a.url(&format!("{LIB}/assets/tag")))
        .headers(auth("demo-write"))
        .json(&json!({"assetIds": ["bcn-0006"], "tags": ["shared-tag"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (x, body) = get(&b, &read, "demo-read").await;
        if x != "HIT" {
            assert!(body.contains("shared-tag"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "B kept serving the old entry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn test_shared_tier_corrupt_value_is_a_miss_never_served() {
    let redis = Redis::start();
    let mock = Mock::start();
    let a = Edge::start(&mock.url(), &shared_config(&redis));
    wait_synced(&[&a]).await;
    let read = format!("{LIB}/assets?pageSize=8");
    get(&a, &read, "demo-read").await;
    wait_stored(&a, 1.0).await;
    let mut conn = redis_conn(&redis);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("raster-edge:obj:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let mut value: Vec<u8> = redis::cmd("GET").arg(&keys[0]).query(&mut conn).unwrap();
    let mid = value.len() / 2;
    value[mid] ^= 0x01;
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg(value)
        .query(&mut conn)
        .unwrap();

    let b = Edge::start(&mock.url(), &shared_config(&redis));
    wait_synced(&[&b]).await;
    let before = mock.requests().await;
    let (x, body) = get(&b, &read, "demo-read").await;
    assert_eq!(x, "MISS");
    assert!(body.contains("\"data\""), "{body}");
    assert_eq!(mock.requests().await - before, 1);
    assert!(shared(&b, metrics::SharedLookup::Corrupt).await >= 1.0);
}

#[tokio::test]
async fn test_shared_tier_redis_down_is_local_only_caching() {
    let mut redis = Redis::start();
    let mock = Mock::start();
    let a = Edge::start(&mock.url(), &shared_config(&redis));
    wait_synced(&[&a]).await;
    redis.proc.kill();
    let read = format!("{LIB}/assets?pageSize=9");
    let started = Instant::now();
    assert_eq!(get(&a, &read, "demo-read").await.0, "MISS");
    assert_eq!(get(&a, &read, "demo-read").await.0, "HIT");
    assert!(started.elapsed() < Duration::from_secs(2));
    let errors = shared(&a, metrics::SharedLookup::Error).await
        + shared(&a, metrics::SharedLookup::Skipped).await;
    assert!(errors >= 1.0);
}

#[tokio::test]
async fn test_shared_tier_cold_key_on_three_instances_costs_one_origin_request() {
    let redis = Redis::start();
    let mock = Mock::start();
    let cfg = shared_config(&redis);
    let edges = [
        Edge::start(&mock.url(), &cfg),
        Edge::start(&mock.url(), &cfg),
        Edge::start(&mock.url(), &cfg),
    ];
    wait_synced(&edges.iter().collect::<Vec<_>>()).await;
    // A slow origin, so every instance asks while the first fetch is in flight.
    mock.configure(json!({"latency_ms": 400})).await;
    for round in 0..3 {
        let read = format!("{LIB}/assets?pageSize=10&round={round}");
        let before = mock.requests().await;
        let mut tasks = Vec::new();
        for e in &edges {
            for _ in 0..3 {
                let url = e.url(&read);
                tasks.push(tokio::spawn(async move {
                    let r = client()
                        .get(url)
                        .headers(auth("demo-read"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.text().await.unwrap()
                }));
            }
        }
        let bodies: Vec<String> = futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert!(bodies.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(
            mock.requests().await - before,
            1,
            "round {round}: nine requests on three instances, one origin request"
        );
    }
    let mut filled = 0.0;
    for e in &edges {
        filled += e
            .metric(
                metrics::SHARED_LEASES_TOTAL,
                &[("result", metrics::LeaseResult::Filled.as_str())],
            )
            .await;
    }
    assert!(filled >= 6.0, "two waiting instances per round: {filled}");
}
