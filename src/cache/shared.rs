//! The shared tier (`[cache.shared]`): a second cache level in Redis that every instance of a
//! fleet reads and fills, and the lease that makes a cold key cost the fleet one origin fetch.
//!
//! **Where it sits.** Behind the moka store ([`super::storage`]): `Storage::lookup` asks Redis
//! after a local miss, and a value found there is copied into the local store and served as a
//! local hit would be (same freshness, stale windows, `Age`, variance rule). A miss handler
//! that stores a response locally also writes it to Redis (in the background, after the local
//! insert), and so does a revalidation. pingora-cache's state machine is not changed: it sees
//! one storage.
//!
//! **Keys.** `<prefix>:obj:{<combined key hash, 32 hex>}`. The hash is pingora's combined key
//! of the local store, which already carries the partition (key id), the `Api-Version`, the
//! `Vary` variance and the scope / tree / URL generations; generations are fleet numbers
//! ([`super::fleet`]), so every instance computes the same key and an invalidation moves the
//! whole fleet to new keys at once. Isolation and invalidation hold exactly as locally.
//!
//! **Values.** One string: `RES1`, three lengths (u32, big endian), pingora's serialized meta
//! (internal part, header), the body, then 16 bytes of SHA-256 over the key hash and everything
//! before. A value that fails the framing or the checksum (corrupt, truncated, written by
//! something else, or copied under another key) is a miss, never served. The Redis expiry is
//! the local one: freshness + stale windows (+ revalidation grace for entries with a
//! validator). Values over `cache.shared.max_object_size` are not written.
//!
//! **Coalescing** (`cache.shared.coalesce`). After a miss in both tiers, an instance takes the
//! key's lease, `<prefix>:lease:{<hash>}` (`SET NX PX`, for the longest an origin fetch may
//! take); the holder fetches, stores and deletes the lease in one script. Others that find the
//! lease taken poll the shared tier (every [`POLL`]) for at most `cache.lock_timeout`, and fetch
//! themselves when the lease disappears without a value (the holder died, or the response was
//! not storable) or the wait runs out. Within one instance, pingora's own cache lock still
//! coalesces, so only one request per instance waits on Redis.
//!
//! **Failure.** Every call is bounded by `redis.timeout` ([`crate::redis_link`]); Redis down
//! means local-only caching, never an error to the client.

use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;
use sha2::{Digest, Sha256};

use super::entry::Entry;
use crate::config::{RedisSettings, SharedSettings};
use crate::metrics::{LeaseResult, RedisOp, SharedDirection, SharedLookup, SharedStore, FLEET};
use crate::redis_link::{LinkError, RedisLink};

const MAGIC: &[u8; 4] = b"RES1";
const HEADER_LEN: usize = 4 + 3 * 4;
const SUM_LEN: usize = 16;
/// Pause between two looks at a key whose lease another instance holds.
pub const POLL: Duration = Duration::from_millis(20);

/// Stores the value and releases the lease if this instance holds it.
/// KEYS: value, lease. ARGV: value, expiry (ms), lease token.
const STORE_LUA: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"#;

/// Releases the lease if this instance holds it. KEYS: lease. ARGV: token.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

pub struct SharedTier {
    link: RedisLink,
    prefix: String,
    max_object_size: usize,
    coalesce: bool,
    /// How long a lease lives: the longest an origin fetch may take.
    lease: Duration,
    /// How long others wait for the lease holder's response.
    wait: Duration,
    /// This instance's lease token.
    token: String,
    /// Leases this instance holds: its own other requests for the key wait on pingora's lock.
    held: moka::sync::Cache<HashBinary, ()>,
    store_script: redis::Script,
    release_script: redis::Script,
}

/// What decoding a value gave.
#[derive(Debug)]
pub enum Decoded {
    Entry(CacheMeta, Bytes),
    Corrupt,
}

impl SharedTier {
    pub fn new(
        settings: &SharedSettings,
        redis: &RedisSettings,
        lease: Duration,
        wait: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            link: RedisLink::new(redis, RedisOp::Shared)?,
            prefix: redis.key_prefix.clone(),
            max_object_size: settings.max_object_size,
            coalesce: settings.coalesce,
            lease,
            wait,
            token: format!("{:016x}", rand::random::<u64>()),
            held: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(lease)
                .build(),
            store_script: redis::Script::new(STORE_LUA),
            release_script: redis::Script::new(RELEASE_LUA),
        })
    }

    pub fn value_key(&self, bin: &HashBinary) -> String {
        format!("{}:obj:{{{}}}", self.prefix, hex::encode(bin))
    }

    pub fn lease_key(&self, bin: &HashBinary) -> String {
        format!("{}:lease:{{{}}}", self.prefix, hex::encode(bin))
    }

    /// Looks `bin` up after a local miss. `primary`: the first lookup of a request (no
    /// variance yet), the one that may take or wait for the key's lease.
    pub async fn lookup(
        &'static self,
        bin: &HashBinary,
        primary: bool,
    ) -> Option<(CacheMeta, Bytes)> {
        let key = self.value_key(bin);
        let lease_key = self.lease_key(bin);
        let coalesce = primary && self.coalesce && !self.held.contains_key(bin);
        if !coalesce {
            return self.count(self.get(&key, bin).await);
        }
        // One round trip: the value, or the lease for this instance.
        let token = self.token.clone();
        let ms = self.lease.as_millis() as u64;
        let first: Result<(Option<Vec<u8>>, Option<String>), LinkError> = self
            .link
            .call(|mut c| {
                let (key, lease_key) = (key.clone(), lease_key.clone());
                async move {
                    redis::pipe()
                        .get(&key)
                        .cmd("SET")
                        .arg(&lease_key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms)
                        .query_async(&mut c)
                        .await
                }
            })
            .await;
        let (value, leased) = match first {
            Ok(v) => v,
            Err(e) => return self.count(Err(e)),
        };
        if value.is_some() {
            if leased.is_some() {
                // Raced with a store: the value is here, give the lease back.
                self.release(bin);
            }
            return self.count(Ok(value.map(|v| decode(bin, &v))));
        }
        if leased.is_some() {
            self.held.insert(*bin, ());
            FLEET
                .shared_lookups
                .with_label_values(&[SharedLookup::Miss.as_str()])
                .inc();
            FLEET
                .shared_leases
                .with_label_values(&[LeaseResult::Acquired.as_str()])
                .inc();
            return None;
        }
        // Another instance fetches: wait for its response.
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            if tokio::time::Instant::now() + POLL > deadline {
                self.lease_result(LeaseResult::TimedOut);
                return self.count(Ok(None));
            }
            tokio::time::sleep(POLL).await;
            let polled: Result<(Option<Vec<u8>>, bool), LinkError> = self
                .link
                .call(|mut c| {
                    let (key, lease_key) = (key.clone(), lease_key.clone());
                    async move {
                        redis::pipe()
                            .get(&key)
                            .exists(&lease_key)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await;
            match polled {
                Ok((Some(v), _)) => {
                    self.lease_result(LeaseResult::Filled);
                    return self.count(Ok(Some(decode(bin, &v))));
                }
                Ok((None, true)) => continue,
                Ok((None, false)) => {
                    self.lease_result(LeaseResult::Released);
                    return self.count(Ok(None));
                }
                Err(e) => return self.count(Err(e)),
            }
        }
    }

    fn lease_result(&self, r: LeaseResult) {
        FLEET.shared_leases.with_label_values(&[r.as_str()]).inc();
    }

    async fn get(&self, key: &str, bin: &HashBinary) -> Result<Option<Decoded>, LinkError> {
        let key = key.to_string();
        let v: Option<Vec<u8>> = self
            .link
            .call(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(v.map(|v| decode(bin, &v)))
    }

    /// Counts a lookup's result and turns it into what the store serves.
    fn count(&self, r: Result<Option<Decoded>, LinkError>) -> Option<(CacheMeta, Bytes)> {
        let (result, out) = match r {
            Ok(Some(Decoded::Entry(meta, body))) => (SharedLookup::Hit, Some((meta, body))),
            Ok(Some(Decoded::Corrupt)) => (SharedLookup::Corrupt, None),
            Ok(None) => (SharedLookup::Miss, None),
            Err(LinkError::Backoff) => (SharedLookup::Skipped, None),
            Err(_) => (SharedLookup::Error, None),
        };
        FLEET
            .shared_lookups
            .with_label_values(&[result.as_str()])
            .inc();
        out
    }

    /// Writes `entry` under `bin` in the background, releasing `lease` (the request's primary
    /// key hash) if this instance holds it.
    pub fn store(&'static self, bin: HashBinary, lease: HashBinary, entry: &Entry) {
        let ttl = entry
            .keep_until()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if ttl < Duration::from_millis(1) {
            self.release(&lease);
            return;
        }
        let Some(value) = encode(&bin, entry, self.max_object_size) else {
            FLEET
                .shared_stores
                .with_label_values(&[SharedStore::TooLarge.as_str()])
                .inc();
            self.release(&lease);
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.held.invalidate(&lease);
        let key = self.value_key(&bin);
        let lease_key = self.lease_key(&lease);
        let len = value.len() as u64;
        let ms = (ttl.as_millis() as u64).max(1);
        handle.spawn(async move {
            let r: Result<i64, LinkError> = self
                .link
                .call(|mut c| async move {
                    self.store_script
                        .key(&key)
                        .key(&lease_key)
                        .arg(value.as_ref())
                        .arg(ms)
                        .arg(&self.token)
                        .invoke_async(&mut c)
                        .await
                })
                .await;
            let result = match r {
                Ok(_) => {
                    FLEET
                        .shared_bytes
                        .with_label_values(&[SharedDirection::Written.as_str()])
                        .inc_by(len);
                    SharedStore::Stored
                }
                Err(LinkError::Backoff) => SharedStore::Skipped,
                Err(_) => SharedStore::Error,
            };
            FLEET
                .shared_stores
                .with_label_values(&[result.as_str()])
                .inc();
        });
    }

    /// Gives the key's lease back (the response will not be stored), in the background.
    pub fn release(&'static self, bin: &HashBinary) {
        if !self.coalesce || self.held.remove(bin).is_none() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lease_key = self.lease_key(bin);
        handle.spawn(async move {
            let _: Result<i64, LinkError> = self
                .link
                .call(|mut c| async move {
                    self.release_script
                        .key(&lease_key)
                        .arg(&self.token)
                        .invoke_async(&mut c)
                        .await
                })
                .await;
        });
    }
}

fn checksum(bin: &HashBinary, framed: &[u8]) -> [u8; SUM_LEN] {
    let mut h = Sha256::new();
    h.update(bin);
    h.update(framed);
    let d = h.finalize();
    let mut out = [0u8; SUM_LEN];
    out.copy_from_slice(&d[..SUM_LEN]);
    out
}

/// The value stored under `bin`, or `None` when it would exceed `max` bytes.
pub fn encode(bin: &HashBinary, entry: &Entry, max: usize) -> Option<Bytes> {
    let (internal, header) = entry.to_meta().serialize().ok()?;
    let total = HEADER_LEN + internal.len() + header.len() + entry.body.len() + SUM_LEN;
    if total > max {
        return None;
    }
    let mut out = BytesMut::with_capacity(total);
    out.put_slice(MAGIC);
    out.put_u32(u32::try_from(internal.len()).ok()?);
    out.put_u32(u32::try_from(header.len()).ok()?);
    out.put_u32(u32::try_from(entry.body.len()).ok()?);
    out.put_slice(&internal);
    out.put_slice(&header);
    out.put_slice(&entry.body);
    let sum = checksum(bin, &out);
    out.put_slice(&sum);
    Some(out.freeze())
}

/// Decodes a value read under `bin`; anything but an intact value of this key is corrupt.
pub fn decode(bin: &HashBinary, v: &[u8]) -> Decoded {
    let Some(d) = try_decode(bin, v) else {
        return Decoded::Corrupt;
    };
    FLEET
        .shared_bytes
        .with_label_values(&[SharedDirection::Read.as_str()])
        .inc_by(v.len() as u64);
    d
}

fn try_decode(bin: &HashBinary, v: &[u8]) -> Option<Decoded> {
    if v.len() < HEADER_LEN + SUM_LEN || &v[..4] != MAGIC {
        return None;
    }
    let (framed, sum) = v.split_at(v.len() - SUM_LEN);
    if checksum(bin, framed) != sum {
        return None;
    }
    let len = |at: usize| -> Option<usize> {
        let b: [u8; 4] = framed.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(b)).ok()
    };
    let (il, hl, bl) = (len(4)?, len(8)?, len(12)?);
    if HEADER_LEN + il + hl + bl != framed.len() {
        return None;
    }
    let internal = &framed[HEADER_LEN..HEADER_LEN + il];
    let header = &framed[HEADER_LEN + il..HEADER_LEN + il + hl];
    let body = &framed[HEADER_LEN + il + hl..];
    let meta = CacheMeta::deserialize(internal, header).ok()?;
    Some(Decoded::Entry(meta, Bytes::copy_from_slice(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut h = pingora::http::ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-length", "5").unwrap();
        h.insert_header("etag", "\"e\"").unwrap();
        let now = SystemTime::now();
        let mut meta = CacheMeta::new(now + Duration::from_secs(60), now, 10, 20, h);
        meta.set_variance([7u8; 16]);
        Entry::new(&meta, Bytes::from_static(b"hello")).unwrap()
    }

    #[test]
    fn a_value_round_trips_under_its_own_key_only() {
        let bin = [1u8; 16];
        let e = entry();
        let v = encode(&bin, &e, 1 << 20).unwrap();
        match decode(&bin, &v) {
            Decoded::Entry(meta, body) => {
                assert_eq!(&body[..], b"hello");
                assert_eq!(meta.variance(), Some([7u8; 16]));
                assert_eq!(meta.stale_while_revalidate_sec(), 10);
                assert_eq!(meta.stale_if_error_sec(), 20);
                assert_eq!(meta.response_header().headers.get("etag").unwrap(), "\"e\"");
            }
            Decoded::Corrupt => panic!("intact value refused"),
        }
        // Another key's value (copied, or a hash of the wrong key) is never served.
        assert!(matches!(decode(&[2u8; 16], &v), Decoded::Corrupt));
    }

    #[test]
    fn any_flipped_or_missing_byte_is_a_miss() {
        let bin = [1u8; 16];
        let v = encode(&bin, &entry(), 1 << 20).unwrap();
        for i in 0..v.len() {
            let mut bad = v.to_vec();
            bad[i] ^= 0x40;
            assert!(matches!(decode(&bin, &bad), Decoded::Corrupt), "byte {i}");
        }
        for cut in 0..v.len() {
            assert!(matches!(decode(&bin, &v[..cut]), Decoded::Corrupt));
        }
        assert!(matches!(decode(&bin, b"not ours"), Decoded::Corrupt));
    }

    #[test]
    fn values_over_the_bound_are_not_written() {
        let bin = [1u8; 16];
        let v = encode(&bin, &entry(), 1 << 20).unwrap();
        assert!(encode(&bin, &entry(), v.len()).is_some());
        assert!(encode(&bin, &entry(), v.len() - 1).is_none());
    }
}
