//! The cache's memory accounting against the process's real memory: the real gateway filled
//! with many distinct cached responses must keep `raster_edge_cache_bytes` within
//! `cache.max_memory`, and its RSS must grow by roughly what that gauge says (the weigher is
//! what bounds memory, so a gauge that undercounts lets the process outgrow `max_memory`).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{auth, client, Edge, Mock};

const BCN: &str = "/organizations/monogram-labs/libraries/barcelona";
const MAX_MEMORY: u64 = 64 * 1024 * 1024;
/// Distinct URLs requested. Enough that RSS growth dwarfs allocator noise, few enough for a
/// debug build to stay well under 30 s.
const URLS: u64 = 24_000;
const TASKS: u64 = 16;

/// Resident set size of `pid` in bytes, from `/proc/<pid>/status`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

fn config() -> String {
    format!(
        r#"
[rate_limit]
enabled = false
[cache]
enabled = true
max_memory = "64MiB"
[[cache.routes]]
name = "assets"
path = "/organizations/{{org}}/libraries/{{library}}/assets"
ttl = "1h"
"#
    )
}

/// Requests `URLS` distinct asset pages from `TASKS` concurrent tasks; returns how many were
/// answered 200.
async fn fill(edge: &Edge, offset: u64) -> u64 {
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let base = edge.url(&format!("{BCN}/assets"));
        let ok = ok.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut i = t;
            while i < URLS {
                let n = offset + i;
                let url = format!("{base}?pageSize=2&page={}&x={n}", n % 100 + 1);
                if let Ok(r) = c.get(&url).headers(auth("demo-read")).send().await {
                    if r.status() == 200 && r.bytes().await.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += TASKS;
            }
        }));
    }
    for t in tasks {
        t.await.expect("fill task");
    }
    ok.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_cache_memory_tracks_rss_and_stays_bounded() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config());
    let pid = edge.proc.pid();

    // Warm up connections, the upstream pool and the allocator with a small fill of its own
    // URL range, so the baseline includes them and the measurement sees only cached entries.
    let warm_start = Instant::now();
    let _ = fill_n(&edge, 1_000_000, 500).await;
    let before = rss_bytes(pid);
    let bytes_before = edge.metric("raster_edge_cache_bytes", &[]).await;

    let ok = fill(&edge, 0).await;
    assert!(
        ok >= URLS * 99 / 100,
        "only {ok} of {URLS} requests answered"
    );
    let after = rss_bytes(pid);
    let bytes = edge.metric("raster_edge_cache_bytes", &[]).await;
    let entries = edge.metric("raster_edge_cache_entries", &[]).await;
    let growth = after.saturating_sub(before) as f64;
    let counted = (bytes - bytes_before).max(0.0);
    eprintln!(
        "entries {entries}, gauge {bytes} B ({:.0} B/entry), RSS growth {growth} B ({:.0} B/entry), took {:?}",
        bytes / entries.max(1.0),
        growth / entries.max(1.0),
        warm_start.elapsed()
    );
    assert!(entries > 5_000.0, "too few entries cached: {entries}");
    assert!(
        bytes > 0.0 && bytes <= MAX_MEMORY as f64,
        "cache bytes {bytes} over max_memory {MAX_MEMORY}"
    );
    let bound = 1.5 * counted + 20.0 * 1024.0 * 1024.0;
    assert!(
        growth <= bound,
        "RSS grew {growth} B while the gauge grew {counted} B (bound {bound} B)"
    );
}

/// `fill` for a given count (the warm-up).
async fn fill_n(edge: &Edge, offset: u64, n: u64) -> u64 {
    let c = client();
    let base = edge.url(&format!("{BCN}/assets"));
    let mut ok = 0;
    for i in 0..n {
        let url = format!("{base}?pageSize=2&page=1&x={}", offset + i);
        if let Ok(r) = c.get(&url).headers(auth("demo-read")).send().await {
            if r.status() == 200 && r.bytes().await.is_ok() {
                ok += 1;
            }
        }
    }
    let _ = Duration::ZERO;
    ok
}
