//! Property: random read/write sequences from several keys against one gateway + raster-mock
//! (reset between cases). Every read through the gateway equals the mock's direct answer for
//! that key at that moment: a key never gets another key's body (isolation), and after a
//! successful write the next read is already fresh (write invalidation).

mod common;

use common::{auth, client, Edge, Mock};
use proptest::prelude::*;
use serde_json::json;

const BCN: &str = "/organizations/monogram-labs/libraries/barcelona";
const LIS: &str = "/organizations/monogram-labs/libraries/lisbon";
const KEYS: [&str; 3] = ["demo-read", "demo-write", "demo-barcelona"];

const CONFIG: &str = r#"
[rate_limit]
enabled = false
[cache]
negative_ttl = "60s"
"#;

#[derive(Debug, Clone)]
enum Op {
    Read { key: usize, read: usize },
    Write { key: usize, write: usize },
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
        4 => (0..KEYS.len(), 0..10usize).prop_map(|(key, read)| Op::Read { key, read }),
        1 => (0..KEYS.len(), 0..6usize).prop_map(|(key, write)| Op::Write { key, write }),
    ]
}

async fn body(req: reqwest::RequestBuilder) -> (u16, String) {
    let r = req.send().await.expect("request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[test]
fn prop_cache_isolation_and_post_write_freshness() {
    // One gateway + mock for every case (owned here, so both die with the test), reset
    // between cases.
    let mock = Mock::start();
    let mut config = CONFIG.to_string();
    config.push_str("\n[admin]\ntoken = \"prop-admin\"\n");
    config.push_str(common::RASTER_ROUTES_60S);
    let edge = Edge::start(&mock.url(), &config);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..30), |ops| {
        rt.block_on(run_case(&mock, &edge, &ops));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn run_case(mock: &Mock, edge: &Edge, ops: &[Op]) {
    mock.reset().await;
    // The reset restored the fixture behind the gateway's back: purge everything so the case
    // starts from what the mock now says.
    let r = client()
        .post(edge.admin_url("/admin/purge"))
        .bearer_auth("prop-admin")
        .json(&json!({"scope": "/"}))
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200);
    let (reads, writes) = (reads(), writes());
    let c = client();
    for op in ops {
        match op {
            Op::Read { key, read } => {
                let k = KEYS[*key];
                let path = &reads[*read];
                let via = body(c.get(edge.url(path)).headers(auth(k))).await;
                let want = body(c.get(format!("{}{}", mock.url(), path)).headers(auth(k))).await;
                assert_eq!(via, want, "{k} GET {path} after {ops:?}");
            }
            Op::Write { key, write } => {
                let (m, path, b) = &writes[*write];
                body(
                    c.request(m.clone(), edge.url(path))
                        .headers(auth(KEYS[*key]))
                        .json(b),
                )
                .await;
            }
        }
    }
}
