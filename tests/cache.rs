//! The HTTP cache end to end: the real gateway in front of raster-mock (or a tiny raw origin),
//! each test with its own processes on ephemeral ports. Short TTLs keep the binary fast.

mod common;

use raster_edge::metrics;

use std::time::{Duration, Instant};

use common::inproc::InProcess;
use common::{auth, client, Edge, Mock, RawOrigin, Target};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

const ORG: &str = "/organizations/monogram-labs";
const BCN: &str = "/organizations/monogram-labs/libraries/barcelona";
const LIS: &str = "/organizations/monogram-labs/libraries/lisbon";
const ADMIN_TOKEN: &str = "test-admin-token";

/// Routes for every Raster read, with TTLs long enough not to expire mid-test.
const ROUTES: &str = common::RASTER_ROUTES_60S;

/// A config: no rate limit, an admin token, `cache` lines added to `[cache]`, then `routes`.
fn config(cache: &str, routes: &str) -> String {
    format!(
        "[rate_limit]\nenabled = false\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n[cache]\nenabled = true\n{cache}\n{routes}"
    )
}

fn start(cache: &str, routes: &str) -> (Mock, Edge) {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(cache, routes));
    (mock, edge)
}

/// Like [`start`], with the gateway in the test process, so the test can age stored entries
/// instead of sleeping through their TTLs.
fn start_in_process(cache: &str, routes: &str) -> (Mock, InProcess) {
    let mock = Mock::start();
    let edge = InProcess::start(&mock.url(), &config(cache, routes));
    (mock, edge)
}

/// Past a 1 s TTL with room to spare (whole seconds are what `Age` and freshness count).
const PAST_TTL: Duration = Duration::from_secs(2);

/// Requests `path` until the cache answers a fresh hit (a background refresh landed), bounded.
async fn until_hit(edge: &impl Target, path: &str, key: &str) -> Got {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = get(edge, path, key).await;
        if g.x_cache() == "HIT" || Instant::now() > deadline {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One route with the given TTL line(s), for freshness tests.
fn assets_route(extra: &str) -> String {
    format!(
        "[[cache.routes]]\nname = \"assets\"\npath = \"/organizations/{{org}}/libraries/{{library}}/assets\"\n{extra}\n"
    )
}

struct Got {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn h(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn x_cache(&self) -> &str {
        self.h("x-cache")
    }
}

async fn send(req: reqwest::RequestBuilder) -> Got {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap_or_default();
    Got {
        status,
        headers,
        body,
    }
}

async fn get(edge: &impl Target, path: &str, key: &str) -> Got {
    send(client().get(edge.url(path)).headers(auth(key))).await
}

async fn get_with(
    edge: &impl Target,
    path: &str,
    key: &str,
    extra: &[(&'static str, &str)],
) -> Got {
    let mut h = auth(key);
    for (k, v) in extra {
        h.insert(*k, v.parse().expect("header value"));
    }
    send(client().get(edge.url(path)).headers(h)).await
}

/// The mock's own answer for `key`, bypassing the gateway.
async fn direct(mock: &Mock, path: &str, key: &str) -> Got {
    send(
        client()
            .get(format!("{}{}", mock.url(), path))
            .headers(auth(key)),
    )
    .await
}

async fn mock_stats(mock: &Mock) -> Value {
    let v: Value = client()
        .get(format!("{}/__mock/stats", mock.url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    v["data"].clone()
}

async fn purge(edge: &impl Target, body: Value, token: Option<&str>) -> u16 {
    let mut req = client().post(edge.admin_url("/admin/purge")).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("purge").status().as_u16()
}

async fn write(edge: &impl Target, method: reqwest::Method, path: &str, body: Value) -> Got {
    send(
        client()
            .request(method, edge.url(path))
            .headers(auth("demo-write"))
            .json(&body),
    )
    .await
}

#[tokio::test]
async fn test_cache_miss_then_hit_with_one_upstream_request() {
    let (mock, edge) = start("", ROUTES);
    let path = format!("{BCN}/assets?page=1&pageSize=5");
    let a = get(&edge, &path, "demo-read").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.x_cache(), "MISS");
    assert_eq!(
        a.h("cache-status"),
        "raster-edge; fwd=uri-miss; fwd-status=200; stored"
    );
    let b = get(&edge, &path, "demo-read").await;
    assert_eq!(b.x_cache(), "HIT");
    assert!(
        b.h("cache-status").starts_with("raster-edge; hit; ttl="),
        "{}",
        b.h("cache-status")
    );
    assert!(b.headers.contains_key("age"));
    assert_eq!(b.body, a.body);
    assert_eq!(b.h("etag"), a.h("etag"));
    assert!(
        b.h("vary").contains("Api-Version"),
        "Vary kept: {}",
        b.h("vary")
    );
    assert_eq!(mock.requests().await, 1);
    assert!(
        edge.metric(
            metrics::CACHE_LOOKUPS_TOTAL,
            &[
                ("result", metrics::LookupResult::Hit.as_str()),
                ("route", "assets")
            ]
        )
        .await
            >= 1.0
    );
    assert!(edge.metric(metrics::CACHE_ENTRIES, &[]).await >= 1.0);
}

#[tokio::test]
async fn test_cache_different_key_or_api_version_misses() {
    let (mock, edge) = start("", ROUTES);
    let path = format!("{BCN}/tags");
    assert_eq!(get(&edge, &path, "demo-read").await.x_cache(), "MISS");
    assert_eq!(get(&edge, &path, "demo-write").await.x_cache(), "MISS");
    assert_eq!(get(&edge, &path, "demo-read").await.x_cache(), "HIT");
    let other = get_with(&edge, &path, "demo-read", &[("api-version", "2026-07-08")]).await;
    assert_eq!(other.x_cache(), "MISS");
    assert_eq!(mock.requests().await, 3);
}

#[tokio::test]
async fn test_cache_keys_never_see_each_others_bodies_on_any_read_route() {
    let reads = [
        "/me".to_string(),
        format!("{ORG}/libraries"),
        format!("{BCN}/assets?pageSize=3"),
        format!("{LIS}/assets?pageSize=3"),
        format!("{BCN}/assets/bcn-0001"),
        format!("{LIS}/assets/lis-0001"),
        format!("{BCN}/tags"),
        format!("{LIS}/tags"),
        format!("{ORG}/search/assets?q=a"),
    ];
    for order in [
        ["demo-read", "demo-barcelona"],
        ["demo-barcelona", "demo-read"],
    ] {
        let (mock, edge) = start("", ROUTES);
        for path in &reads {
            for key in order {
                // Twice: the second answer comes from the cache when storable.
                for _ in 0..2 {
                    let via = get(&edge, path, key).await;
                    let want = direct(&mock, path, key).await;
                    assert_eq!(via.status, want.status, "{key} {path}");
                    assert_eq!(via.body, want.body, "{key} {path}: body of another key?");
                }
            }
        }
    }
}

#[tokio::test]
async fn test_cache_vary_on_another_request_header_selects_variants() {
    let (mock, edge) = start("", ROUTES);
    mock.configure(json!({"headers": {"Vary": "Api-Version, Accept-Language"}}))
        .await;
    let path = format!("{BCN}/tags");
    let fr = [("accept-language", "fr")];
    let en = [("accept-language", "en")];
    assert_eq!(
        get_with(&edge, &path, "demo-read", &fr).await.x_cache(),
        "MISS"
    );
    assert_eq!(
        get_with(&edge, &path, "demo-read", &fr).await.x_cache(),
        "HIT"
    );
    assert_eq!(
        get_with(&edge, &path, "demo-read", &en).await.x_cache(),
        "MISS"
    );
    assert_eq!(
        get_with(&edge, &path, "demo-read", &en).await.x_cache(),
        "HIT"
    );
    assert_eq!(
        get_with(&edge, &path, "demo-read", &fr).await.x_cache(),
        "HIT"
    );
    assert_eq!(mock.requests().await, 2);
}

#[tokio::test]
async fn test_cache_vary_star_not_stored() {
    let (mock, edge) = start("", ROUTES);
    mock.configure(json!({"headers": {"Vary": "*"}})).await;
    let path = format!("{BCN}/tags");
    get(&edge, &path, "demo-read").await;
    let b = get(&edge, &path, "demo-read").await;
    assert_ne!(b.x_cache(), "HIT");
    assert_eq!(mock.requests().await, 2);
}

#[tokio::test]
async fn test_cache_no_store_never_stored() {
    let (mock, edge) = start("", ROUTES);
    mock.configure(json!({"cache_control": "no-store"})).await;
    let path = format!("{BCN}/tags");
    for _ in 0..3 {
        let g = get(&edge, &path, "demo-read").await;
        assert_eq!(g.status, 200);
        assert_ne!(g.x_cache(), "HIT");
    }
    assert_eq!(mock.requests().await, 3);
}

#[tokio::test]
async fn test_cache_private_stored_per_key_but_not_shared() {
    let (mock, edge) = start("", ROUTES);
    mock.configure(json!({"cache_control": "private, max-age=60"}))
        .await;
    let path = format!("{BCN}/tags");
    get(&edge, &path, "demo-read").await;
    assert_eq!(get(&edge, &path, "demo-read").await.x_cache(), "HIT");

    let mock2 = Mock::start();
    let shared = Edge::start(&mock2.url(), &config("share = \"shared\"", ROUTES));
    mock2
        .configure(json!({"cache_control": "private, max-age=60"}))
        .await;
    get(&shared, &path, "demo-read").await;
    assert_ne!(get(&shared, &path, "demo-read").await.x_cache(), "HIT");
    assert_eq!(mock.requests().await, 1);
    assert_eq!(mock2.requests().await, 2);
}

#[tokio::test]
async fn test_cache_shared_mode_needs_public_or_s_maxage_for_authorized_requests() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config("share = \"shared\"", ROUTES));
    let path = format!("{BCN}/tags");
    // Route TTL alone does not make an authorized response storable in a shared cache.
    get(&edge, &path, "demo-read").await;
    assert_ne!(get(&edge, &path, "demo-read").await.x_cache(), "HIT");
    mock.configure(json!({"cache_control": "max-age=1, s-maxage=60"}))
        .await;
    let p2 = format!("{LIS}/tags");
    get(&edge, &p2, "demo-read").await;
    let hit = get(&edge, &p2, "demo-read").await;
    assert_eq!(hit.x_cache(), "HIT");
    // s-maxage is the freshness in shared mode.
    let ttl: i64 = hit
        .h("cache-status")
        .rsplit("ttl=")
        .next()
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(ttl > 30, "{}", hit.h("cache-status"));
    // Shared: another key gets the shared entry.
    assert_eq!(get(&edge, &p2, "demo-write").await.x_cache(), "HIT");
}

#[tokio::test]
async fn test_cache_no_cache_response_revalidates_every_time() {
    let (mock, edge) = start("", ROUTES);
    mock.configure(json!({"cache_control": "no-cache"})).await;
    let path = format!("{BCN}/tags");
    assert_eq!(get(&edge, &path, "demo-read").await.x_cache(), "MISS");
    let b = get(&edge, &path, "demo-read").await;
    assert_eq!(b.x_cache(), "REVALIDATED");
    assert_eq!(b.status, 200);
    let s = mock_stats(&mock).await;
    assert_eq!(s["requests"], 2);
    assert_eq!(s["not_modified"], 1);
}

#[tokio::test]
async fn test_cache_origin_max_age_beats_route_ttl() {
    let (mock, edge) = start_in_process("", &assets_route("ttl = \"60s\""));
    mock.configure(json!({"cache_control": "max-age=1", "etag": false}))
        .await;
    let path = format!("{BCN}/assets?pageSize=2");
    get(&edge, &path, "demo-read").await;
    assert_eq!(get(&edge, &path, "demo-read").await.x_cache(), "HIT");
    edge.age(PAST_TTL);
    assert_eq!(get(&edge, &path, "demo-read").await.x_cache(), "MISS");
    assert_eq!(mock.requests().await, 2);
}

#[tokio::test]
async fn test_cache_expires_header_handling() {
    let (mock, edge) = start("", &assets_route("ttl = \"60s\""));
    // An Expires in the past (or invalid) is already stale: not stored without a validator.
    mock.configure(json!({"headers": {"Expires": "0"}, "etag": false}))
        .await;
    let path = format!("{BCN}/assets?pageSize=2");
    get(&edge, &path, "demo-read").await;
    assert_ne!(get(&edge, &path, "demo-read").await.x_cache(), "HIT");
    // A future Expires gives freshness even without a route rule.
    let (mock2, edge2) = start("", "");
    let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    mock2
        .configure(json!({"headers": {"Expires": future}}))
        .await;
    get(&edge2, "/me", "demo-read").await;
    assert_eq!(get(&edge2, "/me", "demo-read").await.x_cache(), "HIT");
    assert_eq!(mock.requests().await, 2);
    assert_eq!(mock2.requests().await, 1);
}

#[tokio::test]
async fn test_cache_route_ttl_expiry_then_conditional_revalidation_304() {
    let (mock, edge) = start_in_process("", &assets_route("ttl = \"1s\""));
    let path = format!("{BCN}/assets?pageSize=2");
    let a = get(&edge, &path, "demo-read").await;
    assert_eq!(get(&edge, &path, "demo-read").await.x_cache(), "HIT");
    edge.age(PAST_TTL);
    let c = get(&edge, &path, "demo-read").await;
    assert_eq!(c.x_cache(), "REVALIDATED");
    assert_eq!(c.status, 200);
    assert_eq!(c.body, a.body);
    // The 304 refreshed freshness: a hit again.
    assert_eq!(get(&edge, &path, "demo-read").await.x_cache(), "HIT");
    let s = mock_stats(&mock).await;
    assert_eq!(s["requests"], 2);
    assert_eq!(s["conditional"], 1);
    assert_eq!(s["not_modified"], 1);
}

#[tokio::test]
async fn test_cache_404_negative_ttl() {
    let (mock, edge) = start_in_process("negative_ttl = \"1s\"", ROUTES);
    let path = format!("{BCN}/assets/does-not-exist");
    let a = get(&edge, &path, "demo-read").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.x_cache(), "MISS");
    let b = get(&edge, &path, "demo-read").await;
    assert_eq!((b.status, b.x_cache()), (404, "HIT"));
    edge.age(PAST_TTL);
    assert_eq!(get(&edge, &path, "demo-read").await.x_cache(), "MISS");
    assert_eq!(mock.requests().await, 2);
}

#[tokio::test]
async fn test_cache_401_403_429_5xx_never_stored() {
    let (mock, edge) = start("", ROUTES);
    let path = format!("{BCN}/tags");
    // A key the origin does not know: 401 from the origin.
    for _ in 0..2 {
        let g = get(&edge, &path, "unknown-key").await;
        assert_eq!(g.status, 401);
        assert_ne!(g.x_cache(), "HIT");
    }
    let mut expected = 2;
    for status in [403, 429, 500, 502, 503] {
        mock.configure(json!({ "status": status })).await;
        for _ in 0..2 {
            let g = get(&edge, &path, "demo-read").await;
            assert_ne!(g.x_cache(), "HIT", "{status}");
        }
        expected += 2;
    }
    assert_eq!(mock.requests().await, expected);
}

#[tokio::test]
async fn test_cache_oversized_object_streamed_not_stored() {
    let (mock, edge) = start("max_object_size = \"2KiB\"", ROUTES);
    let path = format!("{BCN}/assets?pageSize=50");
    let want = direct(&mock, &path, "demo-read").await;
    assert!(want.body.len() > 4096);
    for _ in 0..2 {
        let g = get(&edge, &path, "demo-read").await;
        assert_eq!(g.status, 200);
        assert_eq!(g.body, want.body, "streamed through whole");
        assert_ne!(g.x_cache(), "HIT");
    }
    assert_eq!(mock.requests().await, 3);
}

#[tokio::test]
async fn test_cache_memory_bound_respected_under_churn() {
    let bound = 64 * 1024;
    let (_mock, edge) = start("max_memory = \"64KiB\"", ROUTES);
    for page in 1..=150 {
        let g = get(
            &edge,
            &format!("{BCN}/assets?pageSize=2&page={page}"),
            "demo-read",
        )
        .await;
        assert_eq!(g.status, 200);
    }
    let bytes = edge.metric(metrics::CACHE_BYTES, &[]).await;
    assert!(bytes > 0.0 && bytes <= bound as f64, "cache bytes {bytes}");
    assert!(
        edge.metric(
            metrics::CACHE_EVICTIONS_TOTAL,
            &[("cause", metrics::EvictionCause::Size.as_str())]
        )
        .await
            > 0.0
    );
}

#[tokio::test]
async fn test_cache_client_conditional_gets_304_from_cache() {
    let (mock, edge) = start("", ROUTES);
    let path = format!("{BCN}/tags");
    let a = get(&edge, &path, "demo-read").await;
    let etag = a.h("etag").to_string();
    assert!(!etag.is_empty());
    let b = get_with(&edge, &path, "demo-read", &[("if-none-match", &etag)]).await;
    assert_eq!(b.status, 304);
    assert_eq!(b.x_cache(), "HIT");
    assert!(b.body.is_empty());
    let c = get_with(&edge, &path, "demo-read", &[("if-none-match", "\"other\"")]).await;
    assert_eq!((c.status, c.body.clone()), (200, a.body.clone()));
    assert_eq!(mock.requests().await, 1);
}

#[tokio::test]
async fn test_cache_head_served_from_cached_get() {
    let (mock, edge) = start("", ROUTES);
    let path = format!("{BCN}/tags");
    let a = get(&edge, &path, "demo-read").await;
    let h = send(client().head(edge.url(&path)).headers(auth("demo-read"))).await;
    assert_eq!((h.status, h.x_cache()), (200, "HIT"));
    assert!(h.body.is_empty());
    assert_eq!(h.h("content-length"), a.body.len().to_string());
    // A cold HEAD is forwarded as HEAD (RFC 9110 §9.3.2) and stores nothing, so the next GET
    // goes to the origin, and the HEAD after it is a hit from the stored GET.
    let p2 = format!("{LIS}/tags");
    let h2 = send(client().head(edge.url(&p2)).headers(auth("demo-read"))).await;
    assert_eq!(h2.status, 200);
    assert_eq!(get(&edge, &p2, "demo-read").await.x_cache(), "MISS");
    let h3 = send(client().head(edge.url(&p2)).headers(auth("demo-read"))).await;
    assert_eq!(h3.x_cache(), "HIT");
    assert_eq!(mock.requests().await, 3);
}

#[tokio::test]
async fn test_cache_stale_while_revalidate_serves_stale_then_refreshes_once() {
    let (mock, edge) = start_in_process(
        "",
        &assets_route("ttl = \"1s\"\nstale_while_revalidate = \"30s\""),
    );
    mock.configure(json!({"latency_ms": 300})).await;
    let path = format!("{BCN}/assets?pageSize=2");
    get(&edge, &path, "demo-read").await;
    edge.age(PAST_TTL);
    for _ in 0..5 {
        let t = Instant::now();
        let g = get(&edge, &path, "demo-read").await;
        assert_eq!(g.status, 200);
        assert_eq!(g.x_cache(), "STALE", "{}", g.h("cache-status"));
        assert!(g.h("cache-status").contains("stale-while-revalidate"));
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "stale answered at once"
        );
    }
    assert_eq!(until_hit(&edge, &path, "demo-read").await.x_cache(), "HIT");
    assert_eq!(mock.requests().await, 2, "exactly one background refresh");
}

#[tokio::test]
async fn test_cache_stale_if_error_when_origin_down() {
    let (mock, edge) =
        start_in_process("", &assets_route("ttl = \"1s\"\nstale_if_error = \"60s\""));
    let path = format!("{BCN}/assets?pageSize=2");
    let a = get(&edge, &path, "demo-read").await;
    mock.configure(json!({"down": true})).await;
    edge.age(PAST_TTL);
    let b = get(&edge, &path, "demo-read").await;
    assert_eq!((b.status, b.x_cache()), (200, "STALE"));
    assert_eq!(b.body, a.body);
    assert!(b.h("cache-status").contains("stale-if-error"));
}

#[tokio::test]
async fn test_cache_serve_stale_on_500() {
    let (mock, edge) =
        start_in_process("", &assets_route("ttl = \"1s\"\nstale_if_error = \"60s\""));
    let path = format!("{BCN}/assets?pageSize=2");
    let a = get(&edge, &path, "demo-read").await;
    mock.configure(json!({"status": 500})).await;
    edge.age(PAST_TTL);
    let b = get(&edge, &path, "demo-read").await;
    assert_eq!((b.status, b.x_cache()), (200, "STALE"));
    assert_eq!(b.body, a.body);
}

#[tokio::test]
async fn test_cache_serve_stale_when_origin_unreachable() {
    let (mut mock, edge) =
        start_in_process("", &assets_route("ttl = \"1s\"\nstale_if_error = \"60s\""));
    let path = format!("{BCN}/assets?pageSize=2");
    let a = get(&edge, &path, "demo-read").await;
    mock.proc.kill();
    edge.age(PAST_TTL);
    let b = get(&edge, &path, "demo-read").await;
    assert_eq!((b.status, b.x_cache()), (200, "STALE"));
    assert_eq!(b.body, a.body);
    // Beyond the window it is an error again (no window here: a fresh path).
    let c = get(&edge, &format!("{LIS}/assets"), "demo-read").await;
    assert_eq!(c.status, 502);
}

#[tokio::test]
async fn test_cache_coalesces_100_concurrent_cold_requests_into_one() {
    let (mock, edge) = start("", ROUTES);
    mock.configure(json!({"latency_ms": 400})).await;
    let path = format!("{BCN}/assets?pageSize=5");
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let req = c.get(edge.url(&path)).headers(auth("demo-read"));
        tasks.push(tokio::spawn(async move { send(req).await }));
    }
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let g = t.await.expect("task");
        assert_eq!(g.status, 200);
        bodies.insert(g.body);
    }
    assert_eq!(bodies.len(), 1);
    assert_eq!(mock.requests().await, 1);
    assert!(
        edge.metric(
            metrics::CACHE_LOOKUPS_TOTAL,
            &[("result", metrics::LookupResult::Coalesced.as_str())]
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn test_cache_uncacheable_response_releases_waiters() {
    let (mock, edge) = start("lock_timeout = \"5s\"", ROUTES);
    mock.configure(json!({"latency_ms": 300, "cache_control": "no-store"}))
        .await;
    let path = format!("{BCN}/tags");
    let c = client();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let req = c.get(edge.url(&path)).headers(auth("demo-read"));
        tasks.push(tokio::spawn(async move { send(req).await }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").status, 200);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "waiters were released, not timed out"
    );
    // Remembered as uncacheable: no queueing, straight upstream.
    let g = get(&edge, &path, "demo-read").await;
    assert_eq!(g.x_cache(), "BYPASS");
    assert!(g.h("cache-status").contains("fwd=bypass"));
}

/// Reads to watch: (path, key) with a label.
fn watched() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("me", "/me".to_string(), "demo-read"),
        ("libraries", format!("{ORG}/libraries"), "demo-read"),
        ("search", format!("{ORG}/search/assets?q=a"), "demo-read"),
        (
            "bcn-assets",
            format!("{BCN}/assets?pageSize=3"),
            "demo-read",
        ),
        (
            "bcn-assets-k2",
            format!("{BCN}/assets?pageSize=3"),
            "demo-barcelona",
        ),
        ("bcn-asset", format!("{BCN}/assets/bcn-0002"), "demo-read"),
        ("bcn-tags", format!("{BCN}/tags"), "demo-read"),
        (
            "lis-assets",
            format!("{LIS}/assets?pageSize=3"),
            "demo-read",
        ),
        ("lis-tags", format!("{LIS}/tags"), "demo-read"),
    ]
}

async fn warm(edge: &Edge) {
    for (_, path, key) in watched() {
        get(edge, &path, key).await;
        let g = get(edge, &path, key).await;
        assert_eq!(g.x_cache(), "HIT", "warm {path} {key}");
    }
}

/// The labels of watched reads that are no longer hits.
async fn invalidated(edge: &Edge) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (label, path, key) in watched() {
        if get(edge, &path, key).await.x_cache() != "HIT" {
            out.push(label);
        }
    }
    out
}

fn multipart() -> (String, Vec<u8>) {
    let b = "XBOUNDARYX";
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"new.jpg\"\r\nContent-Type: image/jpeg\r\n\r\nJPEGDATA\r\n--{b}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={b}"),
        body.into_bytes(),
    )
}

#[tokio::test]
async fn test_cache_every_write_route_invalidates_the_right_reads_for_all_keys() {
    let (_mock, edge) = start("", ROUTES);
    let lib_and_org = vec![
        "libraries",
        "search",
        "bcn-assets",
        "bcn-assets-k2",
        "bcn-asset",
        "bcn-tags",
    ];
    let cases: Vec<(&str, reqwest::Method, String, Value, Vec<&str>)> = vec![
        (
            "tag",
            reqwest::Method::POST,
            format!("{BCN}/assets/tag"),
            json!({"assetIds": ["bcn-0002"], "tags": ["t1"]}),
            lib_and_org.clone(),
        ),
        (
            "untag",
            reqwest::Method::POST,
            format!("{BCN}/assets/untag"),
            json!({"assetIds": ["bcn-0002"], "tags": ["t1"]}),
            lib_and_org.clone(),
        ),
        (
            "description",
            reqwest::Method::PATCH,
            format!("{BCN}/assets/bcn-0002/description"),
            json!({"description": "new words"}),
            lib_and_org.clone(),
        ),
        (
            "delete",
            reqwest::Method::DELETE,
            format!("{BCN}/assets"),
            json!({"ids": ["bcn-0003"]}),
            lib_and_org.clone(),
        ),
        (
            "rename",
            reqwest::Method::PATCH,
            BCN.to_string(),
            json!({"name": "Barcelona Two"}),
            vec![
                "me",
                "libraries",
                "search",
                "bcn-assets",
                "bcn-assets-k2",
                "bcn-asset",
                "bcn-tags",
            ],
        ),
        (
            "create",
            reqwest::Method::POST,
            format!("{ORG}/libraries"),
            json!({"name": "Porto"}),
            vec!["me", "libraries", "search"],
        ),
        (
            "transfer",
            reqwest::Method::POST,
            format!("{BCN}/assets/transfer"),
            json!({"targetLibraryId": "lisbon", "assetIds": ["bcn-0004"]}),
            vec![
                "libraries",
                "search",
                "bcn-assets",
                "bcn-assets-k2",
                "bcn-asset",
                "bcn-tags",
                "lis-assets",
                "lis-tags",
            ],
        ),
    ];
    for (name, method, path, body, expected) in cases {
        warm(&edge).await;
        let w = write(&edge, method, &path, body).await;
        assert!(w.status < 300, "{name}: {} {}", w.status, w.body);
        let mut got = invalidated(&edge).await;
        got.sort();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(got, want, "write {name}");
    }

    // Upload (multipart) touches the library and the org.
    warm(&edge).await;
    let (ct, body) = multipart();
    let w = send(
        client()
            .post(edge.url(&format!("{BCN}/assets")))
            .headers(auth("demo-write"))
            .header("content-type", ct)
            .body(body),
    )
    .await;
    assert!(w.status < 300, "upload: {} {}", w.status, w.body);
    let mut got = invalidated(&edge).await;
    got.sort();
    let mut want = lib_and_org.clone();
    want.sort();
    assert_eq!(got, want, "upload");
}

#[tokio::test]
async fn test_cache_transfer_invalidates_both_libraries_and_reads_are_fresh() {
    let (mock, edge) = start("", ROUTES);
    let lis = format!("{LIS}/assets/bcn-0005");
    let bcn = format!("{BCN}/assets/bcn-0005");
    assert_eq!(get(&edge, &bcn, "demo-read").await.status, 200);
    assert_eq!(get(&edge, &lis, "demo-read").await.status, 404);
    let w = write(
        &edge,
        reqwest::Method::POST,
        &format!("{BCN}/assets/transfer"),
        json!({"targetLibraryId": "lisbon", "assetIds": ["bcn-0005"]}),
    )
    .await;
    assert!(w.status < 300, "{}", w.body);
    for (p, key) in [
        (&bcn, "demo-read"),
        (&lis, "demo-read"),
        (&lis, "demo-barcelona"),
    ] {
        let via = get(&edge, p, key).await;
        let want = direct(&mock, p, key).await;
        assert_eq!(
            (via.status, via.body),
            (want.status, want.body),
            "{p} {key}"
        );
    }
}

#[tokio::test]
async fn test_cache_failed_write_invalidates_nothing() {
    let (_mock, edge) = start("", ROUTES);
    warm(&edge).await;
    // Read-only key: 403 API_KEY_READ_ONLY.
    let w = send(
        client()
            .post(edge.url(&format!("{BCN}/assets/tag")))
            .headers(auth("demo-read"))
            .json(&json!({"assetIds": ["bcn-0002"], "tags": ["x"]})),
    )
    .await;
    assert_eq!(w.status, 403);
    // Bad input: 400.
    let w = write(
        &edge,
        reqwest::Method::POST,
        &format!("{BCN}/assets/tag"),
        json!({}),
    )
    .await;
    assert_eq!(w.status, 400);
    assert_eq!(invalidated(&edge).await, Vec::<&str>::new());
}

#[tokio::test]
async fn test_cache_admin_purge_by_scope_and_by_url() {
    let (_mock, edge) = start("", ROUTES);
    warm(&edge).await;
    assert_eq!(
        purge(&edge, json!({"scope": BCN}), Some(ADMIN_TOKEN)).await,
        200
    );
    let mut got = invalidated(&edge).await;
    got.sort();
    assert_eq!(
        got,
        vec!["bcn-asset", "bcn-assets", "bcn-assets-k2", "bcn-tags"]
    );

    warm(&edge).await;
    let url = format!("{LIS}/assets?pageSize=3");
    assert_eq!(
        purge(&edge, json!({"url": url}), Some(ADMIN_TOKEN)).await,
        200
    );
    assert_eq!(invalidated(&edge).await, vec!["lis-assets"]);

    warm(&edge).await;
    assert_eq!(
        purge(&edge, json!({"scope": ORG}), Some(ADMIN_TOKEN)).await,
        200
    );
    let got = invalidated(&edge).await;
    assert_eq!(got.len(), watched().len() - 1, "all but /me: {got:?}");
    assert!(!got.contains(&"me"));
    assert!(
        edge.metric(
            metrics::CACHE_INVALIDATIONS_TOTAL,
            &[("reason", metrics::InvalidationReason::Purge.as_str())]
        )
        .await
            >= 3.0
    );
}

#[tokio::test]
async fn test_cache_admin_purge_without_token_is_401() {
    let (_mock, edge) = start("", ROUTES);
    assert_eq!(purge(&edge, json!({"scope": BCN}), None).await, 401);
    assert_eq!(
        purge(&edge, json!({"scope": BCN}), Some("wrong")).await,
        401
    );
}

#[tokio::test]
async fn test_cache_aborted_upstream_body_not_stored() {
    let origin = RawOrigin::start(|_head| {
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\ncache-control: max-age=60\r\n\r\n".to_vec();
        out.extend_from_slice(b"0123456789");
        Some(out)
    });
    let edge = Edge::start(&origin.url(), &config("", ROUTES));
    for _ in 0..2 {
        let r = client()
            .get(edge.url("/me"))
            .headers(auth("demo-read"))
            .send()
            .await;
        if let Ok(r) = r {
            // The body is cut short: reading it fails or comes back short.
            if let Ok(b) = r.bytes().await {
                assert!(b.len() < 1000);
            }
        }
    }
    assert_eq!(origin.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn test_cache_fast_path_and_state_machine_answer_identically() {
    let mock = Mock::start();
    // Three readers of one kind of store: the hit path below the proxy (the default), the fast
    // path in `request_filter` (hit path off), pingora-cache's state machine (both off).
    // tests/hitpath.rs compares the first two byte for byte, in order.
    let below = Edge::start(&mock.url(), &config("fast_path = true", ROUTES));
    let fast = Edge::start(
        &mock.url(),
        &format!(
            "[server]\nhit_path = false\n{}",
            config("fast_path = true", ROUTES)
        ),
    );
    let slow = Edge::start(&mock.url(), &config("fast_path = false", ROUTES));
    let path = format!("{BCN}/assets?pageSize=3");
    let etag = get(&fast, &path, "demo-read").await.h("etag").to_string();
    get(&slow, &path, "demo-read").await;
    get(&below, &path, "demo-read").await;
    let variants: Vec<(reqwest::Method, Vec<(&'static str, String)>)> = vec![
        (reqwest::Method::GET, vec![]),
        (reqwest::Method::HEAD, vec![]),
        (reqwest::Method::GET, vec![("if-none-match", etag.clone())]),
    ];
    for (method, extra) in variants {
        let mk = |edge: &Edge| {
            let mut h = auth("demo-read");
            for (k, v) in &extra {
                h.insert(*k, v.parse().unwrap());
            }
            client().request(method.clone(), edge.url(&path)).headers(h)
        };
        let a = send(mk(&fast)).await;
        let b = send(mk(&slow)).await;
        let c = send(mk(&below)).await;
        assert_eq!(a.status, b.status, "{method} {extra:?}");
        assert_eq!(a.body, b.body);
        assert_eq!(a.x_cache(), "HIT");
        let strip = |h: &HeaderMap| {
            let mut v: Vec<(String, String)> = h
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "date" | "age"))
                .map(|(k, v)| {
                    let v = v.to_str().unwrap_or("").to_string();
                    // ttl= counts down with the clock.
                    let v = match v.find("ttl=") {
                        Some(i) if k.as_str() == "cache-status" => v[..i].to_string(),
                        _ => v,
                    };
                    (k.to_string(), v)
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(strip(&a.headers), strip(&b.headers), "{method} {extra:?}");
        assert_eq!(
            (c.status, &c.body),
            (a.status, &a.body),
            "{method} {extra:?}"
        );
        assert_eq!(c.x_cache(), "HIT");
        assert_eq!(strip(&c.headers), strip(&a.headers), "{method} {extra:?}");
    }
}

#[tokio::test]
async fn test_cache_client_no_cache_only_honoured_when_configured() {
    let (mock, edge) = start("", ROUTES);
    let path = format!("{BCN}/tags");
    let nc = [("cache-control", "no-cache")];
    get(&edge, &path, "demo-read").await;
    assert_eq!(
        get_with(&edge, &path, "demo-read", &nc).await.x_cache(),
        "HIT"
    );
    assert_eq!(mock.requests().await, 1);

    let (mock2, edge2) = start("honor_client_no_cache = true", ROUTES);
    get(&edge2, &path, "demo-read").await;
    let g = get_with(
        &edge2,
        &path,
        "demo-read",
        &[("cache-control", "max-age=0")],
    )
    .await;
    assert_eq!(g.x_cache(), "REVALIDATED");
    assert_eq!(mock_stats(&mock2).await["conditional"], 1);
}

#[tokio::test]
async fn test_cache_range_requests_pass_through() {
    let (mock, edge) = start("", ROUTES);
    let path = format!("{BCN}/tags");
    get(&edge, &path, "demo-read").await;
    let g = get_with(&edge, &path, "demo-read", &[("range", "bytes=0-3")]).await;
    assert_eq!(g.x_cache(), "BYPASS");
    assert_eq!(mock.requests().await, 2);
}

#[tokio::test]
async fn test_cache_shared_mode_fronts_a_generic_origin() {
    let origin = RawOrigin::start(|_head| {
        let body = "hello generic";
        Some(format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncache-control: public, max-age=60\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ).into_bytes())
    });
    let toml = format!(
        "[edge]\nrequire_auth = false\nrequire_api_version = false\n{}",
        config("share = \"shared\"", "")
    );
    let edge = Edge::start(&origin.url(), &toml);
    let a = send(client().get(edge.url("/any/file.txt"))).await;
    let b = send(client().get(edge.url("/any/file.txt"))).await;
    assert_eq!((a.x_cache(), b.x_cache()), ("MISS", "HIT"));
    assert_eq!(b.body, "hello generic");
    assert_eq!(origin.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}
