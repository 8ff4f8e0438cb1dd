//! In-process rate-limit decision cost and memory.
//!
//! Run: `cargo bench --bench ratelimit -- --quick` (prints the RSS cost of 1M tracked keys first).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use raster_edge::config::{Backend, Count, Mode, OnError, RateLimitSettings, RedisSettings};
use raster_edge::edge::KeyId;
use raster_edge::ratelimit::{RateLimiter, Subject};

fn limiter(max_keys: u64, rate: f64, burst: u32) -> RateLimiter {
    let settings = RateLimitSettings {
        enabled: true,
        rate,
        burst,
        backend: Backend::Local,
        count: Count::All,
        mode: Mode::Enforce,
        max_keys,
        tiers: Vec::new(),
    };
    let redis = RedisSettings {
        url: "redis://127.0.0.1:1".into(),
        timeout: Duration::from_millis(50),
        on_error: OnError::Local,
        key_prefix: "bench".into(),
        invalidation: false,
        invalidation_outage: raster_edge::config::OutagePolicy::Ttl,
    };
    RateLimiter::new(&settings, &redis).expect("limiter")
}

fn key(i: u64) -> Subject {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b[8..].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    Subject::Key(KeyId(b))
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// A regression here means the per-request limiter overhead grew for the common case (one busy key).
fn hot_key(c: &mut Criterion) {
    // Always over the limit after the first 100: the same path as allowed, minus the write.
    let rl = limiter(1_000_000, 50.0, 100);
    let who = key(1);
    c.bench_function("ratelimit/local_hot_key", |b| {
        b.iter(|| black_box(rl.check_local(black_box(who))))
    });
}

// A regression here means lookups got slower with a large working set (100k live keys, cache misses).
fn many_keys(c: &mut Criterion) {
    const N: u64 = 100_000;
    // One request per 1000 s: every subject's TAT stays ahead, so all stay tracked.
    let rl = limiter(1_000_000, 0.001, 1_000);
    for i in 0..N {
        rl.check_local(key(i));
    }
    let mut i = 0u64;
    c.bench_function("ratelimit/local_100k_keys", |b| {
        b.iter(|| {
            i = (i + 7_919) % N;
            black_box(rl.check_local(key(i)))
        })
    });
}

// A regression here means first-seen keys (insert + eviction bookkeeping) got costlier; the
// printed RSS is the memory cost of 1M tracked keys — growth means per-key state got fatter.
fn new_keys_and_memory(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let before = vm_rss_kib();
    // One request per 1000 s: nothing expires while the keys are inserted and measured.
    let rl = limiter(2_000_000, 0.001, 10);
    for i in 0..N {
        rl.check_local(key(i));
    }
    let tracked = rl.tracked_keys();
    let after = vm_rss_kib();
    let delta = after.saturating_sub(before);
    println!(
        "ratelimit/memory_1m_keys: tracked {tracked} keys, VmRSS +{} MiB ({} bytes/key)",
        delta / 1024,
        delta * 1024 / tracked.max(1)
    );
    let mut next = N;
    c.bench_function("ratelimit/local_new_key", |b| {
        b.iter(|| {
            next += 1;
            black_box(rl.check_local(key(next)))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = new_keys_and_memory, hot_key, many_keys
}
criterion_main!(benches);
