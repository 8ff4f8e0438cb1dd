//! The hit path below pingora-proxy: a Pingora `ServerApp` in front of the `HttpProxy` that owns
//! the HTTP/1 connection loop of plain-TCP connections. It reads and parses request heads itself
//! ([`parse`]), answers fresh plain `GET`/`HEAD` hits with one write, and hands every other
//! request to the proxy on the same connection with the bytes already read
//! (`ServerSession::set_pipelined_prefix`, then `HttpProxy::process_new_http`), taking the
//! connection back when the proxy returns it. TLS (and so HTTP/2) connections go to the proxy
//! as they are.
//!
//! Why: the proxy costs a new `ServerSession`, boxed digest, two 4 KiB buffers, a
//! case-preserving header map and a dozen boxed hook futures per request, and writes a 1.3 KB
//! hit in two `sendto` calls; a fresh hit needs none of that (docs/BENCHMARKS.md, "Cost per
//! hit"). What a hit gets is not changed: the same [`crate::edge`] checks and
//! [`crate::edge::sanitize`] bounds, the same rate limiter (one quota), the same response
//! builder ([`crate::response::fresh_hit`]), the same metrics, stats and access log
//! ([`crate::access_log::record_request`]). Only the serialisation is our own ([`wire`]): it
//! keeps the origin's `Date` (RFC 9111 §4.2.3), where Pingora's writer stamps its own.
//!
//! The loop also bounds how long a request head may take (`server.header_timeout`: 408 and
//! close, the slowloris bound Pingora does not have) and answers pipelined requests in order.
//!
//! Hand-written because no crate does this: the loop is the glue between `httparse` and
//! Pingora's session API.

pub mod parse;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::http::RequestHeader;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::access_log;
use crate::config::Count;
use crate::ctx::RequestCtx;
use crate::edge::KeyIdMemo;
use crate::errors::{self, GatewayError};
use crate::gateway::{rate_subject, Gateway, Shared};
use crate::metrics::METRICS;
use crate::response;
use parse::Head;

/// How long an idle keep-alive connection waits for its next request (Pingora's default).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// How long a refused connection is read (and the bytes dropped) before it is closed.
const LINGER: Duration = Duration::from_secs(1);
/// Read buffer growth step.
const READ_CHUNK: usize = 4096;

/// The proxy service: [`HitPath`] in front of pingora-proxy's `HttpProxy` for `gateway`. Add
/// listeners to it as to any Pingora service ([`tcp_listener`] for plain TCP).
pub fn service(
    conf: &Arc<pingora::server::configuration::ServerConf>,
    gateway: Gateway,
    name: &str,
) -> Service<HitPath> {
    let shared = gateway.shared();
    let proxy = pingora::proxy::http_proxy(conf, gateway);
    Service::new(name.to_string(), HitPath::new(proxy, shared))
}

/// A plain-TCP listener whose per-connection write buffer holds a whole response head: with
/// Pingora's default (1,460 bytes) a header that does not fit with its body is flushed on its
/// own, two `sendto` calls for one proxied response.
pub fn tcp_listener(addr: &str) -> ListenerConfig {
    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings {
        read: None,
        write: Some(WRITE_BUFFER),
    })
}

/// Per-connection write buffer of the proxy listener (see [`tcp_listener`]).
const WRITE_BUFFER: usize = 16 * 1024;

/// The `ServerApp` of the proxy listener: the hit path in front of the [`HttpProxy`].
pub struct HitPath {
    proxy: Arc<HttpProxy<Gateway>>,
    shared: Shared,
}

impl HitPath {
    pub fn new(proxy: HttpProxy<Gateway>, shared: Shared) -> Self {
        Self {
            proxy: Arc::new(proxy),
            shared,
        }
    }
}

/// What became of a parsed plain request.
enum Served {
    /// Answered here; the connection goes on.
    KeepAlive,
    /// Answered here (or the write failed); the connection ends.
    Close,
    /// Not a fresh hit: the proxy takes it.
    NotHit,
}

/// Why the head-reading step stopped without a head.
enum Ended {
    /// The client closed, an idle connection timed out, or the server is shutting down.
    Quietly,
    /// A head was started but not finished in time.
    HeadTimeout,
}

#[async_trait]
impl ServerApp for HitPath {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let plain_tcp = stream.get_ssl_digest().is_none() && stream.selected_alpn_proto().is_none();
        if !self.shared.settings.server.hit_path || !plain_tcp {
            return self.proxy.process_new(stream, shutdown).await;
        }
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

impl HitPath {
    /// The connection loop: one head at a time, in order.
    async fn serve(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let limits = &self.shared.settings.server;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut watch = shutdown.clone();
        let mut memo = KeyIdMemo::default();
        // The first head's deadline counts from the accept; later ones from their first byte.
        let mut deadline = Some(Instant::now() + limits.header_timeout);
        loop {
            let head = loop {
                if !buf.is_empty() {
                    match parse::parse(&buf, limits) {
                        Head::Partial => {}
                        head => break head,
                    }
                }
                match self
                    .read_more(&mut stream, &mut buf, &mut deadline, &mut watch)
                    .await
                {
                    Ok(()) => {}
                    Err(Ended::Quietly) => return,
                    Err(Ended::HeadTimeout) => {
                        self.refuse(&mut stream, None, GatewayError::RequestTimeout)
                            .await;
                        return;
                    }
                }
            };
            match head {
                Head::Plain { req, len } => {
                    match self.try_hit(&mut stream, &req, &mut memo, shutdown).await {
                        Served::KeepAlive => {
                            buf.advance(len);
                            deadline = None;
                            continue;
                        }
                        Served::Close => return,
                        Served::NotHit => {}
                    }
                }
                Head::Refuse(err) => {
                    self.refuse(&mut stream, None, err).await;
                    return;
                }
                Head::Partial | Head::Proxy(_) => {}
            }
            match self.handoff(stream, buf.split(), shutdown).await {
                Some(s) => stream = s,
                None => return,
            }
            deadline = None;
        }
    }

    /// Reads more bytes into `buf`. With no head started, waits up to [`KEEPALIVE_IDLE`] (or
    /// until shutdown); once a head has started, until its deadline.
    async fn read_more(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        deadline: &mut Option<Instant>,
        watch: &mut ShutdownWatch,
    ) -> Result<(), Ended> {
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let started = !buf.is_empty();
        let until = match *deadline {
            Some(d) => d,
            None => Instant::now() + KEEPALIVE_IDLE,
        };
        let read = async {
            if started {
                return stream.read_buf(buf).await;
            }
            // Idle: a shutdown closes the connection (as Pingora closes idle keep-alive ones).
            loop {
                if *watch.borrow() {
                    return Ok(0);
                }
                tokio::select! {
                    r = stream.read_buf(buf) => return r,
                    changed = watch.changed() => if changed.is_err() { return Ok(0) },
                }
            }
        };
        match tokio::time::timeout_at(until, read).await {
            Ok(Ok(0)) | Ok(Err(_)) => Err(Ended::Quietly),
            Ok(Ok(_)) => {
                deadline.get_or_insert_with(|| {
                    Instant::now() + self.shared.settings.server.header_timeout
                });
                Ok(())
            }
            Err(_) if started => Err(Ended::HeadTimeout),
            Err(_) => Err(Ended::Quietly),
        }
    }

    /// Answers `req` when it is a fresh hit. Looks first without recording anything, so a
    /// request it does not answer reaches the proxy untouched (counted once, logged once).
    async fn try_hit(
        &self,
        stream: &mut Stream,
        req: &RequestHeader,
        memo: &mut KeyIdMemo,
        shutdown: &ShutdownWatch,
    ) -> Served {
        let s = &self.shared;
        let (route_index, route) = s.routes.lookup(req.uri.path());
        let Ok(admitted) = s.edge.check_memo(req, memo) else {
            return Served::NotHit;
        };
        let cache_ctx = s
            .cache
            .prepare(req, admitted, route_index, s.edge.pinned_api_version());
        let Some(entry) = s.cache.fresh_entry(req, &cache_ctx) else {
            return Served::NotHit;
        };
        if !wire::plain_framing(&entry.header, entry.body.len()) {
            return Served::NotHit;
        }

        // Committed: this loop answers the request, whatever happens next.
        let mut ctx = RequestCtx::new(&s.in_flight);
        ctx.route = route;
        ctx.route_index = route_index;
        ctx.admitted = Some(admitted);
        ctx.cache = cache_ctx;
        if let Some(limiter) = s.limiter.as_ref().filter(|_| s.counts(Count::All)) {
            let client = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().cloned())
                .and_then(|a| a.as_inet().map(|a| a.ip()));
            if let Some(subject) = rate_subject(ctx.principal(), client) {
                let decision = limiter.check(subject).await;
                let allowed = decision.allowed;
                ctx.rate = Some(decision);
                if !allowed {
                    return self
                        .answer_error(stream, Some(req), &mut ctx, GatewayError::RateLimited)
                        .await;
                }
            }
        }
        let built = s
            .cache
            .serve_fresh(req, &entry, route)
            .and_then(|hit| response::fresh_hit(hit, &mut ctx));
        let (mut header, body) = match built {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "hit path: could not build a hit response");
                return self
                    .answer_error(stream, Some(req), &mut ctx, GatewayError::Internal)
                    .await;
            }
        };
        let close = *shutdown.borrow();
        let status = header.status.as_u16();
        let sent = match wire::serialise(&mut header, body.as_deref(), close) {
            Ok(out) => write(stream, &out).await,
            Err(_) => false,
        };
        access_log::record_request(
            Some(req),
            if sent { status } else { 0 },
            None,
            &ctx,
            s.settings.log.access_log,
        );
        if sent && !close {
            Served::KeepAlive
        } else {
            Served::Close
        }
    }

    /// Answers a gateway error for a committed request, as the proxy's `reject` does: the
    /// rejection metric, the envelope decorated with the gateway's headers, the access log.
    async fn answer_error(
        &self,
        stream: &mut Stream,
        req: Option<&RequestHeader>,
        ctx: &mut RequestCtx,
        err: GatewayError,
    ) -> Served {
        ctx.error = Some(err);
        METRICS
            .edge_rejections
            .with_label_values(&[err.code()])
            .inc();
        let close = err.closes_connection();
        let sent = match errors::response(err) {
            Ok((mut header, body)) => {
                let head_only = req.is_some_and(|r| r.method == http::Method::HEAD);
                response::decorate(&mut header, ctx).is_ok()
                    && match wire::serialise(&mut header, (!head_only).then_some(&body[..]), close)
                    {
                        Ok(out) => write(stream, &out).await,
                        Err(_) => false,
                    }
            }
            Err(_) => false,
        };
        access_log::record_request(
            req,
            if sent { err.status() } else { 0 },
            None,
            ctx,
            self.shared.settings.log.access_log,
        );
        if sent && !close {
            Served::KeepAlive
        } else {
            Served::Close
        }
    }

    /// Answers a head that cannot be read (too large before it ended, too slow) and closes,
    /// reading on for a moment first (as nginx's lingering close does): closing a socket with
    /// unread bytes resets it, and the client could lose the answer.
    async fn refuse(&self, stream: &mut Stream, req: Option<&RequestHeader>, err: GatewayError) {
        let mut ctx = RequestCtx::new(&self.shared.in_flight);
        self.answer_error(stream, req, &mut ctx, err).await;
        let _ = AsyncWriteExt::shutdown(stream).await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }

    /// Gives the connection to the proxy for one request (more while the client pipelines
    /// behind it), `read` being every byte read and not yet answered. Returns the connection
    /// when the proxy hands it back reusable.
    async fn handoff(
        &self,
        stream: Stream,
        read: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(KEEPALIVE_IDLE.as_secs())
        });
        if !read.is_empty() {
            session.set_pipelined_prefix(read);
        }
        loop {
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            let (stream, settings) = reused.consume();
            let Some(settings) = settings else {
                return Some(stream);
            };
            if !carries_prefix(&settings) {
                return Some(stream);
            }
            // The client pipelined more behind the proxied request, and the proxy read it:
            // those bytes can only go back to the proxy, which answers them in order; the
            // loop takes over again once a request leaves nothing behind.
            session = ServerSession::new_http1(stream);
            settings.apply_to_session(&mut session);
        }
    }
}

/// Whether the proxy handed the connection back with bytes of a next request it already read.
/// Pingora 0.9 keeps them in `HttpPersistentSettings` with no accessor but its `Debug` output;
/// anything but the exact "none" there counts as carrying them, which only costs speed.
fn carries_prefix(settings: &pingora::apps::HttpPersistentSettings) -> bool {
    !format!("{settings:?}").contains("pipelined_prefix: None")
}

/// Writes one whole response and flushes it: one `write` for a response the size of a hit.
async fn write(stream: &mut Stream, out: &[u8]) -> bool {
    match stream.write_all(out).await {
        Ok(()) => stream.flush().await.is_ok(),
        Err(e) => {
            tracing::debug!(error = %e, "hit path: client went away mid-response");
            false
        }
    }
}
