//! Raster's GraphQL endpoint through the gateway (`[graphql]`), end to end against raster-mock:
//! edge checks without `Api-Version`, never cached, rate-limited per key, and mutations that
//! invalidate the REST reads of what they change, for every key.

mod common;

use common::{auth, client, Edge, Mock};
use raster_edge::metrics;
use serde_json::{json, Value};

const BCN_ASSET: &str = "/organizations/monogram-labs/libraries/barcelona/assets/bcn-0001";
const LIS_ASSET: &str = "/organizations/monogram-labs/libraries/lisbon/assets/lis-0001";
const ME: &str = "/me";

fn config(extra: &str) -> String {
    format!(
        "[rate_limit]\nenabled = false\n{}\n{extra}",
        common::RASTER_ROUTES_60S
    )
}

async fn gql(
    edge: &Edge,
    key: Option<&str>,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    gql_raw(edge, key, serde_json::to_vec(body).expect("json")).await
}

async fn gql_raw(
    edge: &Edge,
    key: Option<&str>,
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client()
        .post(edge.url("/"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let r = req.send().await.expect("graphql request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, headers, v)
}

/// A REST read: (X-Cache, `data`).
async fn read(edge: &Edge, path: &str, key: &str) -> (String, Value) {
    let r = client()
        .get(edge.url(path))
        .headers(auth(key))
        .send()
        .await
        .expect("rest read");
    assert_eq!(r.status(), 200, "{path}");
    let x = r
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let v: Value = r.json().await.expect("json");
    (x, v["data"].clone())
}

fn describe(library: &str, asset: &str, text: &str) -> Value {
    json!({
        "query": "mutation Describe($lib: ID!, $asset: ID!, $text: String!) { updateAssetDescription(libraryId: $lib, assetId: $asset, description: $text) { id description } }",
        "variables": {"lib": library, "asset": asset, "text": text},
        "operationName": "Describe"
    })
}

#[tokio::test]
async fn test_graphql_passes_the_edge_without_api_version_and_is_never_cached() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(""));
    let q = json!({"query": "{ viewer { organizationId libraries } }"});
    let before = mock.requests().await;
    for _ in 0..2 {
        let (status, headers, v) = gql(&edge, Some("demo-read"), &q).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"]["viewer"]["organizationId"], "monogram-labs");
        assert_eq!(
            v["data"]["viewer"]["libraries"],
            json!(["barcelona", "lisbon"])
        );
        assert_ne!(
            headers.get("x-cache").map(|h| h.as_bytes()),
            Some(&b"HIT"[..])
        );
        let cs = headers
            .get("cache-status")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        assert!(cs.contains("graphql"), "{cs}");
    }
    assert_eq!(
        mock.requests().await - before,
        2,
        "never served from the cache"
    );

    // A key is still required, in Raster's envelope.
    let (status, _, v) = gql(&edge, None, &q).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], "UNAUTHENTICATED");
    // An unknown key is the origin's GraphQL error.
    let (status, _, v) = gql(&edge, Some("nope"), &q).await;
    assert_eq!(status, 401);
    assert_eq!(v["errors"][0]["extensions"]["code"], "INVALID_API_KEY");
    // Other paths still need Api-Version; GET on the GraphQL path too.
    let r = client()
        .post(edge.url("/me"))
        .header("authorization", "Bearer demo-read")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);

    // Switched off, the path is an ordinary REST request again.
    let off = Edge::start(&mock.url(), &config("[graphql]\nenabled = false"));
    let (status, _, v) = gql(&off, Some("demo-read"), &q).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "API_VERSION_REQUIRED");
}

#[tokio::test]
async fn test_graphql_mutation_invalidates_the_rest_reads_it_changes() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(""));
    // demo-write's organization is learned from its own REST read.
    read(&edge, ME, "demo-write").await;
    for key in ["demo-read", "demo-write"] {
        assert_eq!(read(&edge, LIS_ASSET, key).await.0, "MISS");
        assert_eq!(read(&edge, LIS_ASSET, key).await.0, "HIT");
        assert_eq!(read(&edge, BCN_ASSET, key).await.0, "MISS");
    }
    let invalidations = edge
        .metric(
            metrics::CACHE_INVALIDATIONS_TOTAL,
            &[("reason", metrics::InvalidationReason::Graphql.as_str())],
        )
        .await;

    let (status, _, v) = gql(
        &edge,
        Some("demo-write"),
        &describe("lisbon", "lis-0001", "Tram 28"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        v["data"]["updateAssetDescription"],
        json!({"id": "lis-0001", "description": "Tram 28"})
    );
    // Every key's read of that library sees the change; the other library stays cached.
    for key in ["demo-read", "demo-write"] {
        let (x, data) = read(&edge, LIS_ASSET, key).await;
        assert_eq!(x, "MISS", "{key}");
        assert_eq!(data["description"], "Tram 28", "{key}");
        assert_eq!(read(&edge, BCN_ASSET, key).await.0, "HIT", "{key}");
    }
    assert!(
        edge.metric(
            metrics::CACHE_INVALIDATIONS_TOTAL,
            &[("reason", metrics::InvalidationReason::Graphql.as_str())],
        )
        .await
            > invalidations
    );

    // A mutation that fails (read-only key) is still a 200 GraphQL answer: it invalidates
    // too (a GraphQL error may follow a partly applied mutation), and nothing changed.
    let (_, _, v) = gql(
        &edge,
        Some("demo-read"),
        &describe("lisbon", "lis-0001", "x"),
    )
    .await;
    assert_eq!(v["errors"][0]["extensions"]["code"], "API_KEY_READ_ONLY");
    assert_eq!(
        read(&edge, LIS_ASSET, "demo-read").await.1["description"],
        "Tram 28"
    );
}

#[tokio::test]
async fn test_graphql_query_does_not_invalidate() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(""));
    read(&edge, LIS_ASSET, "demo-read").await;
    let q = json!({
        "query": "query A($l: ID!) { asset(libraryId: $l, id: \"lis-0001\") { id description } assets(libraryId: $l, pageSize: 2) { id } }",
        "variables": {"l": "lisbon"}
    });
    let (status, _, v) = gql(&edge, Some("demo-read"), &q).await;
    assert_eq!(status, 200);
    assert_eq!(v["data"]["asset"]["id"], "lis-0001");
    assert_eq!(v["data"]["assets"].as_array().map(Vec::len), Some(2));
    assert_eq!(read(&edge, LIS_ASSET, "demo-read").await.0, "HIT");
}

#[tokio::test]
async fn test_graphql_unreadable_bodies_invalidate_what_the_key_can_read() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(""));
    read(&edge, ME, "demo-write").await;
    let cached = [LIS_ASSET, BCN_ASSET, ME];
    for p in cached {
        read(&edge, p, "demo-read").await;
        assert_eq!(read(&edge, p, "demo-read").await.0, "HIT");
    }
    // A document that does not parse: the origin answers 200 with a GraphQL error, and the
    // gateway, unable to tell a query from a mutation, invalidates the organization.
    let (status, _, v) = gql_raw(
        &edge,
        Some("demo-write"),
        br#"{"query":"mutation { updateAssetDescription(libraryId: "}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["errors"][0]["extensions"]["code"], "GRAPHQL_PARSE_FAILED");
    for p in cached {
        assert_eq!(read(&edge, p, "demo-read").await.0, "MISS", "{p}");
    }

    // A mutation over the inspection bound (64 KiB) is not read: the same fallback, and the
    // REST read sees what it did.
    let long = "x".repeat(70 * 1024);
    read(&edge, LIS_ASSET, "demo-read").await;
    assert_eq!(read(&edge, LIS_ASSET, "demo-read").await.0, "HIT");
    let (status, _, v) = gql(
        &edge,
        Some("demo-write"),
        &describe("lisbon", "lis-0001", &long),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (x, data) = read(&edge, LIS_ASSET, "demo-read").await;
    assert_eq!(x, "MISS");
    assert_eq!(data["description"].as_str().map(str::len), Some(long.len()));

    // A key whose organization the gateway never saw: everything is invalidated.
    let fresh = Edge::start(&mock.url(), &config(""));
    read(&fresh, BCN_ASSET, "demo-read").await;
    assert_eq!(read(&fresh, BCN_ASSET, "demo-read").await.0, "HIT");
    gql(
        &fresh,
        Some("demo-write"),
        &describe("lisbon", "lis-0001", "y"),
    )
    .await;
    assert_eq!(read(&fresh, BCN_ASSET, "demo-read").await.0, "MISS");
}

#[tokio::test]
async fn test_graphql_is_rate_limited_per_key_and_isolated_per_key() {
    let mock = Mock::start();
    let edge = Edge::start(
        &mock.url(),
        &format!(
            "[rate_limit]\nenabled = true\nrate = 0.01\nburst = 3\n{}",
            common::RASTER_ROUTES_60S
        ),
    );
    let q = json!({"query": "{ viewer { libraries } }"});
    for _ in 0..3 {
        let (status, _, v) = gql(&edge, Some("demo-barcelona"), &q).await;
        assert_eq!(status, 200);
        // Each key sees its own answer.
        assert_eq!(v["data"]["viewer"]["libraries"], json!(["barcelona"]));
    }
    let (status, headers, v) = gql(&edge, Some("demo-barcelona"), &q).await;
    assert_eq!(status, 429);
    assert_eq!(v["error"]["code"], "RATE_LIMITED");
    assert!(headers.contains_key("retry-after"));
    // Another key has its own quota and its own answer.
    let (status, _, v) = gql(&edge, Some("demo-read"), &q).await;
    assert_eq!(status, 200);
    assert_eq!(
        v["data"]["viewer"]["libraries"],
        json!(["barcelona", "lisbon"])
    );
}

#[tokio::test]
async fn test_graphql_answers_are_compressed_for_clients_that_accept_it() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(""));
    let q = json!({"query": "{ assets(libraryId: \"barcelona\", pageSize: 50) { id name description tags } }"});
    let r = client()
        .post(edge.url("/"))
        .header("authorization", "Bearer demo-read")
        .header("accept-encoding", "gzip")
        .json(&q)
        .send()
        .await
        .expect("graphql");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let raw = r.bytes().await.expect("body");
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut plain)
        .expect("gunzip");
    let v: Value = serde_json::from_slice(&plain).expect("json");
    assert_eq!(v["data"]["assets"].as_array().map(Vec::len), Some(50));
}
