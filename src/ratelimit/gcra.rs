//! The Generic Cell Rate Algorithm, pure: no clock, no storage, no I/O. Both backends use it —
//! the in-process store in nanoseconds, the Redis script (which re-implements [`decide`] in Lua)
//! in microseconds — so [`Quota`] is expressed in an abstract tick unit.
//!
//! State per subject is one number, the theoretical arrival time (TAT). With emission interval
//! `T = 1/rate` and tolerance `tau = burst * T`, a request at `now` is admitted iff
//! `max(TAT, now) + T - tau <= now`; admitting moves TAT to `max(TAT, now) + T`. A fresh subject
//! (no TAT) can send `burst` requests at once, then one every `T`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A rate and burst in ticks of `unit_ns` nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Emission interval `T`: ticks between two requests at the sustained rate (≥ 1).
    pub interval: u64,
    /// Tolerance `tau = burst * T`: how far TAT may run ahead of now.
    pub tolerance: u64,
    pub burst: u32,
    /// Length of one tick in nanoseconds.
    pub unit_ns: u64,
}

impl Quota {
    /// `rate` per second (positive, finite — validated by the config; anything else is treated
    /// as the slowest representable rate) and `burst` (≥ 1; 0 is treated as 1).
    pub fn new(rate: f64, burst: u32, unit_ns: u64) -> Quota {
        let unit_ns = unit_ns.max(1);
        let burst = burst.max(1);
        let per_sec = 1e9 / unit_ns as f64;
        let interval = if rate.is_finite() && rate > 0.0 {
            (per_sec / rate).round()
        } else {
            f64::MAX
        };
        // Cap so that tolerance and TAT arithmetic cannot overflow (≈ 146 years in ns).
        let cap = (u64::MAX / 4) / u64::from(burst);
        let interval = if interval >= cap as f64 {
            cap
        } else {
            (interval as u64).max(1)
        };
        Quota {
            interval,
            tolerance: interval * u64::from(burst),
            burst,
            unit_ns,
        }
    }

    /// The same rate and burst in nanosecond ticks.
    pub fn nanos(rate: f64, burst: u32) -> Quota {
        Quota::new(rate, burst, 1)
    }

    pub fn ticks_to_duration(&self, ticks: u64) -> Duration {
        Duration::from_nanos(ticks.saturating_mul(self.unit_ns))
    }

    /// Time to refill a whole burst from empty (`RateLimit-Policy` window).
    pub fn window(&self) -> Duration {
        self.ticks_to_duration(self.tolerance)
    }
}

/// The result of one decision, in ticks relative to `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Requests that could still be admitted right now (after this one, if admitted).
    pub remaining: u32,
    /// Ticks until the full burst is available again.
    pub reset: u64,
    /// Ticks until one request would be admitted (0 when admitted).
    pub retry_after: u64,
}

impl Outcome {
    /// Builds the outcome from `TAT - now` after the decision (the new TAT when admitted, the
    /// unchanged one when not). The Redis script returns exactly these numbers.
    pub fn from_parts(q: &Quota, allowed: bool, tat_ahead: u64) -> Outcome {
        let slack = q.tolerance.saturating_sub(tat_ahead);
        let remaining = u32::try_from(slack / q.interval)
            .unwrap_or(u32::MAX)
            .min(q.burst);
        let retry_after = if allowed {
            0
        } else {
            // Admitted once `TAT + T - tau <= now`.
            (tat_ahead + q.interval).saturating_sub(q.tolerance).max(1)
        };
        Outcome {
            allowed,
            remaining,
            reset: tat_ahead,
            retry_after,
        }
    }
}

/// One GCRA step. `tat` is the stored TAT (`None`: fresh subject). Returns the outcome and the
/// TAT to store (`None` when the request is refused: nothing changes).
#[inline]
pub fn decide(q: &Quota, tat: Option<u64>, now: u64) -> (Outcome, Option<u64>) {
    let tat = tat.map_or(now, |t| t.max(now));
    let new_tat = tat + q.interval;
    if new_tat - q.tolerance.min(new_tat) > now {
        (Outcome::from_parts(q, false, tat - now), None)
    } else {
        (Outcome::from_parts(q, true, new_tat - now), Some(new_tat))
    }
}

/// Where the in-process limiter gets "now" from, in nanoseconds (always > 0, monotonic).
pub trait Clock: Send + Sync + 'static {
    fn now_ns(&self) -> u64;
}

/// The real clock: nanoseconds since the clock was created, plus one.
#[derive(Debug)]
pub struct MonotonicClock {
    base: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX / 2) + 1
    }
}

/// A clock that only moves when told to (tests, benchmarks).
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            now: AtomicU64::new(1_000_000_000),
        })
    }

    pub fn advance(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 4);
        self.now.fetch_add(ns, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// One subject's stored TAT, as a store keeps it.
    #[derive(Default)]
    struct Cell(Option<u64>);

    impl Cell {
        fn check(&mut self, q: &Quota, now: u64) -> Outcome {
            let (outcome, next) = decide(q, self.0, now);
            if next.is_some() {
                self.0 = next;
            }
            outcome
        }
    }

    #[test]
    fn quota_in_ticks() {
        let q = Quota::nanos(50.0, 100);
        assert_eq!(q.interval, 20 * MS);
        assert_eq!(q.tolerance, 2_000 * MS);
        assert_eq!(q.window(), Duration::from_secs(2));
        let us = Quota::new(50.0, 100, 1_000);
        assert_eq!(us.interval, 20_000);
        assert_eq!(us.window(), Duration::from_secs(2));
        // Absurd rates do not overflow.
        let slow = Quota::nanos(1e-30, u32::MAX);
        assert!(slow.tolerance >= slow.interval);
        let fast = Quota::nanos(1e30, 1);
        assert_eq!(fast.interval, 1);
    }

    #[test]
    fn burst_then_refill() {
        // 10/s, burst 5: T = 100ms, tau = 500ms.
        let q = Quota::nanos(10.0, 5);
        let mut cell = Cell::default();
        let t0 = 1_000 * MS;
        for i in 0..5u32 {
            let o = cell.check(&q, t0);
            assert!(o.allowed, "request {i}");
            assert_eq!(o.remaining, 4 - i);
            assert_eq!(o.reset, u64::from(i + 1) * 100 * MS);
            assert_eq!(o.retry_after, 0);
        }
        let o = cell.check(&q, t0);
        assert_eq!(
            o,
            Outcome {
                allowed: false,
                remaining: 0,
                reset: 500 * MS,
                retry_after: 100 * MS
            }
        );
        // 40ms later: still 60ms to wait.
        let o = cell.check(&q, t0 + 40 * MS);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 60 * MS);
        assert_eq!(o.reset, 460 * MS);
        // After one interval, exactly one more.
        let o = cell.check(&q, t0 + 100 * MS);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        assert_eq!(o.reset, 500 * MS);
        assert!(!cell.check(&q, t0 + 100 * MS).allowed);
        // After 250ms more, two and a half intervals: two admitted, third refused.
        let t = t0 + 350 * MS;
        let o = cell.check(&q, t);
        assert!(o.allowed);
        assert_eq!(o.remaining, 1);
        assert!(cell.check(&q, t).allowed);
        let o = cell.check(&q, t);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 50 * MS);
        // Long idle: full burst again.
        let t = t + 10_000 * MS;
        let o = cell.check(&q, t);
        assert!(o.allowed);
        assert_eq!(o.remaining, 4);
        assert_eq!(o.reset, 100 * MS);
    }

    #[test]
    fn steady_rate_is_admitted() {
        let q = Quota::nanos(10.0, 1);
        let mut cell = Cell::default();
        let mut t = 1_000 * MS;
        for _ in 0..100 {
            assert!(cell.check(&q, t).allowed);
            assert!(!cell.check(&q, t + 50 * MS).allowed);
            t += 100 * MS;
        }
    }

    #[test]
    fn refused_requests_store_nothing() {
        let q = Quota::new(2.0, 3, 1_000);
        let mut tat = None;
        let mut admitted = 0;
        for _ in 0..10 {
            let (o, next) = decide(&q, tat, 5_000_000);
            if o.allowed {
                admitted += 1;
                tat = next;
            } else {
                assert!(next.is_none());
            }
        }
        assert_eq!(admitted, 3);
    }
}
