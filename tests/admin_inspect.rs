//! `GET /admin/cache` and `GET /admin/stats` on the real gateway in front of raster-mock: an
//! entry is described by numbers only, for the key that stored it and no other; the stats move
//! with the traffic sent.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{auth, client, edge_bin, run_with_timeout, Edge, Mock};
use serde_json::Value;

const TOKEN: &str = "inspect-admin-token";
const VERSION: &str = "2026-05-20";

fn config() -> String {
    format!(
        "[edge]\nkey_id_secret = \"inspect-test-secret-0123456789abcdef\"\n\
         [admin]\ntoken = \"{TOKEN}\"\n\
         [rate_limit]\nenabled = true\nrate = 1000\nburst = 1000\n\
         [cache]\nenabled = true\n{}",
        common::RASTER_ROUTES_60S
    )
}

fn start() -> (Mock, Edge) {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config());
    (mock, edge)
}

/// The key id of `key` under the gateway's own config, from `raster-edge key-id`.
fn key_id(edge: &Edge, key: &str) -> String {
    let mut cmd = Command::new(edge_bin());
    cmd.arg("key-id")
        .arg("--config")
        .arg(edge.dir.path().join("raster-edge.toml"))
        .arg(key);
    let (code, out, err) = run_with_timeout(cmd, Duration::from_secs(20));
    assert_eq!(code, Some(0), "raster-edge key-id: {err}");
    let id = out.trim().to_string();
    assert_eq!(id.len(), 32, "key id {id:?}");
    id
}

/// GET on the admin listener: status and JSON body.
async fn admin_get(edge: &Edge, path_and_query: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client().get(edge.admin_url(path_and_query));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("admin request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("admin body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

fn entry_url(path: &str, key_id: &str, version: Option<&str>) -> String {
    let enc: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
    let mut u = format!("/admin/cache?url={enc}&key_id={key_id}");
    if let Some(v) = version {
        u.push_str(&format!("&api_version={v}"));
    }
    u
}

/// A read through the gateway: (X-Cache, body).
async fn read(edge: &Edge, path: &str, key: &str) -> (String, reqwest::header::HeaderMap, String) {
    let r = client()
        .get(edge.url(path))
        .headers(auth(key))
        .send()
        .await
        .expect("read");
    assert_eq!(r.status().as_u16(), 200, "{path}");
    let headers = r.headers().clone();
    let x = headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (x, headers, r.text().await.expect("body"))
}

#[tokio::test]
async fn test_cache_entry_found_with_its_numbers_and_nothing_else() {
    let (_mock, edge) = start();
    let path = "/organizations/monogram-labs/libraries/barcelona/assets?page=1&pageSize=3";
    let (x, headers, body) = read(&edge, path, "demo-read").await;
    assert_eq!(x, "MISS");
    let id = key_id(&edge, "demo-read");

    let (status, v) = admin_get(&edge, &entry_url(path, &id, Some(VERSION)), Some(TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    let d = &v["data"];
    assert_eq!(d["key_id"], id.as_str());
    assert_eq!(d["partition"], "key");
    assert_eq!(d["api_version"], VERSION);
    let e = &d["entry"];
    assert_eq!(e["status"], "fresh", "{e}");
    assert_eq!(e["http_status"], 200);
    // The body as stored: in the store coding (`[compression]`), which a gzip client gets as is.
    let stored = client()
        .get(edge.url(path))
        .headers(auth("demo-read"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("read")
        .bytes()
        .await
        .expect("body");
    assert!(stored.len() < body.len());
    assert_eq!(e["body_bytes"].as_u64(), Some(stored.len() as u64));
    assert!(e["memory_bytes"].as_u64().unwrap() > body.len() as u64);
    let fresh = e["fresh_for_secs"].as_i64().expect("fresh_for_secs");
    assert!((1..=60).contains(&fresh), "60 s route TTL, got {fresh}");
    assert!(e["age_secs"].as_u64().expect("age") <= 60 - fresh as u64 + 1);
    assert_eq!(e["validators"]["etag"], headers.contains_key("etag"));
    assert_eq!(
        e["validators"]["last_modified"],
        headers.contains_key("last-modified")
    );
    assert!(e["generations"].as_array().is_some_and(|g| !g.is_empty()));
    assert!(e["variants"].is_number() || e["variants"].is_null());
    // Numbers and header names only: no body, no header value of the stored response.
    let text = v.to_string();
    let first_body_line = body.get(..body.len().min(40)).unwrap_or("");
    assert!(!text.contains(first_body_line), "body leaked: {text}");
    if let Some(etag) = headers.get("etag").and_then(|v| v.to_str().ok()) {
        assert!(!text.contains(etag.trim_matches('"')), "etag value leaked");
    }

    // The url is keyed as the gateway keys it: a dot segment is the same canonical path.
    let dotted = "/organizations/monogram-labs/libraries/./barcelona/assets?page=1&pageSize=3";
    let (status, _) = admin_get(&edge, &entry_url(dotted, &id, Some(VERSION)), Some(TOKEN)).await;
    assert_eq!(status, 200);

    // Age moves with time: the entry is the one stored, not a fresh description.
    let (_, again) = admin_get(&edge, &entry_url(path, &id, Some(VERSION)), Some(TOKEN)).await;
    assert!(again["data"]["entry"]["fresh_for_secs"].as_i64() <= Some(fresh));
}

#[tokio::test]
async fn test_cache_entry_not_found_wrong_token_and_other_key() {
    let (_mock, edge) = start();
    let path = "/me";
    read(&edge, path, "demo-read").await;
    let reader = key_id(&edge, "demo-read");
    let writer = key_id(&edge, "demo-write");
    assert_ne!(reader, writer);

    let (s, _) = admin_get(&edge, &entry_url(path, &reader, Some(VERSION)), Some(TOKEN)).await;
    assert_eq!(s, 200);

    // Another key's entry is not revealed: same URL and version, other key id.
    let (s, v) = admin_get(&edge, &entry_url(path, &writer, Some(VERSION)), Some(TOKEN)).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "ENTRY_NOT_FOUND");
    assert!(v.get("data").is_none());
    // ... until that key stores its own.
    read(&edge, path, "demo-write").await;
    let (s, _) = admin_get(&edge, &entry_url(path, &writer, Some(VERSION)), Some(TOKEN)).await;
    assert_eq!(s, 200);

    // Not found: another query, another Api-Version, no version (none pinned), anonymous.
    for u in [
        entry_url("/me?x=1", &reader, Some(VERSION)),
        entry_url(path, &reader, Some("2025-01-01")),
        entry_url(path, &reader, None),
        entry_url(path, "anonymous", Some(VERSION)),
    ] {
        let (s, v) = admin_get(&edge, &u, Some(TOKEN)).await;
        assert_eq!(s, 404, "{u}: {v}");
        assert_eq!(v["error"]["code"], "ENTRY_NOT_FOUND");
    }

    // Wrong or missing token: 401, and nothing about the entry.
    let u = entry_url(path, &reader, Some(VERSION));
    for token in [Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1]), None] {
        let (s, v) = admin_get(&edge, &u, token).await;
        assert_eq!(s, 401, "{token:?}");
        assert_eq!(v["error"]["code"], "UNAUTHENTICATED");
    }
    // The token is a header on this endpoint, never a query parameter.
    let (s, _) = admin_get(&edge, &format!("{u}&token={TOKEN}"), None).await;
    assert_eq!(s, 401);

    // Bad input: precise 400s.
    for u in [
        "/admin/cache".to_string(),
        format!("/admin/cache?url=/me&key_id={}", &reader[..8]),
        format!("/admin/cache?url=me&key_id={reader}"),
        format!("/admin/cache?url=/../me&key_id={reader}"),
        format!("/admin/cache?url=/me&key_id={reader}&color=red"),
    ] {
        let (s, v) = admin_get(&edge, &u, Some(TOKEN)).await;
        assert_eq!(s, 400, "{u}: {v}");
        assert_eq!(v["error"]["code"], "BAD_USER_INPUT");
    }
    let r = client()
        .post(edge.admin_url("/admin/cache"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 405);
}

fn n(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr).and_then(Value::as_u64).unwrap_or(0)
}

#[tokio::test]
async fn test_stats_move_after_traffic() {
    let (mock, edge) = start();
    let (s, before) = admin_get(&edge, "/admin/stats", Some(TOKEN)).await;
    assert_eq!(s, 200);
    let before = before["data"].clone();
    assert_eq!(n(&before, "/requests/total"), 0);
    assert_eq!(before["config"]["hash"].as_str().map(str::len), Some(16));
    assert_eq!(before["config"]["last_reload"], Value::Null);
    assert_eq!(before["redis"]["state"], "not used");

    const READS: u64 = 25;
    for _ in 0..READS {
        read(&edge, "/me", "demo-read").await;
    }
    let lib = "/organizations/monogram-labs/libraries";
    for _ in 0..5 {
        read(&edge, lib, "demo-read").await;
    }
    let origin = mock.requests().await;

    let (s, after) = admin_get(&edge, "/admin/stats", Some(TOKEN)).await;
    assert_eq!(s, 200);
    let d = &after["data"];
    assert_eq!(n(d, "/requests/total"), READS + 5, "{d}");
    assert_eq!(n(d, "/requests/last_minute"), READS + 5);
    assert_eq!(n(d, "/routes/me/total"), READS);
    assert_eq!(n(d, "/routes/libraries/total"), 5);
    let me_hits = n(d, "/routes/me/cache/hit");
    let me_misses = n(d, "/routes/me/cache/miss");
    assert_eq!(me_hits + me_misses, READS);
    assert!(
        me_misses >= 1 && me_hits >= READS - 2,
        "{}",
        d["routes"]["me"]
    );
    let ratio = d["routes"]["me"]["hit_ratio"].as_f64().expect("hit ratio");
    assert!((ratio - me_hits as f64 / READS as f64).abs() < 0.01);
    assert!(d["requests"]["req_per_sec"].as_f64().unwrap() > 0.0);
    // Every origin call was timed.
    assert_eq!(n(d, "/upstream_latency_ms/samples"), origin);
    assert!(d["upstream_latency_ms"]["p50"].is_number());
    assert!(d["upstream_latency_ms"]["p99"].as_f64() >= d["upstream_latency_ms"]["p50"].as_f64());
    assert_eq!(n(d, "/rate_limit/tiers/default/allowed/total"), READS + 5);
    assert_eq!(n(d, "/rate_limit/tiers/default/limited/total"), 0);
    assert!(n(d, "/cache/entries") >= 2);
    assert!(n(d, "/cache/bytes") > 0);
    assert!(n(d, "/cache/bound_bytes") >= n(d, "/cache/bytes"));
    assert_eq!(n(d, "/stale_serves/total"), 0);

    // Admin calls are not counted, and the stats need the token once one is configured.
    let (_, again) = admin_get(&edge, "/admin/stats", Some(TOKEN)).await;
    assert_eq!(n(&again["data"], "/requests/total"), READS + 5);
    let (s, v) = admin_get(&edge, "/admin/stats", Some("wrong")).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "UNAUTHENTICATED");
    let (s, _) = admin_get(&edge, "/admin/stats", None).await;
    assert_eq!(s, 401);
}
