//! The request path, in order. [`Gateway`] is the Pingora `ProxyHttp` implementation; each hook
//! does one step and delegates the substance: [`crate::edge`] (reserved paths, credentials,
//! version, key id) → [`crate::ratelimit`] (per-key GCRA) → [`crate::cache`] (fast path for
//! fresh hits, then pingora-cache's state machine) → [`crate::upstream`] (peer, `Host`, hop-by-hop)
//! → response headers and write invalidation → [`crate::access_log`] (one line and the metrics).
//! Errors the gateway answers itself use Raster's envelope ([`crate::errors`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::access_log;
use crate::cache::{Cache, CacheCtx};
use crate::config::{Count, Settings};
use crate::edge::{Admitted, Edge, Principal};
use crate::errors::{self, GatewayError};
use crate::metrics::METRICS;
use crate::ratelimit::{Decision, RateLimiter, Subject};
use crate::routes::{RouteNames, OTHER_ROUTE};
use crate::upstream::{self, Upstream};

/// Largest write request body kept for invalidation rules that read it (e.g. a transfer's
/// `targetLibraryId`); larger bodies are still proxied, just not inspected.
const MAX_INSPECTED_BODY: usize = 64 * 1024;

/// Counts requests in flight so a SIGTERM can exit as soon as the last one is done.
#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.0.clone())
    }
}

pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything one request carries from hook to hook.
pub struct RequestCtx {
    pub start: Instant,
    /// Set once the edge checks passed.
    pub admitted: Option<Admitted>,
    /// Route name for metrics and logs (bounded set).
    pub route: &'static str,
    /// Index of the matching `[[cache.routes]]` rule, looked up once per request.
    pub route_index: Option<usize>,
    /// The rate-limit decision, when this request was counted.
    pub rate: Option<Decision>,
    pub cache: CacheCtx,
    /// A background refresh spawned by pingora-cache (stale-while-revalidate): it passes the
    /// edge and rate limit untouched, since the client request that caused it already did.
    pub subrequest: bool,
    pub upstream_start: Option<Instant>,
    pub upstream_time: Option<Duration>,
    pub upstream_status: Option<u16>,
    pub retries: usize,
    /// The error the gateway answered with, if any.
    pub error: Option<GatewayError>,
    pub upstream_error: Option<&'static str>,
    pub request_body_bytes: u64,
    /// A write's request body (up to [`MAX_INSPECTED_BODY`]) for invalidation rules.
    pub write_body: Option<Vec<u8>>,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    /// Headers every response to this request carries besides the origin's: the rate-limit
    /// headers. Responses written outside `response_filter` (fast-path hits, gateway errors)
    /// add these themselves.
    pub fn extra_response_headers(&self) -> Vec<(&'static str, String)> {
        self.rate
            .as_ref()
            .map(Decision::headers)
            .unwrap_or_default()
    }

    pub fn principal(&self) -> Option<Principal> {
        self.admitted.map(|a| a.principal)
    }
}

pub struct Gateway {
    settings: Arc<Settings>,
    edge: Edge,
    limiter: Option<RateLimiter>,
    cache: &'static Cache,
    upstream: Arc<Upstream>,
    routes: RouteNames,
    in_flight: InFlight,
}

impl Gateway {
    pub fn new(
        settings: Arc<Settings>,
        cache: &'static Cache,
        limiter: Option<RateLimiter>,
        upstream: Arc<Upstream>,
        in_flight: InFlight,
    ) -> Self {
        let routes = RouteNames::new(
            settings
                .cache
                .routes
                .iter()
                .map(|r| (&r.pattern, r.name.as_str())),
        );
        Self {
            edge: Edge::new(settings.edge.clone()),
            settings,
            limiter,
            cache,
            upstream,
            routes,
            in_flight,
        }
    }

    /// Answers with a gateway error and records it. Always returns `Ok(true)` (answered).
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: GatewayError,
        extra: &[(&'static str, String)],
    ) -> pingora::Result<bool> {
        ctx.error = Some(err);
        METRICS
            .edge_rejections
            .with_label_values(&[err.code()])
            .inc();
        errors::respond(session, err, extra).await?;
        Ok(true)
    }

    /// Counts this request against its key's quota. `Ok(true)` when it was refused (429 sent).
    async fn rate_limit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let Some(limiter) = &self.limiter else {
            return Ok(false);
        };
        if ctx.subrequest {
            return Ok(false);
        }
        let subject = match ctx.principal() {
            Some(Principal::Key(id)) => Subject::Key(id),
            _ => match session.client_addr().and_then(|a| a.as_inet()) {
                Some(addr) => Subject::Ip(addr.ip()),
                None => return Ok(false),
            },
        };
        let decision = limiter.check(subject).await;
        let allowed = decision.allowed;
        ctx.rate = Some(decision);
        if allowed {
            return Ok(false);
        }
        let extra = ctx.extra_response_headers();
        self.reject(session, ctx, GatewayError::RateLimited, &extra)
            .await
    }

    fn counts(&self, count: Count) -> bool {
        self.settings.rate_limit.enabled && self.settings.rate_limit.count == count
    }
}

fn is_write(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            admitted: None,
            route: OTHER_ROUTE,
            route_index: None,
            rate: None,
            cache: CacheCtx::default(),
            subrequest: false,
            upstream_start: None,
            upstream_time: None,
            upstream_status: None,
            retries: 0,
            error: None,
            upstream_error: None,
            request_body_bytes: 0,
            write_body: None,
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // RFC 9112 §9.3.2: pipelined requests are answered in order. Pingora 0.9 has no
        // service-wide switch; the flag is per session and carries over on keep-alive reuse.
        session.as_downstream_mut().set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.subrequest = session.subrequest_ctx.is_some();
        // 0. Head bounds, framing, method and the canonical path, before anything reads the
        //    path (route, key, scope and forwarding all see the rewritten one).
        if !ctx.subrequest {
            let raw_head = session.as_downstream().to_h1_raw();
            let checked =
                crate::edge::sanitize(session.req_header_mut(), &raw_head, &self.settings.server);
            if let Err(e) = checked {
                return self.reject(session, ctx, e, &[]).await;
            }
        }
        (ctx.route_index, ctx.route) = self.routes.lookup(session.req_header().uri.path());

        // 1. Edge checks.
        match self.edge.check(session.req_header()) {
            Ok(admitted) => ctx.admitted = Some(admitted),
            Err(e) => return self.reject(session, ctx, e, &[]).await,
        }
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.settings.server.max_request_body) {
            return self
                .reject(session, ctx, GatewayError::PayloadTooLarge, &[])
                .await;
        }

        // 2. Rate limit, when every request counts.
        if self.counts(Count::All) && self.rate_limit(session, ctx).await? {
            return Ok(true);
        }

        // 3. Fresh hits are answered here, without the cache state machine.
        self.cache
            .serve_fresh_hit(session, ctx, self.edge.pinned_api_version())
            .await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(chunk) = body else { return Ok(()) };
        ctx.request_body_bytes += chunk.len() as u64;
        if ctx.request_body_bytes > self.settings.server.max_request_body {
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                "request body over server.max_request_body",
            );
        }
        if is_write(&session.req_header().method) {
            let buf = ctx.write_body.get_or_insert_with(Vec::new);
            if buf.len() + chunk.len() <= MAX_INSPECTED_BODY {
                buf.extend_from_slice(chunk);
            } else {
                // Too large to inspect: invalidation falls back to the path-only scopes.
                ctx.write_body = Some(Vec::new());
            }
        }
        Ok(())
    }

    fn request_cache_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.cache.request_cache_filter(session, ctx)
    }

    fn cache_key_callback(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<CacheKey> {
        self.cache.cache_key(session, ctx)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<ForcedFreshness>> {
        self.cache
            .cache_hit_filter(session, meta, hit_handler, is_fresh, ctx)
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        self.cache.cache_miss(session, ctx)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<RespCacheable> {
        self.cache.response_cache_filter(session, resp, ctx)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        self.cache.cache_vary_filter(meta, ctx, req)
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        self.cache.should_serve_stale(session, ctx, error)
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        // Rate limit, when only upstream-bound requests count (cache hits never get here).
        if self.counts(Count::Upstream) && self.rate_limit(session, ctx).await? {
            return Ok(false);
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        ctx.upstream_start.get_or_insert_with(Instant::now);
        self.upstream.peer()
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.upstream.rewrite_request(req)?;
        if let Some(a) = ctx.admitted {
            if a.inject_key {
                if let Some(key) = self.edge.pinned_api_key() {
                    req.insert_header(http::header::AUTHORIZATION, format!("Bearer {key}"))?;
                }
            }
            if a.inject_version {
                if let Some(v) = self.edge.pinned_api_version() {
                    req.insert_header("api-version", v)?;
                }
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.upstream_status = Some(resp.status.as_u16());
        if let Some(start) = ctx.upstream_start {
            let took = start.elapsed();
            ctx.upstream_time = Some(took);
            METRICS
                .upstream_duration
                .with_label_values(&[ctx.route])
                .observe(took.as_secs_f64());
        }
        self.upstream.rewrite_response(resp);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if is_write(&session.req_header().method) {
            // Before the client sees the write's response, so its next read is fresh.
            self.cache.after_write(session.req_header(), resp, ctx);
        }
        self.cache.response_filter(session, resp, ctx)?;
        for (name, value) in ctx.extra_response_headers() {
            resp.insert_header(name, value)?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // The request never reached the origin: retry idempotent ones on a fresh connection.
        let idempotent = session.req_header().method.is_idempotent();
        if idempotent && ctx.retries < self.settings.upstream.retries {
            ctx.retries += 1;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let err = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(413)) => Some(GatewayError::PayloadTooLarge),
            (_, ErrorType::HTTPStatus(431)) => Some(GatewayError::HeaderFieldsTooLarge),
            (_, ErrorType::HTTPStatus(400)) => Some(GatewayError::BadRequest),
            (ErrorSource::Upstream, _) => {
                let (err, kind) = upstream::classify(e);
                ctx.upstream_error = Some(kind);
                METRICS.upstream_errors.with_label_values(&[kind]).inc();
                Some(err)
            }
            (
                ErrorSource::Downstream,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
            ) => None,
            (ErrorSource::Downstream, _) => Some(GatewayError::BadRequest),
            (_, ErrorType::HTTPStatus(s)) if (500..600).contains(s) => Some(
                GatewayError::UpstreamUnavailable("it answered with a server error"),
            ),
            _ => Some(GatewayError::Internal),
        };
        let code = match err {
            Some(err) if session.response_written().is_none() => {
                ctx.error = Some(err);
                let extra = ctx.extra_response_headers();
                if let Err(write_err) = errors::respond(session, err, &extra).await {
                    tracing::debug!(error = %write_err, "could not send error response");
                }
                err.status()
            }
            Some(err) => err.status(),
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.subrequest {
            return;
        }
        access_log::record(session, e, ctx, self.settings.log.access_log);
    }
}
