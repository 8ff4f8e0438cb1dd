//! Tier selection: each configured tier lists the key ids it covers; everything else (and every
//! IP subject) gets the default tier built from `rate_limit.rate` / `rate_limit.burst`.
//!
//! Key ids in the config are lowercase hex. A full id (32 hex digits) matches exactly (a hash
//! lookup); a shorter one (the config accepts ≥ 8 digits, e.g. what logs show) matches every key
//! id that starts with it — checked only when no exact entry matched, longest prefix first.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::IntCounter;

use super::gcra::Quota;
use super::Subject;
use crate::config::{RateLimitSettings, Tier};
use crate::edge::KeyId;
use crate::metrics::METRICS;

/// Name of the tier built from the top-level rate and burst.
pub const DEFAULT_TIER: &str = "default";

/// One tier, with everything the hot path needs precomputed.
#[derive(Debug)]
pub struct TierPolicy {
    pub name: Arc<str>,
    /// Quota in nanoseconds (in-process store).
    pub quota: Quota,
    /// The same quota in microseconds (Redis script).
    pub quota_us: Quota,
    pub(crate) allowed: IntCounter,
    pub(crate) limited: IntCounter,
    pub(crate) shadow_limited: IntCounter,
}

impl TierPolicy {
    pub fn new(name: &str, rate: f64, burst: u32) -> TierPolicy {
        let quota = Quota::nanos(rate, burst);
        let name: Arc<str> = Arc::from(name);
        let counter = |result: &str| {
            METRICS
                .ratelimit_decisions
                .with_label_values(&[result, &name])
        };
        TierPolicy {
            allowed: counter("allowed"),
            limited: counter("limited"),
            shadow_limited: counter("shadow_limited"),
            quota_us: Quota::new(rate, burst, 1_000),
            quota,
            name,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("rate_limit.tiers: key id {0:?} is not lowercase hex of at most 32 digits")]
    BadKeyId(String),
}

/// Key id → tier.
#[derive(Debug)]
pub struct Tiers {
    default: Arc<TierPolicy>,
    exact: HashMap<KeyId, Arc<TierPolicy>>,
    /// (lowercase hex prefix, tier), longest first.
    prefixes: Vec<(String, Arc<TierPolicy>)>,
}

impl Tiers {
    pub fn new(settings: &RateLimitSettings) -> Result<Tiers, TierError> {
        Tiers::build(settings.rate, settings.burst, &settings.tiers)
    }

    pub fn build(rate: f64, burst: u32, tiers: &[Tier]) -> Result<Tiers, TierError> {
        let default = Arc::new(TierPolicy::new(DEFAULT_TIER, rate, burst));
        let mut exact = HashMap::new();
        let mut prefixes = Vec::new();
        for t in tiers {
            let policy = Arc::new(TierPolicy::new(&t.name, t.rate, t.burst));
            for id in &t.key_ids {
                let id = id.to_ascii_lowercase();
                if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(TierError::BadKeyId(id));
                }
                if id.len() == 32 {
                    let mut bytes = [0u8; 16];
                    hex::decode_to_slice(&id, &mut bytes)
                        .map_err(|_| TierError::BadKeyId(id.clone()))?;
                    // First listing wins, as a reader of the config would expect.
                    exact.entry(KeyId(bytes)).or_insert_with(|| policy.clone());
                } else {
                    prefixes.push((id, policy.clone()));
                }
            }
        }
        // Stable: among equal lengths the first listing wins.
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(Tiers {
            default,
            exact,
            prefixes,
        })
    }

    pub fn default_tier(&self) -> &Arc<TierPolicy> {
        &self.default
    }

    /// The tier for a subject (IP subjects: always the default tier).
    #[inline]
    pub fn select(&self, subject: &Subject) -> &Arc<TierPolicy> {
        match subject {
            Subject::Ip(_) => &self.default,
            Subject::Key(k) => self.for_key(k),
        }
    }

    #[inline]
    pub fn for_key(&self, key: &KeyId) -> &Arc<TierPolicy> {
        if let Some(t) = self.exact.get(key) {
            return t;
        }
        if self.prefixes.is_empty() {
            return &self.default;
        }
        let hex = key.to_string();
        self.prefixes
            .iter()
            .find(|(p, _)| hex.starts_with(p.as_str()))
            .map_or(&self.default, |(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn tier(name: &str, rate: f64, burst: u32, ids: &[&str]) -> Tier {
        Tier {
            name: name.into(),
            rate,
            burst,
            key_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn key(hex: &str) -> KeyId {
        let mut b = [0u8; 16];
        hex::decode_to_slice(hex, &mut b).unwrap();
        KeyId(b)
    }

    const A: &str = "3f2a9c0d1e7b4a6500112233445566aa";
    const B: &str = "3f2a9c0d1e7b4a6500112233445566bb";
    const C: &str = "ffffffff000000000000000000000000";

    #[test]
    fn selects_by_key_id() {
        let tiers = Tiers::build(
            50.0,
            100,
            &[
                tier("gold", 500.0, 1000, &[A]),
                tier("silver", 100.0, 200, &["3F2A9C0D"]),
                tier("bronze", 10.0, 20, &["3f2a9c0d1e7b4a65"]),
            ],
        )
        .unwrap();
        assert_eq!(&*tiers.for_key(&key(A)).name, "gold");
        assert_eq!(tiers.for_key(&key(A)).quota.burst, 1000);
        // Longest prefix wins over shorter ones.
        assert_eq!(&*tiers.for_key(&key(B)).name, "bronze");
        assert_eq!(&*tiers.for_key(&key(C)).name, DEFAULT_TIER);
        assert_eq!(tiers.for_key(&key(C)).quota, Quota::nanos(50.0, 100));
        let ip = Subject::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(&*tiers.select(&ip).name, DEFAULT_TIER);
        assert_eq!(&*tiers.select(&Subject::Key(key(A))).name, "gold");
    }

    #[test]
    fn first_listing_wins_and_bad_ids_are_refused() {
        let tiers = Tiers::build(
            1.0,
            1,
            &[tier("one", 1.0, 1, &[A]), tier("two", 1.0, 1, &[A])],
        )
        .unwrap();
        assert_eq!(&*tiers.for_key(&key(A)).name, "one");
        assert!(Tiers::build(1.0, 1, &[tier("x", 1.0, 1, &["nothex!"])]).is_err());
        assert!(Tiers::build(1.0, 1, &[tier("x", 1.0, 1, &[&format!("{A}00")])]).is_err());
    }
}
