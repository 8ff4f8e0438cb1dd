//! The cache's memory accounting against the process's real memory: the real gateway filled
//! with many distinct cached responses must keep `raster_edge_cache_bytes` within
//! `cache.max_memory`, and its RSS must grow by roughly what that gauge says (the weigher is
//! what bounds memory, so a gauge that undercounts lets the process outgrow `max_memory`).

mod common;

use raster_edge::metrics;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{auth, client, Edge, Mock};
use pingora::cache::storage::Storage;
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::http::ResponseHeader;
use raster_edge::cache::MokaStorage;

/// Counts the heap bytes allocated and freed on the current thread, as the chunks glibc's
/// malloc hands out (8-byte header, 16-byte rounding, 32-byte minimum), so a test can see
/// what a piece of single-threaded code really holds.
struct Counting;

thread_local! {
    static LIVE: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

fn chunk(size: usize) -> i64 {
    (((size + 8 + 15) & !15).max(32)) as i64
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a plain
// thread-local cell (const-initialized, no destructor), so counting never allocates.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| l.set(l.get() + chunk(layout.size())));
        std::alloc::System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get() - chunk(layout.size())));
        std::alloc::System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let _ = LIVE.try_with(|l| l.set(l.get() - chunk(layout.size()) + chunk(new_size)));
        std::alloc::System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> i64 {
    LIVE.with(|l| l.get())
}

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

/// `max_memory` is `MAX_MEMORY`; a TTL long enough that nothing expires mid-test.
const CONFIG: &str = r#"
[rate_limit]
enabled = false
[cache]
enabled = true
max_memory = "64MiB"
[[cache.routes]]
name = "assets"
path = "/organizations/{org}/libraries/{library}/assets"
ttl = "1h"
"#;

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
    let edge = Edge::start(&mock.url(), CONFIG);
    let pid = edge.proc.pid();

    // Warm up connections, the upstream pool and the allocator with a small fill of its own
    // URL range, so the baseline includes them and the measurement sees only cached entries.
    let warm_start = Instant::now();
    let _ = fill_n(&edge, 1_000_000, 500).await;
    let before = rss_bytes(pid);
    let bytes_before = edge.metric(metrics::CACHE_BYTES, &[]).await;

    let ok = fill(&edge, 0).await;
    assert!(
        ok >= URLS * 99 / 100,
        "only {ok} of {URLS} requests answered"
    );
    let after = rss_bytes(pid);
    let bytes = edge.metric(metrics::CACHE_BYTES, &[]).await;
    let entries = edge.metric(metrics::CACHE_ENTRIES, &[]).await;
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
    ok
}

/// An origin response as pingora's HTTP/1 client hands it over: header values and case names
/// are slices of the 4 KiB read buffer, which also holds the start of the body.
fn parsed_response(i: u32, body_len: usize) -> (ResponseHeader, Bytes) {
    let mut buf = BytesMut::with_capacity(4096);
    let fields = [
        ("Content-Type", "application/json".to_string()),
        ("vary", "Api-Version".to_string()),
        ("etag", format!("\"{i:016x}-{body_len}\"")),
        ("Content-Length", body_len.to_string()),
        ("Date", "Fri, 27 Nov 2026 18:51:34 GMT".to_string()),
    ];
    let mut spans = Vec::new();
    for (name, value) in &fields {
        let n = buf.len();
        buf.put_slice(name.as_bytes());
        let v = buf.len();
        buf.put_slice(value.as_bytes());
        spans.push((n..v, v..buf.len()));
    }
    let body_at = buf.len();
    buf.put_bytes(b'x', body_len);
    let buf = buf.freeze();
    let mut h = ResponseHeader::build(200, Some(fields.len())).expect("header");
    for (name, value) in spans {
        h.append_header(
            buf.slice(name),
            pingora::http::header_value_from_raw(buf.slice(value)),
        )
        .expect("append");
    }
    (h, buf.slice(body_at..))
}

/// The weigher's count per entry is the heap the entry really holds (±15%), so `max_memory`
/// bounds memory: measured with the counting allocator on a store filled through its miss
/// handlers with pingora-shaped responses.
#[test]
fn test_cache_weight_matches_measured_heap_cost() {
    const N: u32 = 4000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let storage: &'static MokaStorage = Box::leak(Box::new(MokaStorage::new(1 << 30, 1 << 20)));
    let trace = Span::inactive().handle();
    // Warm up moka's structures so the baseline is not a mostly empty cache.
    let fill = |from: u32, to: u32| {
        rt.block_on(async {
            for i in from..to {
                let (header, body) = parsed_response(i, 1314);
                let now = std::time::SystemTime::now();
                let meta = CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, header);
                let key = CacheKey::new(i.to_le_bytes().to_vec(), "");
                let mut miss = storage
                    .get_miss_handler(&key, &meta, &trace)
                    .await
                    .expect("miss handler");
                miss.write_body(body, true).await.expect("write");
                miss.finish().await.expect("finish");
            }
        });
        storage.run_pending_tasks();
    };
    fill(0, 500);
    let heap_before = live();
    let bytes_before = storage.bytes();
    fill(500, 500 + N);
    let heap = (live() - heap_before) as f64 / f64::from(N);
    let weight = (storage.bytes() - bytes_before) as f64 / f64::from(N);
    eprintln!("per entry: heap {heap:.0} B, weight {weight:.0} B");
    assert!(
        (0.85..=1.15).contains(&(weight / heap)),
        "weight {weight:.0} B per entry, heap {heap:.0} B per entry"
    );
}
