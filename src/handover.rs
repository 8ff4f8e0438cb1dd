//! The old process's side of a binary upgrade (SIGQUIT, then the new process started with
//! `--upgrade` takes the listening sockets).
//!
//! Pingora hands the sockets over, keeps accepting for 5 seconds (both processes accept on the
//! same sockets meanwhile), then stops accepting and drops every connection that is waiting
//! for a request. A client that writes a request onto such a connection at that moment meets
//! a reset: the close race of HTTP/1.1 keep-alive. Two things here take the race away for
//! clients that keep sending:
//! 1. from SIGQUIT on, every response says `Connection: close` ([`handing_over`], read by
//!    [`crate::response::close_when_draining`]), so each keep-alive client moves to a fresh
//!    connection after its next answer, and new connections soon all land in the new process;
//! 2. once the old process stops accepting, it waits [`SETTLE`] before Pingora drops waiting
//!    connections ([`Handover::cleanup`]): a connection accepted just before the accept loop
//!    ended has its request read and answered (with `Connection: close`) instead of dropped.
//!
//! What is left is a client that holds a keep-alive connection idle through the whole
//! hand-over and writes onto it in the instant it is closed: the documented close race, which
//! clients resolve by retrying a request nobody read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

static HANDING_OVER: AtomicBool = AtomicBool::new(false);

/// How long the old process keeps reading requests on connections it already accepted, after
/// it stopped accepting new ones.
pub const SETTLE: Duration = Duration::from_millis(500);

/// Marks the hand-over begun (on SIGQUIT).
pub fn start() {
    HANDING_OVER.store(true, Ordering::Relaxed);
}

/// Whether this process is handing its listeners to a new one.
pub fn handing_over() -> bool {
    HANDING_OVER.load(Ordering::Relaxed)
}

/// Wraps the proxy's `ServerApp` to delay its cleanup (the drop of connections waiting for a
/// request) by [`SETTLE`] during a hand-over. Everything else passes through.
pub struct Handover<A> {
    inner: Arc<A>,
}

impl<A> Handover<A> {
    pub fn new(inner: A) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Handover<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        if handing_over() {
            tokio::time::sleep(SETTLE).await;
        }
        self.inner.cleanup().await
    }
}
