//! The in-process store: one GCRA cell (an atomic TAT) per subject in a moka cache, bounded by
//! `max_keys` and with a per-entry idle expiry of the tier's window (`burst / rate`, at least a
//! second). After that much idle time a subject's TAT is in the past, so dropping its entry
//! changes no decision: memory stays bounded with millions of distinct keys. (Eviction by the
//! `max_keys` bound, under pressure, forgets a live subject — it then starts with a full burst.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use super::gcra::{AtomicCell, Clock, Outcome};
use super::tiers::TierPolicy;
use super::Subject;
use crate::metrics::METRICS;

/// Shortest idle expiry: below this, entries would churn for nothing.
const MIN_IDLE: Duration = Duration::from_secs(1);
/// How often (at most) a decision refreshes the tracked-keys gauge.
const GAUGE_EVERY_NS: u64 = 1_000_000_000;

#[derive(Debug)]
struct Entry {
    cell: AtomicCell,
    idle: Duration,
}

struct IdleExpiry;

impl Expiry<Subject, Arc<Entry>> for IdleExpiry {
    fn expire_after_create(
        &self,
        _key: &Subject,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.idle)
    }

    fn expire_after_read(
        &self,
        _key: &Subject,
        value: &Arc<Entry>,
        _read_at: Instant,
        _duration_until_expiry: Option<Duration>,
        _last_modified_at: Instant,
    ) -> Option<Duration> {
        Some(value.idle)
    }

    fn expire_after_update(
        &self,
        _key: &Subject,
        value: &Arc<Entry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.idle)
    }
}

/// In-process GCRA state for every subject seen recently.
pub struct LocalStore {
    cache: Cache<Subject, Arc<Entry>>,
    clock: Arc<dyn Clock>,
    gauge_at: AtomicU64,
}

impl LocalStore {
    pub fn new(max_keys: u64, clock: Arc<dyn Clock>) -> LocalStore {
        let cache = Cache::builder()
            .max_capacity(max_keys.max(1))
            .expire_after(IdleExpiry)
            .build();
        LocalStore {
            cache,
            clock,
            gauge_at: AtomicU64::new(0),
        }
    }

    /// One decision for `subject` under `tier`'s quota (in nanoseconds).
    #[inline]
    pub fn check(&self, subject: &Subject, tier: &TierPolicy) -> Outcome {
        let entry = self.cache.get_with(*subject, || {
            Arc::new(Entry {
                cell: AtomicCell::new(),
                idle: tier.quota.window().max(MIN_IDLE),
            })
        });
        let now = self.clock.now_ns();
        let outcome = entry.cell.check(&tier.quota, now);
        self.maybe_update_gauge(now);
        outcome
    }

    #[inline]
    fn maybe_update_gauge(&self, now: u64) {
        let last = self.gauge_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= GAUGE_EVERY_NS
            && self
                .gauge_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let n = i64::try_from(self.cache.entry_count()).unwrap_or(i64::MAX);
            METRICS.ratelimit_tracked_keys.set(n);
        }
    }

    /// Subjects currently tracked (after running moka's pending evictions; not for the hot path).
    pub fn tracked_keys(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::super::gcra::ManualClock;
    use super::*;
    use crate::edge::KeyId;
    use std::net::{IpAddr, Ipv6Addr};

    fn key(i: u64) -> Subject {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&i.to_le_bytes());
        Subject::Key(KeyId(b))
    }

    #[test]
    fn subjects_are_independent() {
        let clock = ManualClock::new();
        let store = LocalStore::new(1_000, clock.clone());
        let tier = TierPolicy::new("t-local-indep", 1.0, 2);
        assert!(store.check(&key(1), &tier).allowed);
        assert!(store.check(&key(1), &tier).allowed);
        assert!(!store.check(&key(1), &tier).allowed);
        assert!(store.check(&key(2), &tier).allowed);
        let ip = Subject::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(store.check(&ip, &tier).remaining, 1);
        clock.advance(Duration::from_secs(1));
        let o = store.check(&key(1), &tier);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
    }

    #[test]
    fn max_keys_bounds_memory() {
        let clock = ManualClock::new();
        let store = LocalStore::new(100, clock);
        let tier = TierPolicy::new("t-local-bound", 10.0, 10);
        for i in 0..20_000 {
            store.check(&key(i), &tier);
        }
        let n = store.tracked_keys();
        assert!(n <= 100, "tracked {n} keys, bound is 100");
    }

    #[test]
    fn idle_keys_expire() {
        let store = LocalStore::new(1_000, Arc::new(super::super::gcra::MonotonicClock::new()));
        // Window 1s (the minimum idle time).
        let tier = TierPolicy::new("t-local-idle", 100.0, 1);
        for i in 0..50 {
            store.check(&key(i), &tier);
        }
        assert_eq!(store.tracked_keys(), 50);
        std::thread::sleep(Duration::from_millis(1_300));
        assert_eq!(store.tracked_keys(), 0);
    }
}
