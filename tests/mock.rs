//! raster-mock against the real binary: access levels, pagination, error envelopes, writes
//! visible on later reads, conditional requests, control endpoints, process behaviour.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{auth, client, mock_bin, Mock};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ORG: &str = "/organizations/monogram-labs";
const BCN: &str = "/organizations/monogram-labs/libraries/barcelona";
const LIS: &str = "/organizations/monogram-labs/libraries/lisbon";

/// Sends a request with the standard Raster headers for `key` and returns status, headers and
/// the JSON body (`Value::Null` when empty).
async fn call(
    mock: &Mock,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = client()
        .request(method, format!("{}{}", mock.url(), path))
        .headers(auth(key));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body");
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json body")
    };
    (status, headers, v)
}

async fn get(mock: &Mock, path: &str, key: &str) -> (StatusCode, Value) {
    let (s, _, v) = call(mock, Method::GET, path, key, None).await;
    (s, v)
}

fn assert_error(status: StatusCode, v: &Value, want_status: u16, code: &str) {
    assert_eq!(status.as_u16(), want_status, "body: {v}");
    assert_eq!(v["error"]["code"], code, "body: {v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

fn ids(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

fn library<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == id)
        .unwrap_or_else(|| panic!("library {id} in {list}"))
}

#[tokio::test]
async fn me_reports_organization_plan_and_reachable_libraries() {
    let mock = Mock::start();
    let (s, v) = get(&mock, "/me", "demo-read").await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["organizationId"], "monogram-labs");
    assert_eq!(v["data"]["organizationName"], "Monogram Labs");
    assert!(v["data"]["plan"].is_string());
    assert_eq!(v["data"]["libraries"], json!(["barcelona", "lisbon"]));
    let (_, v) = get(&mock, "/me", "demo-barcelona").await;
    assert_eq!(v["data"]["libraries"], json!(["barcelona"]));
}

#[tokio::test]
async fn library_list_has_counts_and_respects_key_scope() {
    let mock = Mock::start();
    let (s, v) = get(&mock, &format!("{ORG}/libraries"), "demo-read").await;
    assert_eq!(s, 200);
    let bcn = library(&v, "barcelona");
    assert_eq!(bcn["name"], "Barcelona");
    assert_eq!(bcn["assetsCount"], 250);
    assert_eq!(bcn["photosCount"], 250);
    assert_eq!(bcn["trashCount"], 0);
    assert!(bcn["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == "beach"));
    assert_eq!(library(&v, "lisbon")["assetsCount"], 40);
    let (_, v) = get(&mock, &format!("{ORG}/libraries"), "demo-barcelona").await;
    assert_eq!(ids(&v), vec!["barcelona"]);
}

#[tokio::test]
async fn barcelona_only_key_gets_not_authorized_for_lisbon() {
    let mock = Mock::start();
    let (s, v) = get(&mock, &format!("{BCN}/assets"), "demo-barcelona").await;
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 50);
    for path in [
        format!("{LIS}/assets"),
        format!("{LIS}/assets/lis-0001"),
        format!("{LIS}/tags"),
        format!("{ORG}/search/assets?q=alfama&libraries=lisbon"),
    ] {
        let (s, v) = get(&mock, &path, "demo-barcelona").await;
        assert_error(s, &v, 404, "API_KEY_NOT_AUTHORIZED_FOR_LIBRARY");
    }
    // Search without a library filter covers only what the key can reach.
    let (_, v) = get(
        &mock,
        &format!("{ORG}/search/assets?q=alfama"),
        "demo-barcelona",
    )
    .await;
    assert_eq!(v["data"]["found"], 0);
}

#[tokio::test]
async fn read_keys_cannot_write() {
    let mock = Mock::start();
    let body = json!({"assetIds": ["bcn-0001"], "tags": ["x"]});
    for key in ["demo-read", "demo-barcelona"] {
        let (s, _, v) = call(
            &mock,
            Method::POST,
            &format!("{BCN}/assets/tag"),
            key,
            Some(body.clone()),
        )
        .await;
        assert_error(s, &v, 403, "API_KEY_READ_ONLY");
    }
    let (s, _, v) = call(
        &mock,
        Method::POST,
        &format!("{ORG}/libraries"),
        "demo-read",
        Some(json!({"name": "Porto"})),
    )
    .await;
    assert_error(s, &v, 403, "API_KEY_READ_ONLY");
    let (s, _, v) = call(
        &mock,
        Method::POST,
        &format!("{BCN}/assets/tag"),
        "demo-write",
        Some(body),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["taggedCount"], 1);
}

#[tokio::test]
async fn asset_pages_are_full_until_a_short_last_page() {
    let mock = Mock::start();
    let (_, v) = get(&mock, &format!("{BCN}/assets"), "demo-read").await;
    let first = ids(&v);
    assert_eq!(first.len(), 50);
    assert_eq!(first[0], "bcn-0001");
    let (_, v) = get(
        &mock,
        &format!("{BCN}/assets?page=2&pageSize=100"),
        "demo-read",
    )
    .await;
    let page2 = ids(&v);
    assert_eq!(page2.len(), 100);
    assert_eq!(page2[0], "bcn-0101");
    let (_, v) = get(
        &mock,
        &format!("{BCN}/assets?page=3&pageSize=100"),
        "demo-read",
    )
    .await;
    assert_eq!(ids(&v).len(), 50);
    let (_, v) = get(
        &mock,
        &format!("{BCN}/assets?page=4&pageSize=100"),
        "demo-read",
    )
    .await;
    assert_eq!(ids(&v).len(), 0);
    let (_, v) = get(
        &mock,
        &format!("{LIS}/assets?page=2&pageSize=30"),
        "demo-read",
    )
    .await;
    assert_eq!(
        ids(&v),
        (31..=40).map(|n| format!("lis-{n:04}")).collect::<Vec<_>>()
    );
    // Walking every page finds every asset exactly once.
    let mut all = Vec::new();
    for page in 1.. {
        let (_, v) = get(
            &mock,
            &format!("{BCN}/assets?page={page}&pageSize=7"),
            "demo-read",
        )
        .await;
        let got = ids(&v);
        let short = got.len() < 7;
        all.extend(got);
        if short {
            break;
        }
    }
    assert_eq!(all.len(), 250);
    all.dedup();
    assert_eq!(all.len(), 250);
}

#[tokio::test]
async fn assets_have_the_openapi_fields() {
    let mock = Mock::start();
    let (s, v) = get(&mock, &format!("{BCN}/assets/bcn-0002"), "demo-read").await;
    assert_eq!(s, 200);
    let a = &v["data"];
    assert_eq!(a["id"], "bcn-0002");
    assert_eq!(a["libraryId"], "barcelona");
    for f in [
        "width",
        "height",
        "name",
        "blurhash",
        "url",
        "thumbUrl",
        "thumbHighUrl",
        "thumbUrlBlurred",
        "type",
        "description",
        "contentType",
        "size",
        "created",
        "updated",
    ] {
        assert!(!a[f].is_null(), "field {f} missing in {a}");
    }
    assert!(a["tags"].is_array() && a["views"].is_array());
    assert!(
        a["updated"].as_u64().unwrap() > 1_700_000_000_000,
        "unix ms"
    );
    assert!(a["url"].as_str().unwrap().starts_with("https://"));
}

#[tokio::test]
async fn tags_filter_keeps_only_assets_with_every_tag() {
    let mock = Mock::start();
    let (_, v) = get(&mock, &format!("{LIS}/assets?tags=beach"), "demo-read").await;
    let list = v["data"].as_array().unwrap();
    assert_eq!(list.len(), 10); // lis-0001, 0005, …, 0037
    assert!(list
        .iter()
        .all(|a| a["tags"].as_array().unwrap().contains(&json!("beach"))));
    let (_, v) = get(
        &mock,
        &format!("{LIS}/assets?tags=beach,night"),
        "demo-read",
    )
    .await;
    for a in v["data"].as_array().unwrap() {
        let t = a["tags"].as_array().unwrap();
        assert!(t.contains(&json!("beach")) && t.contains(&json!("night")));
    }
    let (_, v) = get(&mock, &format!("{LIS}/tags?limit=2"), "demo-read").await;
    let tags = v["data"].as_array().unwrap();
    assert_eq!(tags.len(), 2);
    assert!(tags[0]["count"].as_u64() >= tags[1]["count"].as_u64());
    assert!(tags[0]["id"].is_string() && tags[0]["type"].is_string());
}

#[tokio::test]
async fn search_returns_hits_found_and_page() {
    let mock = Mock::start();
    let (s, v) = get(&mock, &format!("{ORG}/search/assets?q=alfama"), "demo-read").await;
    assert_eq!(s, 200);
    let d = &v["data"];
    assert_eq!(d["page"], 1);
    assert_eq!(d["found"], 7); // lis-0001, 0007, …, 0037
    assert!(d["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["libraryId"] == "lisbon"));
    let (_, v) = get(
        &mock,
        &format!("{ORG}/search/assets?q=beach&pageSize=5&page=2"),
        "demo-read",
    )
    .await;
    assert_eq!(v["data"]["page"], 2);
    assert_eq!(v["data"]["hits"].as_array().unwrap().len(), 5);
    assert!(v["data"]["found"].as_u64().unwrap() > 50);
    let (_, v) = get(
        &mock,
        &format!("{ORG}/search/assets?q=beach&libraries=lisbon"),
        "demo-read",
    )
    .await;
    assert_eq!(v["data"]["found"], 10);
}

#[tokio::test]
async fn every_documented_error_code_uses_the_envelope() {
    let mock = Mock::start();
    let url = |p: &str| format!("{}{}", mock.url(), p);
    let c = client();
    // Api-Version is checked before authentication and before the data.
    let r = c.get(url("/me")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    let s = r.status();
    assert_error(s, &r.json().await.unwrap(), 400, "API_VERSION_REQUIRED");
    let r = c
        .get(url(&format!("{BCN}/assets")))
        .header("authorization", "Bearer demo-read")
        .header("api-version", "")
        .send()
        .await
        .unwrap();
    let s = r.status();
    assert_error(s, &r.json().await.unwrap(), 400, "API_VERSION_REQUIRED");
    // Missing / malformed Authorization.
    for auth in [
        None,
        Some("demo-read"),
        Some("Basic ZGVtbzp4"),
        Some("Bearer "),
    ] {
        let mut req = c.get(url("/me")).header("api-version", "2026-05-20");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        let s = r.status();
        assert_error(s, &r.json().await.unwrap(), 401, "UNAUTHENTICATED");
    }
    let (s, v) = get(&mock, "/me", "nope").await;
    assert_error(s, &v, 401, "INVALID_API_KEY");
    let (s, v) = get(&mock, "/nowhere", "demo-read").await;
    assert_error(s, &v, 404, "ENDPOINT_NOT_FOUND");
    let (s, _, v) = call(&mock, Method::PUT, "/me", "demo-read", None).await;
    assert_error(s, &v, 404, "ENDPOINT_NOT_FOUND");
    let (s, v) = get(&mock, "/organizations/acme/libraries", "demo-read").await;
    assert_error(s, &v, 404, "ORGANIZATION_NOT_FOUND");
    let (s, v) = get(&mock, &format!("{BCN}/assets/bcn-9999"), "demo-read").await;
    assert_error(s, &v, 404, "NOT_FOUND");
    let (s, v) = get(&mock, &format!("{BCN}/assets/lis-0001"), "demo-read").await;
    assert_error(s, &v, 404, "NOT_FOUND");
    let (s, v) = get(&mock, &format!("{ORG}/libraries/porto/assets"), "demo-read").await;
    assert_error(s, &v, 404, "NOT_FOUND");
    for q in [
        "page=0",
        "page=x",
        "pageSize=0",
        "pageSize=101",
        "tags=a,b,c,d,e,f",
    ] {
        let (s, v) = get(&mock, &format!("{BCN}/assets?{q}"), "demo-read").await;
        assert_error(s, &v, 400, "BAD_USER_INPUT");
    }
    let (s, v) = get(&mock, &format!("{ORG}/search/assets"), "demo-read").await;
    assert_error(s, &v, 400, "BAD_USER_INPUT");
    let r = c
        .delete(url(&format!("{BCN}/assets")))
        .headers(auth("demo-write"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let s = r.status();
    assert_error(s, &r.json().await.unwrap(), 400, "BAD_USER_INPUT");
    let too_many: Vec<String> = (1..=101).map(|n| format!("bcn-{n:04}")).collect();
    let (s, _, v) = call(
        &mock,
        Method::DELETE,
        &format!("{BCN}/assets"),
        "demo-write",
        Some(json!({ "ids": too_many })),
    )
    .await;
    assert_error(s, &v, 400, "BAD_USER_INPUT");
    // Nothing was deleted by the rejected call.
    let (_, v) = get(&mock, &format!("{ORG}/libraries"), "demo-read").await;
    assert_eq!(library(&v, "barcelona")["assetsCount"], 250);
}

#[tokio::test]
async fn tag_and_untag_change_later_reads() {
    let mock = Mock::start();
    let (_, before) = get(&mock, &format!("{LIS}/assets/lis-0002"), "demo-read").await;
    let (s, _, v) = call(
        &mock,
        Method::POST,
        &format!("{LIS}/assets/tag"),
        "demo-write",
        Some(json!({"assetIds": ["lis-0002", "lis-0003"], "tags": ["tram"]})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["taggedCount"], 2);
    let (_, v) = get(&mock, &format!("{LIS}/assets?tags=tram"), "demo-read").await;
    assert_eq!(ids(&v), vec!["lis-0002", "lis-0003"]);
    let (_, after) = get(&mock, &format!("{LIS}/assets/lis-0002"), "demo-read").await;
    assert!(after["data"]["updated"].as_u64() > before["data"]["updated"].as_u64());
    let (_, v) = get(&mock, &format!("{LIS}/tags"), "demo-read").await;
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == "tram" && t["count"] == 2));
    let (s, _, v) = call(
        &mock,
        Method::POST,
        &format!("{LIS}/assets/untag"),
        "demo-write",
        Some(json!({"assetIds": ["lis-0002"], "tags": ["tram"]})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["untaggedCount"], 1);
    let (_, v) = get(&mock, &format!("{LIS}/assets?tags=tram"), "demo-read").await;
    assert_eq!(ids(&v), vec!["lis-0003"]);
    let (_, v) = get(&mock, &format!("{ORG}/search/assets?q=tram"), "demo-read").await;
    assert!(v["data"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["id"] == "lis-0003"));
}

#[tokio::test]
async fn delete_moves_assets_to_trash() {
    let mock = Mock::start();
    let (s, _, v) = call(
        &mock,
        Method::DELETE,
        &format!("{LIS}/assets"),
        "demo-write",
        Some(json!({"ids": ["lis-0001", "lis-0002", "lis-9999"]})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["success"], true);
    assert_eq!(v["data"]["ids"], json!(["lis-0001", "lis-0002"]));
    let (s, v) = get(&mock, &format!("{LIS}/assets/lis-0001"), "demo-read").await;
    assert_error(s, &v, 404, "NOT_FOUND");
    let (_, v) = get(&mock, &format!("{LIS}/assets?pageSize=100"), "demo-read").await;
    assert_eq!(ids(&v).len(), 38);
    assert_eq!(ids(&v)[0], "lis-0003");
    let (_, v) = get(&mock, &format!("{ORG}/libraries"), "demo-read").await;
    assert_eq!(library(&v, "lisbon")["assetsCount"], 38);
    assert_eq!(library(&v, "lisbon")["trashCount"], 2);
}

#[tokio::test]
async fn transfer_moves_assets_between_libraries() {
    let mock = Mock::start();
    let (s, _, v) = call(
        &mock,
        Method::POST,
        &format!("{BCN}/assets/transfer"),
        "demo-write",
        Some(json!({"targetLibraryId": "lisbon", "assetIds": ["bcn-0001", "bcn-0002"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["transferredCount"], 2);
    assert_eq!(v["data"]["sourceLibraryId"], "barcelona");
    assert_eq!(v["data"]["targetLibraryId"], "lisbon");
    let (s, v) = get(&mock, &format!("{LIS}/assets/bcn-0001"), "demo-read").await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["libraryId"], "lisbon");
    let (s, _) = get(&mock, &format!("{BCN}/assets/bcn-0001"), "demo-read").await;
    assert_eq!(s, 404);
    let (_, v) = get(&mock, &format!("{ORG}/libraries"), "demo-read").await;
    assert_eq!(library(&v, "barcelona")["assetsCount"], 248);
    assert_eq!(library(&v, "lisbon")["assetsCount"], 42);
    let (s, _, v) = call(
        &mock,
        Method::POST,
        &format!("{BCN}/assets/transfer"),
        "demo-write",
        Some(json!({"targetLibraryId": "porto", "assetIds": ["bcn-0003"]})),
    )
    .await;
    assert_error(s, &v, 404, "NOT_FOUND");
}

#[tokio::test]
async fn libraries_can_be_created_and_renamed() {
    let mock = Mock::start();
    let (s, _, v) = call(
        &mock,
        Method::POST,
        &format!("{ORG}/libraries"),
        "demo-write",
        Some(json!({"name": "Porto Nights"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["data"]["id"], "porto-nights");
    assert_eq!(v["data"]["assetsCount"], 0);
    let (s, _, v) = call(
        &mock,
        Method::POST,
        &format!("{ORG}/libraries"),
        "demo-write",
        Some(json!({"name": "Another", "slug": "porto-nights"})),
    )
    .await;
    assert_error(s, &v, 409, "LIBRARY_URL_TAKEN");
    let (s, _, v) = call(
        &mock,
        Method::PATCH,
        &format!("{ORG}/libraries/barcelona"),
        "demo-write",
        Some(json!({"name": "BCN"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["name"], "BCN");
    let (_, v) = get(&mock, &format!("{ORG}/libraries"), "demo-read").await;
    assert_eq!(ids(&v), vec!["barcelona", "lisbon", "porto-nights"]);
    assert_eq!(library(&v, "barcelona")["name"], "BCN");
    let (_, v) = get(&mock, "/me", "demo-read").await;
    assert_eq!(
        v["data"]["libraries"],
        json!(["barcelona", "lisbon", "porto-nights"])
    );
    // The barcelona-only key still sees only barcelona.
    let (_, v) = get(&mock, "/me", "demo-barcelona").await;
    assert_eq!(v["data"]["libraries"], json!(["barcelona"]));
}

#[tokio::test]
async fn description_patch_is_visible_and_bumps_updated() {
    let mock = Mock::start();
    let (_, before) = get(&mock, &format!("{BCN}/assets/bcn-0010"), "demo-read").await;
    let (s, _, v) = call(
        &mock,
        Method::PATCH,
        &format!("{BCN}/assets/bcn-0010/description"),
        "demo-write",
        Some(json!({"description": "Rooftops at dawn"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["data"],
        json!({"assetId": "bcn-0010", "description": "Rooftops at dawn"})
    );
    let (_, after) = get(&mock, &format!("{BCN}/assets/bcn-0010"), "demo-read").await;
    assert_eq!(after["data"]["description"], "Rooftops at dawn");
    assert!(after["data"]["updated"].as_u64() > before["data"]["updated"].as_u64());
}

#[tokio::test]
async fn multipart_upload_creates_assets() {
    let mock = Mock::start();
    let body = "--b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"one.jpg\"\r\nContent-Type: image/jpeg\r\n\r\nJPEGDATA\r\n--b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"two.png\"\r\nContent-Type: image/png\r\n\r\nPNG\r\n--b0undary--\r\n";
    let r = client()
        .post(format!("{}{LIS}/assets", mock.url()))
        .headers(auth("demo-write"))
        .header("content-type", "multipart/form-data; boundary=b0undary")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let assets = v["data"]["assets"].as_array().unwrap();
    assert_eq!(assets.len(), 2);
    assert_eq!(assets[0]["name"], "one.jpg");
    assert_eq!(assets[0]["size"], 8);
    assert_eq!(assets[1]["contentType"], "image/png");
    let id = assets[0]["id"].as_str().unwrap();
    let (s, _) = get(&mock, &format!("{LIS}/assets/{id}"), "demo-read").await;
    assert_eq!(s, 200);
    let (_, v) = get(&mock, &format!("{ORG}/libraries"), "demo-read").await;
    assert_eq!(library(&v, "lisbon")["assetsCount"], 42);
    // Not multipart → BAD_USER_INPUT.
    let (s, _, v) = call(
        &mock,
        Method::POST,
        &format!("{LIS}/assets"),
        "demo-write",
        Some(json!({})),
    )
    .await;
    assert_error(s, &v, 400, "BAD_USER_INPUT");
}

#[tokio::test]
async fn anonymous_library_creation_mints_a_working_key() {
    let mock = Mock::start();
    let r = client()
        .post(format!("{}/libraries", mock.url()))
        .header("api-version", "2026-05-20")
        .json(&json!({"email": "someone@example.com"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let v: Value = r.json().await.unwrap();
    let key = v["data"]["apiKey"].as_str().unwrap().to_string();
    let lib = v["data"]["libraryId"].as_str().unwrap().to_string();
    let org = v["data"]["organizationId"].as_str().unwrap().to_string();
    assert!(v["data"]["expiresAt"].is_string() && v["data"]["claimUrl"].is_string());
    let (s, v) = get(&mock, "/me", &key).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["libraries"], json!([lib]));
    let (s, v) = get(
        &mock,
        &format!("/organizations/{org}/libraries/{lib}/assets"),
        &key,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"], json!([]));
    let (s, v) = get(&mock, &format!("{BCN}/assets"), &key).await;
    assert_error(s, &v, 404, "ORGANIZATION_NOT_FOUND");
}

#[tokio::test]
async fn matching_if_none_match_gets_304_and_writes_change_the_etag() {
    let mock = Mock::start();
    let path = format!("{LIS}/assets/lis-0005");
    let (s, h, v) = call(&mock, Method::GET, &path, "demo-read", None).await;
    assert_eq!(s, 200);
    let etag = h["etag"].to_str().unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong etag: {etag}"
    );
    assert!(
        h.get("cache-control").is_none(),
        "no Cache-Control by default"
    );
    // Same body → same tag.
    let (_, h2, v2) = call(&mock, Method::GET, &path, "demo-read", None).await;
    assert_eq!(h2["etag"], etag.as_str());
    assert_eq!(v, v2);
    let r = client()
        .get(format!("{}{}", mock.url(), path))
        .headers(auth("demo-read"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(r.headers()["vary"], "Api-Version");
    assert!(r.bytes().await.unwrap().is_empty());
    let r = client()
        .get(format!("{}{}", mock.url(), path))
        .headers(auth("demo-read"))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    call(
        &mock,
        Method::PATCH,
        &format!("{path}/description"),
        "demo-write",
        Some(json!({"description": "changed"})),
    )
    .await;
    let r = client()
        .get(format!("{}{}", mock.url(), path))
        .headers(auth("demo-read"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["etag"], etag.as_str());
    let stats: Value = client()
        .get(format!("{}/__mock/stats", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["data"]["conditional"], 3);
    assert_eq!(stats["data"]["not_modified"], 1);
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let mock = Mock::start();
    let path = format!("{BCN}/assets?pageSize=10");
    let get_r = client()
        .get(format!("{}{}", mock.url(), path))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    let etag = get_r.headers()["etag"].clone();
    let len = get_r.bytes().await.unwrap().len();
    let r = client()
        .head(format!("{}{}", mock.url(), path))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], etag);
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    assert_eq!(r.headers()["vary"], "Api-Version");
    assert!(r.bytes().await.unwrap().is_empty());
    let (s, _, v) = call(&mock, Method::HEAD, "/me", "nope", None).await;
    assert_eq!(s, 401);
    assert_eq!(v, Value::Null);
}

#[tokio::test]
async fn every_response_varies_on_api_version() {
    let mock = Mock::start();
    for (path, key) in [
        ("/me", "demo-read"),
        ("/me", "bogus"),
        ("/nowhere", "demo-read"),
        (
            "/organizations/monogram-labs/libraries/lisbon/assets",
            "demo-barcelona",
        ),
    ] {
        let (_, h, _) = call(&mock, Method::GET, path, key, None).await;
        assert_eq!(h["vary"], "Api-Version", "{path} {key}");
        assert_eq!(h["content-type"], "application/json");
    }
    let r = client()
        .get(format!("{}/me", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["vary"], "Api-Version");
}

#[tokio::test]
async fn stats_count_api_requests_but_not_control_calls() {
    let mock = Mock::start();
    assert_eq!(mock.requests().await, 0);
    get(&mock, "/me", "demo-read").await;
    get(&mock, "/nowhere", "demo-read").await;
    call(&mock, Method::HEAD, "/me", "demo-read", None).await;
    call(
        &mock,
        Method::POST,
        &format!("{BCN}/assets/tag"),
        "demo-write",
        Some(json!({"assetIds": ["bcn-0001"], "tags": ["x"]})),
    )
    .await;
    mock.configure(json!({"latency_ms": 0})).await;
    assert_eq!(mock.requests().await, 4);
    assert_eq!(mock.requests().await, 4);
    let v: Value = client()
        .get(format!("{}/__mock/stats", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["data"]["by_method"],
        json!({"GET": 2, "HEAD": 1, "POST": 1})
    );
    mock.reset().await;
    assert_eq!(mock.requests().await, 0);
}

#[tokio::test]
async fn reset_restores_fixture_data_and_startup_config() {
    let mock = Mock::start_with(&["--cache-control", "max-age=5"]);
    call(
        &mock,
        Method::DELETE,
        &format!("{BCN}/assets"),
        "demo-write",
        Some(json!({"ids": ["bcn-0001"]})),
    )
    .await;
    call(
        &mock,
        Method::POST,
        &format!("{ORG}/libraries"),
        "demo-write",
        Some(json!({"name": "Porto"})),
    )
    .await;
    mock.configure(json!({"cache_control": null, "etag": false}))
        .await;
    let (_, h, _) = call(&mock, Method::GET, "/me", "demo-read", None).await;
    assert!(h.get("cache-control").is_none() && h.get("etag").is_none());
    mock.reset().await;
    let (s, _) = get(&mock, &format!("{BCN}/assets/bcn-0001"), "demo-read").await;
    assert_eq!(s, 200);
    let (_, h, v) = call(
        &mock,
        Method::GET,
        &format!("{ORG}/libraries"),
        "demo-read",
        None,
    )
    .await;
    assert_eq!(ids(&v), vec!["barcelona", "lisbon"]);
    assert_eq!(library(&v, "barcelona")["assetsCount"], 250);
    assert_eq!(h["cache-control"], "max-age=5");
    assert!(h.get("etag").is_some());
}

#[tokio::test]
async fn latency_delays_api_answers() {
    let mock = Mock::start_with(&["--latency-ms", "150"]);
    let t = Instant::now();
    get(&mock, "/me", "demo-read").await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    // Control calls are not delayed.
    let t = Instant::now();
    mock.requests().await;
    assert!(t.elapsed() < Duration::from_millis(150));
    mock.configure(json!({"latency_ms": 400})).await;
    let t = Instant::now();
    get(&mock, "/me", "demo-read").await;
    assert!(t.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn down_and_forced_status_answer_with_the_envelope() {
    let mock = Mock::start();
    mock.configure(json!({"down": true})).await;
    let (s, h, v) = call(&mock, Method::GET, "/me", "demo-read", None).await;
    assert_error(s, &v, 503, "SERVICE_UNAVAILABLE");
    assert_eq!(h["vary"], "Api-Version");
    mock.configure(json!({"down": false, "status": 500})).await;
    let (s, v) = get(&mock, "/me", "demo-read").await;
    assert_error(s, &v, 500, "INTERNAL_SERVER_ERROR");
    mock.configure(json!({"status": 502})).await;
    let (s, v) = get(&mock, &format!("{BCN}/assets"), "demo-read").await;
    assert_error(s, &v, 502, "BAD_GATEWAY");
    mock.configure(json!({"status": null})).await;
    let (s, _) = get(&mock, "/me", "demo-read").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn configured_headers_and_cache_control_apply_to_api_responses() {
    let mock = Mock::start();
    let r = client()
        .put(format!("{}/__mock/config", mock.url()))
        .json(&json!({
            "cache_control": "max-age=60",
            "headers": {"Vary": "Api-Version, Accept-Language", "Set-Cookie": "a=b"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"]["cache_control"], "max-age=60");
    assert_eq!(v["data"]["etag"], true);
    assert_eq!(v["data"]["down"], false);
    let (_, h, _) = call(&mock, Method::GET, "/me", "demo-read", None).await;
    assert_eq!(h["cache-control"], "max-age=60");
    assert_eq!(h["vary"], "Api-Version, Accept-Language");
    assert_eq!(h.get_all("vary").iter().count(), 1);
    assert_eq!(h["set-cookie"], "a=b");
    // The control endpoints themselves stay plain.
    let r = client()
        .get(format!("{}/__mock/stats", mock.url()))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("set-cookie").is_none());
    mock.configure(json!({"etag": false, "headers": {}})).await;
    let (_, h, _) = call(&mock, Method::GET, "/me", "demo-read", None).await;
    assert!(h.get("etag").is_none());
    assert!(h.get("set-cookie").is_none());
    assert_eq!(h["vary"], "Api-Version");
}

#[tokio::test]
async fn cache_control_flag_sets_the_header() {
    let mock = Mock::start_with(&["--cache-control", "public, max-age=30"]);
    let (_, h, _) = call(
        &mock,
        Method::GET,
        &format!("{BCN}/assets"),
        "demo-read",
        None,
    )
    .await;
    assert_eq!(h["cache-control"], "public, max-age=30");
}

#[tokio::test]
async fn bad_config_is_rejected_and_changes_nothing() {
    let mock = Mock::start();
    for body in [
        json!({"latency": 5}),
        json!({"down": "yes"}),
        json!({"status": 200}),
        json!({"headers": {"bad header": "x"}}),
        json!({"down": true, "nope": 1}),
    ] {
        let r = client()
            .put(format!("{}/__mock/config", mock.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "BAD_USER_INPUT");
    }
    let (s, _) = get(&mock, "/me", "demo-read").await;
    assert_eq!(s, 200, "down must not have been applied");
}

#[tokio::test]
async fn busy_port_exits_quickly_with_a_message() {
    // The registry's own listener holds the port, so it stays busy for the whole test.
    let taken = common::reserve();
    let addr = taken.addr();
    let t = Instant::now();
    let out = Command::new(mock_bin())
        .args(["--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run raster-mock");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr.to_string()), "stderr: {err}");
    drop(taken);
}

#[tokio::test]
async fn port_zero_announces_the_bound_port_first_and_serves_there() {
    let mut cmd = Command::new(mock_bin());
    cmd.args(["--listen", "127.0.0.1:0"]);
    let mut proc = common::Proc::spawn_reading_stdout("raster-mock", cmd);
    let first = proc
        .wait_line(Duration::from_secs(15), |_| true)
        .expect("a first stdout line");
    let addr = common::parse_listening(&first).expect("`listening on ADDR`");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{first}");
    let r = client()
        .get(format!("http://{addr}/__mock/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn explicit_listen_address_is_kept_and_announced_and_a_lost_port_is_retried() {
    // The first attempt loses its port on purpose (the registry's listener still holds it, as
    // another process would): the harness must see the mock's bind failure as a lost race and
    // try again on a fresh port, which then serves under exactly the address it was given.
    let mut attempts = 0;
    let (addr, _proc) = common::retry_on_port_race("raster-mock", || {
        attempts += 1;
        let reserved = common::reserve();
        let mut cmd = Command::new(mock_bin());
        cmd.args(["--listen", &reserved.addr().to_string()]);
        let (addr, _stolen) = if attempts == 1 {
            (reserved.addr(), Some(reserved))
        } else {
            (reserved.release(), None)
        };
        let mut proc = common::Proc::spawn_reading_stdout("raster-mock", cmd);
        match proc.wait_line(Duration::from_secs(15), |_| true) {
            Ok(line) => {
                assert_eq!(line, format!("listening on {addr}"));
                common::Attempt::Up((addr, proc))
            }
            Err(_) if common::lost_port(&proc.output(), &[addr]) => common::Attempt::PortTaken,
            Err(why) => common::Attempt::Failed(format!("{why:?}: {}", proc.output())),
        }
    })
    .unwrap();
    assert!(
        attempts >= 2,
        "the held port must have failed the first attempt"
    );
    let r = client()
        .get(format!("http://{addr}/me"))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn sigterm_stops_the_mock() {
    let mut mock = Mock::start();
    get(&mock, "/me", "demo-read").await;
    mock.proc.signal(15);
    let code = mock.proc.wait_exit(Duration::from_secs(10));
    assert!(code.is_some(), "raster-mock did not exit on SIGTERM");
}
