//! The status page at `GET /` on the admin listener, in a real browser: Debian's `chromium`,
//! headless, loads the page (token in its query), lets its script poll `/admin/stats`, and dumps
//! the DOM; after more traffic through the gateway the numbers on the page have moved.
//!
//! `RASTER_STATUS_SCREENSHOT=docs/status-page.png cargo test --test status_page` also writes
//! the screenshot docs/OPERATIONS.md shows.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{auth, client, run_with_timeout, Edge, Mock};

const TOKEN: &str = "status-page-token";

fn chromium() -> PathBuf {
    let path = std::env::var_os("RASTER_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "chromium is not installed at {}: this test drives a real browser. Install it with \
         `scripts/install-prereqs.sh --test` (or `apt-get install -y chromium`), or point \
         RASTER_TEST_CHROMIUM at a chromium binary",
        path.display()
    );
    path
}

/// Runs headless chromium on `url` with `extra` arguments (a fresh profile each time); the
/// virtual time budget lets the page's script fetch and poll before the DOM is taken.
fn run_chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url);
    let (code, out, err) = run_with_timeout(cmd, Duration::from_secs(90));
    assert_eq!(code, Some(0), "chromium failed ({code:?}):\n{err}");
    out
}

/// The text of the element with `id` in a dumped DOM.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').map(|i| i + 1).unwrap_or(0);
    let end = rest[start..].find('<').map_or(rest.len(), |i| start + i);
    rest[start..end].trim()
}

fn number_of(dom: &str, id: &str) -> f64 {
    let t = text_of(dom, id);
    t.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("#{id} is not a number: {t:?}"))
}

async fn traffic(edge: &Edge, n: usize) {
    let paths = [
        "/me",
        "/organizations/monogram-labs/libraries",
        "/organizations/monogram-labs/libraries/barcelona/assets?page=1",
    ];
    for i in 0..n {
        let r = client()
            .get(edge.url(paths[i % paths.len()]))
            .headers(auth("demo-read"))
            .send()
            .await
            .expect("read");
        assert_eq!(r.status().as_u16(), 200);
    }
}

#[tokio::test]
async fn test_status_page_loads_in_chromium_and_numbers_move() {
    chromium();
    let mock = Mock::start();
    let toml = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[rate_limit]\nenabled = true\nrate = 1000\nburst = 1000\n\
         [cache]\nenabled = true\n{}",
        common::RASTER_ROUTES_60S
    );
    let edge = Edge::start(&mock.url(), &toml);

    // The page needs the token (header or query) once one is configured.
    let page = client()
        .get(edge.admin_url("/"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 401);
    let wrong = client()
        .get(edge.admin_url("/?token=wrong"))
        .send()
        .await
        .expect("page");
    assert_eq!(wrong.status().as_u16(), 401);
    let page = client()
        .get(edge.admin_url("/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let html = page.text().await.expect("html");
    // No external resources: nothing is loaded from anywhere but this listener.
    for external in ["http://", "https://", "src=\"//"] {
        assert!(!html.contains(external), "page references {external}");
    }

    let url = edge.admin_url(&format!("/?token={TOKEN}"));
    traffic(&edge, 12).await;
    let first = run_chromium(&url, &["--dump-dom".to_string()]);
    assert!(
        text_of(&first, "status").starts_with("updated"),
        "the script did not fetch /admin/stats: {}",
        text_of(&first, "status")
    );
    assert!(number_of(&first, "polls") >= 1.0);
    let total1 = number_of(&first, "requests-total");
    assert_eq!(total1, 12.0, "requests since start");
    assert!(text_of(&first, "hit-ratio").ends_with('%'));
    assert!(number_of(&first, "cache-entries") >= 1.0);
    assert_eq!(text_of(&first, "redis-state"), "not used");
    let stats: serde_json::Value = client()
        .get(edge.admin_url("/admin/stats"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    let hash = stats["data"]["config"]["hash"]
        .as_str()
        .expect("hash")
        .to_string();
    assert_eq!(hash.len(), 16, "{stats}");
    assert_eq!(text_of(&first, "config-hash"), hash);
    assert_eq!(text_of(&first, "last-reload"), "none since start");
    for route in ["<td>me</td>", "<td>libraries</td>", "<td>assets</td>"] {
        assert!(first.contains(route), "routes table lacks {route}");
    }
    assert!(first.contains("<td>default</td>"), "tiers table");

    traffic(&edge, 30).await;
    // A reload the page then reports (same file: nothing changed, still a reload).
    let reload = client()
        .post(edge.admin_url("/admin/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(reload.status().as_u16(), 200);
    let second = run_chromium(&url, &["--dump-dom".to_string()]);
    assert!(
        text_of(&second, "last-reload").starts_with("ok (admin, "),
        "{}",
        text_of(&second, "last-reload")
    );
    assert_eq!(text_of(&second, "config-hash"), hash);
    let total2 = number_of(&second, "requests-total");
    assert_eq!(total2, 42.0, "numbers moved under traffic");
    assert!(number_of(&second, "requests-minute") > number_of(&first, "requests-minute"));
    assert!(number_of(&second, "req-rate") > 0.0);

    if let Some(shot) = std::env::var_os("RASTER_STATUS_SCREENSHOT") {
        let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join(shot);
        run_chromium(
            &url,
            &[
                format!("--screenshot={}", shot.display()),
                "--window-size=1200,900".to_string(),
            ],
        );
        assert!(shot.exists(), "screenshot {}", shot.display());
    }
}
