//! A response being stored, readable while it arrives (pingora-cache's "streaming partial
//! write"): the miss that fetches it and every request for the same key that finds it in the
//! meantime read the same growing body, each at its own pace.
//!
//! This is what lets a fetch outlive its client. pingora-proxy 0.9 serves a miss through the
//! storage's reader when the storage supports partial reads, and then ignores a downstream
//! error "so that upstream can continue to write cache" (`proxy_h1.rs`, the
//! `serve_from_cache.is_miss()` branches); without it, a client that goes away ends the fetch
//! and the waiters on the cache lock start another one. It also releases the cache lock as
//! soon as the header is known, so the waiters stream the body with the first client instead
//! of waiting for all of it.
//!
//! A fill ends in one of three states ([`FillState`]): complete (the body is stored, readers
//! get its end), failed (the upstream broke off or the body did not match its length: readers
//! get an error, never a short body presented as whole), or oversized (over
//! `cache.max_object_size`: nothing will be stored, so no new reader may join, and chunks every
//! current reader has passed are dropped; memory stays bounded by the slowest reader, which is
//! cut off when it falls more than `max_object_size` behind).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

use super::entry::Freshness;
use tokio::sync::watch;

/// How a fill stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillState {
    /// More body may come.
    Writing,
    /// The whole body is in; readers end after the last chunk.
    Complete,
    /// The fill was abandoned or refused: readers that have not reached the end get an error.
    Failed,
}

struct Body {
    /// Index (in chunks from the start of the body) of `chunks[0]`; non-zero only once an
    /// oversized fill dropped chunks every reader had passed.
    base: usize,
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    buffered: usize,
    /// Bytes written so far (including dropped chunks).
    written: usize,
    /// The next chunk index of every reader that joined (`None` once it went away).
    readers: Vec<Option<usize>>,
    state: FillState,
    /// Over the size limit: will not be stored, takes no new readers.
    oversized: bool,
    /// Purged while it was being written: its readers get it whole, the store does not.
    discarded: bool,
}

impl Body {
    /// Drops the chunks every reader has passed (only once no new reader can join).
    fn trim(&mut self) {
        if !self.oversized {
            return;
        }
        let low = self
            .readers
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(self.base + self.chunks.len());
        while self.base < low {
            match self.chunks.pop_front() {
                Some(c) => self.buffered -= c.len(),
                None => break,
            }
            self.base += 1;
        }
    }
}

/// One fill: the response's meta (what the miss handler was given) and its body so far.
pub struct Fill {
    pub id: u64,
    fresh: Freshness,
    header: ResponseHeader,
    body: Mutex<Body>,
    /// Bumped on every change, so waiting readers wake up.
    changed: watch::Sender<u64>,
}

impl Fill {
    pub fn new(id: u64, meta: &CacheMeta, capacity_hint: usize) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            id,
            fresh: Freshness::of(meta),
            header: meta.response_header_copy(),
            body: Mutex::new(Body {
                base: 0,
                chunks: VecDeque::with_capacity(capacity_hint.clamp(1, 64)),
                buffered: 0,
                written: 0,
                readers: Vec::new(),
                state: FillState::Writing,
                oversized: false,
                discarded: false,
            }),
            changed,
        }
    }

    /// The meta a reader of this fill is served with (`CacheMeta` is not `Clone`).
    pub fn meta(&self) -> CacheMeta {
        self.fresh.to_meta(self.header.clone())
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Appends a chunk. `limit` is `cache.max_object_size`: past it the fill turns oversized
    /// (returns `true` the first time, so the store stops offering it to new readers), and an
    /// oversized fill whose slowest reader is more than `limit` behind fails.
    pub fn push(&self, data: Bytes, limit: usize) -> Result<bool> {
        let mut b = self.body.lock();
        b.written += data.len();
        b.buffered += data.len();
        if !data.is_empty() {
            b.chunks.push_back(data);
        }
        let turned = !b.oversized && b.written > limit;
        if turned {
            b.oversized = true;
        }
        b.trim();
        let behind = b.oversized && b.buffered > limit;
        if behind {
            b.state = FillState::Failed;
        }
        drop(b);
        self.notify();
        if behind {
            return Error::e_explain(
                ErrorType::InternalError,
                "a reader of an oversized response fell too far behind",
            );
        }
        Ok(turned)
    }

    /// Sets the final state (a fill is finished once).
    pub fn end(&self, state: FillState) {
        let mut b = self.body.lock();
        if b.state == FillState::Writing {
            b.state = state;
        }
        drop(b);
        self.notify();
    }

    pub fn state(&self) -> FillState {
        self.body.lock().state
    }

    pub fn is_oversized(&self) -> bool {
        self.body.lock().oversized
    }

    /// Marks the fill as not to be stored (a purge came while it was being written).
    pub fn discard(&self) {
        self.body.lock().discarded = true;
    }

    pub fn is_discarded(&self) -> bool {
        self.body.lock().discarded
    }

    /// The whole body in one exact allocation, when every chunk is still held.
    pub fn whole_body(&self) -> Option<Bytes> {
        let b = self.body.lock();
        if b.base != 0 || b.oversized {
            return None;
        }
        Some(match b.chunks.len() {
            0 => Bytes::new(),
            _ => {
                let mut v = Vec::with_capacity(b.buffered);
                b.chunks.iter().for_each(|c| v.extend_from_slice(c));
                Bytes::from(v)
            }
        })
    }

    pub fn written(&self) -> usize {
        self.body.lock().written
    }

    /// A reader from the first byte, or `None` when the fill takes no new readers.
    pub fn reader(self: &Arc<Self>) -> Option<FillReader> {
        let mut b = self.body.lock();
        if b.oversized && b.base != 0 {
            return None;
        }
        let slot = b.readers.len();
        b.readers.push(Some(0));
        drop(b);
        Some(FillReader {
            fill: self.clone(),
            slot,
            next: 0,
            changed: self.changed.subscribe(),
        })
    }
}

/// Reads a fill's body as it grows.
pub struct FillReader {
    fill: Arc<Fill>,
    slot: usize,
    next: usize,
    changed: watch::Receiver<u64>,
}

impl FillReader {
    pub async fn read(&mut self) -> Result<Option<Bytes>> {
        loop {
            // Marked seen before looking, so a change after the look wakes the wait below.
            self.changed.borrow_and_update();
            {
                let mut b = self.fill.body.lock();
                if self.next < b.base {
                    // Cannot happen: chunks are dropped only once every reader passed them.
                    return Error::e_explain(ErrorType::InternalError, "fill chunk dropped");
                }
                if let Some(c) = b.chunks.get(self.next - b.base).cloned() {
                    self.next += 1;
                    b.readers[self.slot] = Some(self.next);
                    b.trim();
                    return Ok(Some(c));
                }
                match b.state {
                    FillState::Complete => return Ok(None),
                    FillState::Failed => {
                        return Error::e_explain(
                            ErrorType::InternalError,
                            "the response being stored was abandoned before its end",
                        )
                    }
                    FillState::Writing => {}
                }
            }
            if self.changed.changed().await.is_err() {
                // The sender lives in the fill, which this reader holds: unreachable.
                return Error::e_explain(ErrorType::InternalError, "fill gone");
            }
        }
    }
}

impl Drop for FillReader {
    fn drop(&mut self) {
        let mut b = self.fill.body.lock();
        b.readers[self.slot] = None;
        b.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    fn fill() -> Arc<Fill> {
        let h = ResponseHeader::build(200, None).unwrap();
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h);
        Arc::new(Fill::new(1, &meta, 4))
    }

    #[tokio::test]
    async fn readers_see_chunks_as_they_arrive_and_the_end() {
        let f = fill();
        let mut early = f.reader().unwrap();
        f.push(Bytes::from_static(b"ab"), 100).unwrap();
        assert_eq!(early.read().await.unwrap().unwrap(), "ab");
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(c) = early.read().await.unwrap() {
                got.extend_from_slice(&c);
            }
            got
        });
        let mut late = f.reader().unwrap();
        f.push(Bytes::from_static(b"cd"), 100).unwrap();
        f.end(FillState::Complete);
        assert_eq!(waiting.await.unwrap(), b"cd");
        assert_eq!(late.read().await.unwrap().unwrap(), "ab");
        assert_eq!(late.read().await.unwrap().unwrap(), "cd");
        assert!(late.read().await.unwrap().is_none());
        assert_eq!(f.whole_body().unwrap(), "abcd");
    }

    #[tokio::test]
    async fn an_abandoned_fill_is_an_error_not_an_end() {
        let f = fill();
        let mut r = f.reader().unwrap();
        f.push(Bytes::from_static(b"ab"), 100).unwrap();
        f.end(FillState::Failed);
        assert_eq!(r.read().await.unwrap().unwrap(), "ab");
        assert!(r.read().await.is_err());
    }

    #[tokio::test]
    async fn an_oversized_fill_drops_what_was_read_and_cuts_off_a_slow_reader() {
        let f = fill();
        let mut r = f.reader().unwrap();
        assert!(!f.push(Bytes::from(vec![0u8; 6]), 10).unwrap());
        r.read().await.unwrap().unwrap();
        assert!(
            f.push(Bytes::from(vec![0u8; 6]), 10).unwrap(),
            "turns oversized"
        );
        assert!(f.whole_body().is_none());
        // The first chunk, read by every reader, is gone: no new reader can start.
        assert!(f.reader().is_none());
        // r is 10 bytes behind (the limit): one more byte and it is cut off.
        assert!(!f.push(Bytes::from(vec![0u8; 4]), 10).unwrap());
        assert!(f.push(Bytes::from(vec![0u8; 1]), 10).is_err());
        assert_eq!(f.state(), FillState::Failed);
        assert_eq!(r.read().await.unwrap().unwrap().len(), 6);
        r.read().await.unwrap().unwrap();
        r.read().await.unwrap().unwrap();
        assert!(r.read().await.is_err());
    }
}
