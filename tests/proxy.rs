//! Proxying end to end through the real gateway: reads and writes reach raster-mock with their
//! bodies and headers, `Host` is rewritten, hop-by-hop headers are dropped both ways, the edge
//! answers its own errors in Raster's envelope, admin paths stay off the proxy port, and
//! upstream failures become 502/504 envelopes quickly.

mod common;

use raster_edge::metrics;

use std::time::{Duration, Instant};

use common::{auth, client, free_addr, Edge, Mock, RawOrigin};
use serde_json::{json, Value};

const BARCELONA: &str = "/organizations/monogram-labs/libraries/barcelona";

/// No cache and no rate limit: these tests are about proxying.
const PLAIN: &str = "[cache]\nenabled = false\n[rate_limit]\nenabled = false\n";

async fn envelope_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let v: Value = resp.json().await.expect("json envelope");
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn test_proxy_get_reaches_origin_with_query_and_headers() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), PLAIN);
    let r = client()
        .get(edge.url(&format!("{BARCELONA}/assets?page=2&pageSize=10")))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("vary").is_some(), "Vary kept");
    assert!(r.headers().get("etag").is_some(), "ETag kept");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(10));
    assert_eq!(mock.requests().await, 1);
}

#[tokio::test]
async fn test_proxy_write_methods_carry_bodies_and_change_reads() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), PLAIN);
    let c = client();
    let asset = format!("{BARCELONA}/assets/bcn-0001");

    // POST with a JSON body: tag an asset.
    let r = c
        .post(edge.url(&format!("{BARCELONA}/assets/tag")))
        .headers(auth("demo-write"))
        .json(&json!({"assetIds": ["bcn-0001"], "tags": ["proxied-tag"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "tag: {}", r.status());
    let v: Value = c
        .get(edge.url(&asset))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tags: Vec<String> = serde_json::from_value(v["data"]["tags"].clone()).unwrap();
    assert!(tags.contains(&"proxied-tag".to_string()), "{tags:?}");

    // PATCH: description.
    let r = c
        .patch(edge.url(&format!("{asset}/description")))
        .headers(auth("demo-write"))
        .json(&json!({"description": "through the edge"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "description: {}", r.status());
    let v: Value = c
        .get(edge.url(&asset))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"]["description"], "through the edge");

    // DELETE with a body: soft delete, then the asset is gone.
    let r = c
        .delete(edge.url(&format!("{BARCELONA}/assets")))
        .headers(auth("demo-write"))
        .json(&json!({"ids": ["bcn-0001"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "delete: {}", r.status());
    let r = c
        .get(edge.url(&asset))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn test_proxy_passes_origin_errors_through_unchanged() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), PLAIN);
    let c = client();
    let r = c
        .post(edge.url(&format!("{BARCELONA}/assets/tag")))
        .headers(auth("demo-read"))
        .json(&json!({"assetIds": ["bcn-0001"], "tags": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(envelope_code(r).await, (403, "API_KEY_READ_ONLY".into()));
    let r = c
        .get(edge.url("/organizations/monogram-labs/libraries/lisbon/assets"))
        .headers(auth("demo-barcelona"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        envelope_code(r).await,
        (404, "API_KEY_NOT_AUTHORIZED_FOR_LIBRARY".into())
    );
    let r = c
        .get(edge.url("/me"))
        .headers(auth("not-a-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(envelope_code(r).await, (401, "INVALID_API_KEY".into()));
}

/// Request headers of one edge-check case.
type Headers = &'static [(&'static str, &'static str)];

#[tokio::test]
async fn test_edge_errors_use_rasters_envelope_and_never_reach_origin() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), PLAIN);
    let c = client();
    let cases: [(Headers, u16, &str); 4] = [
        (&[("api-version", "2026-05-20")], 401, "UNAUTHENTICATED"),
        (
            &[
                ("authorization", "Basic ZGVtbzpyZWFk"),
                ("api-version", "2026-05-20"),
            ],
            401,
            "UNAUTHENTICATED",
        ),
        (
            &[("authorization", "Bearer demo-read")],
            400,
            "API_VERSION_REQUIRED",
        ),
        (
            &[("authorization", "Bearer demo-read"), ("api-version", "")],
            400,
            "API_VERSION_REQUIRED",
        ),
    ];
    for (headers, status, code) in cases {
        let mut req = c.get(edge.url("/me"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(
            envelope_code(r).await,
            (status, code.to_string()),
            "{headers:?}"
        );
    }
    assert_eq!(
        mock.requests().await,
        0,
        "edge rejections must not reach the origin"
    );
}

#[tokio::test]
async fn test_anonymous_route_passes_without_key() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), PLAIN);
    let r = client()
        .post(edge.url("/libraries"))
        .header("api-version", "2026-05-20")
        .json(&json!({"name": "Scratch"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let v: Value = r.json().await.unwrap();
    assert!(v["data"].is_object(), "{v}");
    assert_eq!(mock.requests().await, 1);
}

#[tokio::test]
async fn test_admin_and_mock_control_paths_are_not_proxied() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), PLAIN);
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/admin/purge",
        "/__mock/stats",
    ] {
        let r = client()
            .get(edge.url(path))
            .headers(auth("demo-read"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            envelope_code(r).await,
            (404, "ENDPOINT_NOT_FOUND".into()),
            "{path}"
        );
    }
    let r = client()
        .post(edge.url("/__mock/reset"))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(mock.requests().await, 0);
}

#[tokio::test]
async fn test_host_rewritten_and_hop_by_hop_headers_dropped() {
    let origin = RawOrigin::echo();
    let edge = Edge::start(&origin.url(), PLAIN);
    let r = client()
        .get(edge.url("/me"))
        .headers(auth("demo-read"))
        .header("host", "edge.example")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "secret-hop")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("x-end-to-end", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("keep-alive").is_none(),
        "hop-by-hop response header forwarded"
    );
    let v: Value = r.json().await.unwrap();
    let head = v["data"]["head"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        head.contains(&format!("host: {}\r\n", origin.addr)),
        "{head}"
    );
    assert!(!head.contains("edge.example"), "{head}");
    assert!(!head.contains("x-drop-me"), "{head}");
    assert!(!head.contains("keep-alive: timeout"), "{head}");
    assert!(!head.contains("\r\nte:"), "{head}");
    assert!(head.contains("x-end-to-end: kept"), "{head}");
    assert!(head.contains("authorization: bearer demo-read"), "{head}");
}

#[tokio::test]
async fn test_sidecar_injects_pinned_key_and_version() {
    let origin = RawOrigin::echo();
    let edge = Edge::start(
        &origin.url(),
        &format!("{PLAIN}[edge]\napi_key = \"demo-read\"\napi_version = \"2026-05-20\"\n"),
    );
    let r = client().get(edge.url("/me")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let head = v["data"]["head"].as_str().unwrap().to_ascii_lowercase();
    assert!(head.contains("authorization: bearer demo-read"), "{head}");
    assert!(head.contains("api-version: 2026-05-20"), "{head}");
}

#[tokio::test]
async fn test_upstream_down_answers_502_envelope_quickly() {
    let nothing = free_addr();
    let edge = Edge::start(&format!("http://{nothing}"), PLAIN);
    let started = Instant::now();
    let r = client()
        .get(edge.url("/me"))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(envelope_code(r).await, (502, "UPSTREAM_UNAVAILABLE".into()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        edge.metric(
            metrics::UPSTREAM_ERRORS_TOTAL,
            &[("kind", metrics::UpstreamErrorKind::ConnectRefused.as_str())]
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn test_upstream_slower_than_read_timeout_answers_504_envelope() {
    let mock = Mock::start_with(&["--latency-ms", "3000"]);
    let edge = Edge::start(
        &mock.url(),
        &format!("{PLAIN}[upstream]\nread_timeout = \"300ms\"\n"),
    );
    let started = Instant::now();
    let r = client()
        .get(edge.url("/me"))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(envelope_code(r).await, (504, "UPSTREAM_TIMEOUT".into()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn test_oversized_request_body_is_refused_with_413() {
    let mock = Mock::start();
    let edge = Edge::start(
        &mock.url(),
        &format!("{PLAIN}[server]\nmax_request_body = \"1KiB\"\n"),
    );
    let r = client()
        .post(edge.url(&format!("{BARCELONA}/assets/tag")))
        .headers(auth("demo-write"))
        .json(&json!({"assetIds": ["bcn-0001"], "tags": ["x".repeat(4096)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(envelope_code(r).await, (413, "PAYLOAD_TOO_LARGE".into()));
    assert_eq!(mock.requests().await, 0);
}
