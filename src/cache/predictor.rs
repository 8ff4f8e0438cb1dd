//! Which keys skip the cache lock: pingora's `CacheablePredictor`, on a moka set with a TTL
//! (the stock implementation is an LRU without expiry, so a key refused once stayed refused).

use std::time::Duration;

use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::predictor::CacheablePredictor;
use pingora::cache::{CacheKey, NoCacheReason};

use super::phase::NoStoreReason;

/// Keys whose last response was uncacheable, remembered for `cache.uncacheable_ttl`, so
/// requests for them skip the lookup and the cache lock instead of queueing behind a fetch
/// that will not be stored.
pub struct UncacheableKeys {
    keys: moka::sync::Cache<HashBinary, ()>,
}

impl UncacheableKeys {
    pub fn new(ttl: Duration) -> Self {
        Self {
            keys: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
        }
    }
}

impl CacheablePredictor for UncacheableKeys {
    fn cacheable_prediction(&self, key: &CacheKey) -> bool {
        !self.keys.contains_key(&key.primary_bin())
    }

    fn mark_cacheable(&self, key: &CacheKey) -> bool {
        self.keys.remove(&key.primary_bin()).is_some()
    }

    fn mark_uncacheable(&self, key: &CacheKey, reason: NoCacheReason) -> Option<bool> {
        use NoCacheReason::*;
        match reason {
            // Transient or about this one request: the next one may well be cacheable.
            InternalError
            | StorageError
            | UpstreamError
            | Deferred
            | DeclinedToUpstream
            | CacheLockGiveUp
            | CacheLockTimeout
            | CacheLockRetryLimit
            | NeverEnabled
            | PredictedResponseTooLarge => None,
            // Only our own policy's refusals say something about the next response; a custom
            // reason of pingora-proxy's (a 304 to a request that had nothing to revalidate)
            // does not.
            Custom(r)
                if !NoStoreReason::from_custom(r).is_some_and(NoStoreReason::predicts_next) =>
            {
                None
            }
            _ => {
                let k = key.primary_bin();
                let new = !self.keys.contains_key(&k);
                self.keys.insert(k, ());
                Some(new)
            }
        }
    }
}
