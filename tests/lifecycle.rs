//! The process around the proxy: admin endpoints, metrics, structured access logs that never
//! contain an API key, graceful shutdown on SIGTERM, and two instances side by side.

mod common;

use raster_edge::metrics;

use std::time::{Duration, Instant};

use common::{auth, client, Edge, Mock};

const PLAIN: &str = "[cache]\nenabled = false\n[rate_limit]\nenabled = false\n";

#[tokio::test]
async fn test_admin_health_ready_and_metrics() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), PLAIN);
    let c = client();
    assert_eq!(
        c.get(edge.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(edge.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .get(edge.url("/me"))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The request is counted by the logging hook, which runs after the response has gone out:
    // poll (bounded) rather than read once.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = edge.metrics().await;
        let n = common::metric_sum(
            &text,
            metrics::REQUESTS_TOTAL,
            &[("route", "me"), ("status", "2xx")],
        );
        if n == 1.0 || Instant::now() > deadline {
            assert_eq!(n, 1.0, "{text}");
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(text.contains(&format!("{}_bucket", metrics::REQUEST_DURATION_SECONDS)));
    assert!(!text.contains("demo-read"), "a raw key leaked into metrics");
    let r = c.get(edge.admin_url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn test_sigterm_lets_in_flight_request_complete_then_exits_zero() {
    let mock = Mock::start_with(&["--latency-ms", "1500"]);
    let mut edge = Edge::start(
        &mock.url(),
        &format!("{PLAIN}[server]\ngrace_period = \"20s\"\n"),
    );
    let url = edge.url("/me");
    let slow =
        tokio::spawn(async move { client().get(url).headers(auth("demo-read")).send().await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    edge.proc.signal(15);
    let resp = slow.await.unwrap().expect("in-flight request failed");
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["data"]["organizationId"].is_string(), "{v}");
    let started = Instant::now();
    let code = edge.proc.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    // Exits once drained, not after the whole 20 s grace period.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn test_two_instances_run_side_by_side() {
    let mock = Mock::start();
    let a = Edge::start(&mock.url(), PLAIN);
    let b = Edge::start(&mock.url(), PLAIN);
    for e in [&a, &b] {
        let r = client()
            .get(e.url("/me"))
            .headers(auth("demo-read"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[test]
fn test_access_log_is_json_and_never_contains_the_key() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = Mock::start();
    let mut edge = Edge::start(&mock.url(), &format!("{PLAIN}[log]\nformat = \"json\"\n"));
    rt.block_on(async {
        for key in ["demo-read", "totally-secret-key"] {
            let _ = client()
                .get(edge.url("/me?q=1"))
                .headers(auth(key))
                .send()
                .await
                .unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    edge.proc.signal(15);
    assert!(edge.proc.wait_exit(Duration::from_secs(10)).is_some());
    let err = edge.proc.output();
    let access: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "raster_edge::access")
        .collect();
    assert_eq!(access.len(), 2, "{err}");
    for line in &access {
        assert_eq!(line["method"], "GET");
        assert_eq!(line["route"], "me");
        assert_eq!(line["path"], "/me", "query strings stay out of logs");
        assert!(line["status"].is_u64());
        assert!(line["cache"].is_string());
        assert!(line["duration_ms"].is_number());
        assert_eq!(line["key"].as_str().map(str::len), Some(8));
    }
    assert!(
        !err.contains("demo-read") && !err.contains("totally-secret-key"),
        "key leaked: {err}"
    );
}
