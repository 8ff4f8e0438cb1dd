//! Property: random sequences of reads, writes and purges against one gateway + raster-mock
//! (reset between cases), once through the fast path and once through pingora-cache's state
//! machine (`cache.fast_path = false`). Reads vary the key (read-only, write, library-bound,
//! invalid, none), the route, the `Api-Version` (two versions, or none) and the method (`GET`,
//! `HEAD`). Every read through the gateway equals the mock's direct answer for that key and
//! version at that moment: a key never gets another key's body (isolation), a version never
//! another version's, and after a successful write or purge the next read is already fresh.
//! Error answers compare by status and envelope code (the gateway words its own refusals).

mod common;

use common::{client, Edge, Mock};
use proptest::prelude::*;
use serde_json::json;

const BCN: &str = "/organizations/monogram-labs/libraries/barcelona";
const LIS: &str = "/organizations/monogram-labs/libraries/lisbon";
/// `None`: no `Authorization` at all. `nope-invalid` is no key the origin knows.
const KEYS: [Option<&str>; 5] = [
    Some("demo-read"),
    Some("demo-write"),
    Some("demo-barcelona"),
    Some("nope-invalid"),
    None,
];
const VERSIONS: [Option<&str>; 3] = [Some("2026-05-20"), Some("2025-01-01"), None];
const PURGES: [&str; 4] = ["/", BCN, LIS, "/me"];

const CONFIG: &str = r#"
[rate_limit]
enabled = false
[cache]
negative_ttl = "60s"
"#;

#[derive(Debug, Clone)]
enum Op {
    Read {
        key: usize,
        version: usize,
        read: usize,
        head: bool,
    },
    Write {
        key: usize,
        write: usize,
    },
    Purge {
        scope: usize,
    },
}

fn reads() -> Vec<String> {
    vec![
        "/me".into(),
        "/organizations/monogram-labs/libraries".into(),
        format!("{BCN}/assets?pageSize=4"),
        format!("{LIS}/assets?pageSize=4"),
        format!("{BCN}/assets/bcn-0001"),
        format!("{LIS}/assets/lis-0001"),
        format!("{LIS}/assets/bcn-0001"),
        format!("{BCN}/tags"),
        format!("{LIS}/tags"),
        "/organizations/monogram-labs/search/assets?q=a&pageSize=4".into(),
    ]
}

fn writes() -> Vec<(reqwest::Method, String, serde_json::Value)> {
    vec![
        (
            reqwest::Method::POST,
            format!("{BCN}/assets/tag"),
            json!({"assetIds": ["bcn-0001"], "tags": ["prop"]}),
        ),
        (
            reqwest::Method::POST,
            format!("{LIS}/assets/untag"),
            json!({"assetIds": ["lis-0001"], "tags": ["prop"]}),
        ),
        (
            reqwest::Method::PATCH,
            format!("{BCN}/assets/bcn-0001/description"),
            json!({"description": "changed"}),
        ),
        (
            reqwest::Method::POST,
            format!("{BCN}/assets/transfer"),
            json!({"targetLibraryId": "lisbon", "assetIds": ["bcn-0001"]}),
        ),
        (
            reqwest::Method::PATCH,
            LIS.to_string(),
            json!({"name": "Lisboa"}),
        ),
        (
            reqwest::Method::DELETE,
            format!("{LIS}/assets"),
            json!({"ids": ["lis-0001"]}),
        ),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..KEYS.len(), 0..VERSIONS.len(), 0..10usize, prop::bool::weighted(0.2)).prop_map(
            |(key, version, read, head)| Op::Read { key, version, read, head }
        ),
        2 => (0..KEYS.len(), 0..6usize).prop_map(|(key, write)| Op::Write { key, write }),
        1 => (0..PURGES.len()).prop_map(|scope| Op::Purge { scope }),
    ]
}

fn headers(key: Option<&str>, version: Option<&str>) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(k) = key {
        h.insert(
            "authorization",
            format!("Bearer {k}").parse().expect("header"),
        );
    }
    if let Some(v) = version {
        h.insert("api-version", v.parse().expect("header"));
    }
    h
}

/// Status and what must match: the whole body of a success, the envelope code of an error.
async fn body(req: reqwest::RequestBuilder) -> (u16, String) {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    if status < 400 {
        return (status, text);
    }
    let code = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or(text);
    (status, code)
}

#[test]
fn prop_cache_isolation_and_post_write_freshness_fast_path() {
    run_property(true);
}

#[test]
fn prop_cache_isolation_and_post_write_freshness_state_machine() {
    run_property(false);
}

fn run_property(fast_path: bool) {
    // One gateway + mock for every case (owned here, so both die with the test), reset
    // between cases.
    let mock = Mock::start();
    let mut config = CONFIG.replace("[cache]", &format!("[cache]\nfast_path = {fast_path}"));
    config.push_str("\n[admin]\ntoken = \"prop-admin\"\n");
    config.push_str(common::RASTER_ROUTES_60S);
    let edge = Edge::start(&mock.url(), &config);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        rt.block_on(run_case(&mock, &edge, &ops));
        Ok(())
    });
    if let Err(e) = result {
        panic!("fast_path = {fast_path}: {e}");
    }
}

/// Cases per configuration (each up to 40 operations).
const CASES: u32 = 64;

async fn purge(edge: &Edge, scope: &str) {
    let r = client()
        .post(edge.admin_url("/admin/purge"))
        .bearer_auth("prop-admin")
        .json(&json!({ "scope": scope }))
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200, "purge {scope}");
}

async fn run_case(mock: &Mock, edge: &Edge, ops: &[Op]) {
    mock.reset().await;
    // The reset restored the fixture behind the gateway's back: purge everything so the case
    // starts from what the mock now says.
    purge(edge, "/").await;
    let (reads, writes) = (reads(), writes());
    let c = client();
    for op in ops {
        match op {
            Op::Read {
                key,
                version,
                read,
                head,
            } => {
                let h = headers(KEYS[*key], VERSIONS[*version]);
                let path = &reads[*read];
                let method = if *head {
                    reqwest::Method::HEAD
                } else {
                    reqwest::Method::GET
                };
                let via = body(c.request(method.clone(), edge.url(path)).headers(h.clone())).await;
                let want = match (KEYS[*key], VERSIONS[*version]) {
                    // The gateway's own refusals, in its order of checks: credentials first,
                    // then the version (the origin checks the version first).
                    (None, _) => (401, "UNAUTHENTICATED".to_string()),
                    (_, None) => (400, "API_VERSION_REQUIRED".to_string()),
                    _ => body(c.get(format!("{}{}", mock.url(), path)).headers(h)).await,
                };
                let want = if *head {
                    // The origin's status; a HEAD has no body to compare.
                    (want.0, String::new())
                } else {
                    want
                };
                assert_eq!(
                    via, want,
                    "{:?} {:?} {method} {path} after {ops:?}",
                    KEYS[*key], VERSIONS[*version]
                );
            }
            Op::Write { key, write } => {
                let (m, path, b) = &writes[*write];
                body(
                    c.request(m.clone(), edge.url(path))
                        .headers(headers(KEYS[*key], VERSIONS[0]))
                        .json(b),
                )
                .await;
            }
            Op::Purge { scope } => purge(edge, PURGES[*scope]).await,
        }
    }
}
