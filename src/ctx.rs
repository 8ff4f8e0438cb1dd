//! What one request carries from hook to hook. It sits below every room of the request path:
//! the gateway fills it in order, the access log reads it at the end, and each room gets only
//! its own part (the cache its [`CacheCtx`], the rate limiter nothing at all), so no room
//! depends on the gateway that strings them together.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::{CacheCtx, CacheStatus};
use crate::compression::{Accepted, Encoding, SyncTransform};
use crate::edge::{Admitted, Principal};
use crate::errors::GatewayError;
use crate::live::LiveSettings;
use crate::metrics::UpstreamErrorKind;
use crate::ratelimit::Decision;
use crate::routes::OTHER_ROUTE;

/// Largest write request body kept for invalidation rules that read it (e.g. a transfer's
/// `targetLibraryId`); larger bodies are still proxied, just not inspected.
pub const MAX_INSPECTED_BODY: usize = 64 * 1024;

/// Counts requests in flight so a SIGTERM can exit as soon as the last one is done.
#[derive(Clone, Default)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    idle: Arc<tokio::sync::Notify>,
}

impl InFlight {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn enter(&self) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    /// Resolves once no request is in flight (at once if none is).
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A write's request body as far as invalidation rules may read it.
#[derive(Debug, Default)]
pub enum WriteBody {
    /// Nothing read yet (or no body).
    #[default]
    Empty,
    /// The whole body so far, within [`MAX_INSPECTED_BODY`].
    Inspected(Vec<u8>),
    /// Past the bound: not inspected at all, so rules fall back to path-only scopes. Once over,
    /// it stays over; a suffix of a body is never read as if it were the body.
    TooLarge,
}

impl WriteBody {
    pub fn push(&mut self, chunk: &[u8]) {
        match self {
            Self::TooLarge => {}
            Self::Empty if chunk.len() <= MAX_INSPECTED_BODY => {
                *self = Self::Inspected(chunk.to_vec())
            }
            Self::Inspected(buf) if buf.len() + chunk.len() <= MAX_INSPECTED_BODY => {
                buf.extend_from_slice(chunk)
            }
            _ => *self = Self::TooLarge,
        }
    }

    /// The body, when it was read whole.
    pub fn inspected(&self) -> Option<&[u8]> {
        match self {
            Self::Inspected(b) => Some(b),
            Self::Empty => Some(&[]),
            Self::TooLarge => None,
        }
    }
}

/// Everything one request carries from hook to hook, in the order it is filled.
pub struct RequestCtx {
    pub start: Instant,
    /// A background refresh spawned by pingora-cache (stale-while-revalidate): it passes the
    /// edge and rate limit untouched, since the client request that caused it already did.
    pub subrequest: bool,
    /// Route name for metrics and logs (bounded set).
    pub route: &'static str,
    /// Index of the matching `[[cache.routes]]` rule, looked up once per request.
    pub route_index: Option<usize>,
    /// Set once the edge checks passed.
    pub admitted: Option<Admitted>,
    /// The rate-limit decision, when this request was counted.
    pub rate: Option<Decision>,
    pub cache: CacheCtx,
    /// What `X-Cache` said, once a response went out.
    pub cache_status: CacheStatus,
    pub upstream_start: Option<Instant>,
    pub upstream_time: Option<Duration>,
    pub upstream_status: Option<u16>,
    pub retries: usize,
    /// The error the gateway answered with, if any.
    pub error: Option<GatewayError>,
    pub upstream_error: Option<UpstreamErrorKind>,
    pub request_body_bytes: u64,
    /// A write's request body for invalidation rules.
    pub write_body: WriteBody,
    /// The live configuration this request runs on, read once when it starts: a reload swaps
    /// in the next one for later requests only.
    pub live: Arc<LiveSettings>,
    /// A `POST` to Raster's GraphQL endpoint (`[graphql]`).
    pub graphql: bool,
    /// The client's `Accept-Encoding`, normalised.
    pub accepted: Accepted,
    /// Compresses the origin's body before the store and the client see it.
    pub upstream_transform: Option<SyncTransform>,
    /// Decodes (or transcodes) the body for a client that does not accept its coding.
    pub client_transform: Option<SyncTransform>,
    /// A `/me` answer's body being read for its organization, with its coding.
    pub me_body: Option<(Encoding, Vec<u8>)>,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    pub fn new(in_flight: &InFlight, live: Arc<LiveSettings>) -> Self {
        Self {
            start: Instant::now(),
            subrequest: false,
            route: OTHER_ROUTE,
            route_index: None,
            admitted: None,
            rate: None,
            cache: CacheCtx::default(),
            cache_status: CacheStatus::default(),
            upstream_start: None,
            upstream_time: None,
            upstream_status: None,
            retries: 0,
            error: None,
            upstream_error: None,
            request_body_bytes: 0,
            write_body: WriteBody::Empty,
            live,
            graphql: false,
            accepted: Accepted::IDENTITY_ONLY,
            upstream_transform: None,
            client_transform: None,
            me_body: None,
            _in_flight: in_flight.enter(),
        }
    }

    pub fn principal(&self) -> Option<Principal> {
        self.admitted.map(|a| a.principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_body_over_the_bound_stays_uninspected() {
        let mut b = WriteBody::default();
        b.push(&[b'a'; 1000]);
        assert_eq!(b.inspected().map(<[u8]>::len), Some(1000));
        b.push(&vec![b'b'; MAX_INSPECTED_BODY]);
        assert_eq!(b.inspected(), None);
        // A small chunk after the overflow must not start a new "whole body".
        b.push(br#"{"targetLibraryId":"lisbon"}"#);
        assert_eq!(b.inspected(), None);
    }

    #[test]
    fn a_body_within_the_bound_is_read_whole() {
        let mut b = WriteBody::default();
        b.push(br#"{"targetLibraryId":"#);
        b.push(br#""lisbon"}"#);
        assert_eq!(b.inspected(), Some(&br#"{"targetLibraryId":"lisbon"}"#[..]));
    }

    #[tokio::test]
    async fn idle_resolves_when_the_last_request_ends() {
        let f = InFlight::default();
        f.idle().await;
        let g = f.enter();
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(g);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("idle after the last guard")
            .expect("task");
    }
}
