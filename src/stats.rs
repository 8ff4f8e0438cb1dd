//! Live numbers for `GET /admin/stats` and the status page: per-route requests by cache status,
//! rate-limit decisions per tier and upstream latency, over the last minute.
//!
//! Prometheus counters only ever grow, so "hit ratio over the last minute" needs a window of its
//! own. Each counted thing is a [`Ring`] of [`WINDOW`] per-second slots; a slot is one
//! `AtomicU64` holding the second it belongs to (upper 32 bits) and its count (lower 32 bits),
//! so a slot is claimed for a new second and counted in one compare-and-swap: no locks, no
//! background timer (a slot left from a previous minute is simply reset by the first request
//! that lands in it, and ignored by readers). Recording is O(1): one hash probe per name, one
//! CAS per ring.
//!
//! Route and tier names are a bounded set (config names), kept in fixed open-addressing tables
//! of `OnceLock` slots, lock-free to read; a name past the table's size is counted under
//! [`OVERFLOW`]. Hand-written because the crates that do windowed counters (e.g. `metrics-util`'s
//! buckets) either take a lock per update or need a clock-driven upkeep task, which the gateway
//! deliberately does not run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use serde_json::{json, Value};

use crate::cache::CacheStatus;
use crate::metrics::RateLimitResult;
use crate::ratelimit::Decision;

/// Seconds the window covers.
pub const WINDOW: usize = 60;
/// Name under which routes or tiers past a table's size are counted.
pub const OVERFLOW: &str = "(overflow)";
const ROUTE_SLOTS: usize = 128;
const TIER_SLOTS: usize = 64;

/// Upper bounds (milliseconds) of the upstream latency histogram's buckets, 1-2-5 steps; the
/// last bucket takes everything slower.
pub const LATENCY_BOUNDS_MS: &[f64] = &[
    0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0, 5_000.0,
    10_000.0, 30_000.0,
];
const LATENCY_BUCKETS: usize = 18;
const _: () = assert!(LATENCY_BOUNDS_MS.len() + 1 == LATENCY_BUCKETS);

/// The cache statuses counted per route, in [`CacheStatus`] order of [`status_index`].
const STATUSES: [CacheStatus; 5] = [
    CacheStatus::Hit,
    CacheStatus::Miss,
    CacheStatus::Stale,
    CacheStatus::Revalidated,
    CacheStatus::Bypass,
];

fn status_index(s: CacheStatus) -> usize {
    match s {
        CacheStatus::Hit => 0,
        CacheStatus::Miss => 1,
        CacheStatus::Stale => 2,
        CacheStatus::Revalidated => 3,
        CacheStatus::Bypass => 4,
    }
}

fn result_index(r: RateLimitResult) -> usize {
    match r {
        RateLimitResult::Allowed => 0,
        RateLimitResult::Limited => 1,
        RateLimitResult::ShadowLimited => 2,
    }
}

/// A count per second over the last [`WINDOW`] seconds, plus the total since start.
pub struct Ring {
    slots: [AtomicU64; WINDOW],
    total: AtomicU64,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            total: AtomicU64::new(0),
        }
    }
}

impl Ring {
    /// Counts one event at second `now` (seconds since the stats started).
    pub fn add(&self, now: u32) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[now as usize % WINDOW];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let sec = (cur >> 32) as u32;
            let next = if sec == now {
                // The count saturates rather than carry into the second (4 billion per second
                // per ring is out of reach anyway).
                if cur & 0xFFFF_FFFF == 0xFFFF_FFFF {
                    return;
                }
                cur + 1
            } else if sec > now {
                // A thread that read the clock long ago and lost a whole window: drop it.
                return;
            } else {
                (u64::from(now) << 32) | 1
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Events in the window ending at second `now` (inclusive).
    pub fn window(&self, now: u32) -> u64 {
        let oldest = now.saturating_sub(WINDOW as u32 - 1);
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|v| {
                let sec = (v >> 32) as u32;
                sec >= oldest && sec <= now
            })
            .map(|v| v & 0xFFFF_FFFF)
            .sum()
    }

    /// Events in second `sec` alone.
    pub fn second(&self, sec: u32) -> u64 {
        let v = self.slots[sec as usize % WINDOW].load(Ordering::Relaxed);
        if (v >> 32) as u32 == sec {
            v & 0xFFFF_FFFF
        } else {
            0
        }
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// One claimed table slot: a name and its value.
type Named<T> = OnceLock<(Box<str>, T)>;

/// Fixed-size name → value table, lock-free to read; names past its size share [`OVERFLOW`].
struct Table<T> {
    slots: Box<[Named<T>]>,
    overflow: T,
}

fn fnv1a(s: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as usize
}

impl<T: Default> Table<T> {
    fn new(size: usize) -> Self {
        Table {
            slots: (0..size).map(|_| OnceLock::new()).collect(),
            overflow: T::default(),
        }
    }

    fn get(&self, name: &str) -> &T {
        let n = self.slots.len();
        let start = fnv1a(name) % n;
        for i in 0..n {
            let slot = &self.slots[(start + i) % n];
            let (k, v) = slot.get_or_init(|| (name.into(), T::default()));
            if &**k == name {
                return v;
            }
        }
        &self.overflow
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.slots
            .iter()
            .filter_map(|s| s.get())
            .map(|(k, v)| (&**k, v))
            .chain(std::iter::once((OVERFLOW, &self.overflow)))
    }
}

#[derive(Default)]
struct RouteCounters {
    by_status: [Ring; 5],
}

#[derive(Default)]
struct TierCounters {
    by_result: [Ring; 3],
}

/// Every live counter; one per process ([`STATS`]).
pub struct Stats {
    start: Instant,
    routes: Table<RouteCounters>,
    tiers: Table<TierCounters>,
    latency: Box<[Ring; LATENCY_BUCKETS]>,
}

pub static STATS: Lazy<Stats> = Lazy::new(Stats::new);

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            start: Instant::now(),
            routes: Table::new(ROUTE_SLOTS),
            tiers: Table::new(TIER_SLOTS),
            latency: Box::new(std::array::from_fn(|_| Ring::default())),
        }
    }

    /// Seconds since these stats started (the ring's clock; monotonic).
    fn now(&self) -> u32 {
        u32::try_from(self.start.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Counts one finished request (from the access-log step).
    pub fn record(
        &self,
        route: &str,
        cache: CacheStatus,
        rate: Option<&Decision>,
        upstream: Option<Duration>,
    ) {
        let now = self.now();
        self.routes.get(route).by_status[status_index(cache)].add(now);
        if let Some(d) = rate.filter(|d| d.quota > 0) {
            let result = match (d.limited, d.allowed) {
                (false, _) => RateLimitResult::Allowed,
                (true, false) => RateLimitResult::Limited,
                (true, true) => RateLimitResult::ShadowLimited,
            };
            self.tiers.get(&d.tier).by_result[result_index(result)].add(now);
        }
        if let Some(t) = upstream {
            let ms = t.as_secs_f64() * 1000.0;
            let i = LATENCY_BOUNDS_MS
                .iter()
                .position(|b| ms <= *b)
                .unwrap_or(LATENCY_BOUNDS_MS.len());
            self.latency[i].add(now);
        }
    }

    /// The JSON of `/admin/stats` for the request side (routes, tiers, latency, stale serves).
    pub fn snapshot(&self) -> Value {
        let now = self.now();
        // Until a minute has passed, rates are over the time the process has been up.
        let span = (u64::from(now) + 1).min(WINDOW as u64);
        let rate = |n: u64| round2(n as f64 / span as f64);

        let mut routes = serde_json::Map::new();
        let mut all = [0u64; 5];
        let mut all_total = 0u64;
        let mut all_last_second = 0u64;
        for (name, c) in self.routes.iter() {
            let w: Vec<u64> = c.by_status.iter().map(|r| r.window(now)).collect();
            let total: u64 = c.by_status.iter().map(Ring::total).sum();
            if total == 0 {
                continue;
            }
            let last_second: u64 = c.by_status.iter().map(|r| r.second(now)).sum();
            for (a, n) in all.iter_mut().zip(&w) {
                *a += n;
            }
            all_total += total;
            all_last_second += last_second;
            routes.insert(name.to_string(), route_json(&w, total, rate, last_second));
        }
        let overall = route_json(&all, all_total, rate, all_last_second);

        let mut tiers = serde_json::Map::new();
        for (name, c) in self.tiers.iter() {
            if c.by_result.iter().all(|r| r.total() == 0) {
                continue;
            }
            let mut t = serde_json::Map::new();
            for r in RateLimitResult::ALL {
                let ring = &c.by_result[result_index(*r)];
                t.insert(
                    r.as_str().to_string(),
                    json!({ "last_minute": ring.window(now), "total": ring.total() }),
                );
            }
            tiers.insert(name.to_string(), Value::Object(t));
        }

        let stale = &all[status_index(CacheStatus::Stale)];
        let stale_total: u64 = self
            .routes
            .iter()
            .map(|(_, c)| c.by_status[status_index(CacheStatus::Stale)].total())
            .sum();
        json!({
            "window_seconds": span,
            "requests": overall,
            "routes": routes,
            "stale_serves": { "last_minute": stale, "total": stale_total },
            "rate_limit": { "tiers": tiers },
            "upstream_latency_ms": self.latency_json(now),
        })
    }

    fn latency_json(&self, now: u32) -> Value {
        let counts: Vec<u64> = self.latency.iter().map(|r| r.window(now)).collect();
        let n: u64 = counts.iter().sum();
        let quantile = |q: f64| -> Value {
            if n == 0 {
                return Value::Null;
            }
            let rank = (q * n as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return LATENCY_BOUNDS_MS
                        .get(i)
                        .map_or(Value::String(format!(">{}", 30_000)), |b| json!(b));
                }
            }
            Value::Null
        };
        json!({
            "samples": n,
            "p50": quantile(0.5),
            "p99": quantile(0.99),
            "note": "upper bound of the histogram bucket the quantile falls in",
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One route's numbers: last-minute counts per cache status, hit ratio, req/s.
fn route_json(w: &[u64], total: u64, rate: impl Fn(u64) -> f64, last_second: u64) -> Value {
    let requests: u64 = w.iter().sum();
    let hits = w[status_index(CacheStatus::Hit)];
    // Lookups are the requests the cache was asked about (everything but BYPASS).
    let lookups = requests - w[status_index(CacheStatus::Bypass)];
    let mut by_status = serde_json::Map::new();
    for s in STATUSES {
        by_status.insert(s.as_str().to_ascii_lowercase(), json!(w[status_index(s)]));
    }
    json!({
        "last_minute": requests,
        "total": total,
        "req_per_sec": rate(requests),
        "last_second": last_second,
        "hit_ratio": if lookups == 0 { Value::Null } else { json!(round2(hits as f64 / lookups as f64)) },
        "cache": by_status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_counts_a_window_and_reuses_old_slots() {
        let r = Ring::default();
        r.add(0);
        r.add(0);
        r.add(59);
        assert_eq!(r.window(59), 3);
        // Second 60 reuses second 0's slot: the two old events leave the window.
        r.add(60);
        assert_eq!(r.window(60), 2);
        assert_eq!(r.second(60), 1);
        assert_eq!(r.window(200), 0);
        assert_eq!(r.total(), 4);
    }

    #[test]
    fn ring_is_exact_under_concurrency() {
        let r = std::sync::Arc::new(Ring::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| r.add(7)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(r.window(7), 40_000);
    }

    #[test]
    fn table_overflows_into_one_slot() {
        let t: Table<Ring> = Table::new(2);
        t.get("a").add(0);
        t.get("b").add(0);
        t.get("c").add(0);
        t.get("d").add(0);
        let names: Vec<&str> = t.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 3);
        assert_eq!(t.get("zzz").total(), 2, "c and d overflowed");
    }

    #[test]
    fn snapshot_reports_ratio_tiers_and_latency() {
        let s = Stats::new();
        let d = Decision {
            allowed: false,
            limited: true,
            tier: "gold".into(),
            quota: 10,
            window: Duration::from_secs(1),
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: None,
        };
        s.record("assets", CacheStatus::Hit, None, None);
        s.record("assets", CacheStatus::Hit, None, None);
        s.record(
            "assets",
            CacheStatus::Miss,
            None,
            Some(Duration::from_millis(3)),
        );
        s.record("assets", CacheStatus::Bypass, Some(&d), None);
        let v = s.snapshot();
        let a = &v["routes"]["assets"];
        assert_eq!(a["last_minute"], 4);
        assert_eq!(a["hit_ratio"], 0.67);
        assert_eq!(a["cache"]["hit"], 2);
        assert_eq!(v["rate_limit"]["tiers"]["gold"]["limited"]["total"], 1);
        assert_eq!(v["upstream_latency_ms"]["samples"], 1);
        assert_eq!(v["upstream_latency_ms"]["p50"], 5.0);
    }
}
