//! The request path, in order. [`Gateway`] is the Pingora `ProxyHttp` implementation; each hook
//! does one step and delegates the substance, reading top-down:
//! [`crate::ctx`] (what the request carries) → [`crate::edge`] (reserved paths, credentials,
//! version, key id) → [`crate::ratelimit`] (per-key GCRA) → [`crate::cache`] (prepare, serve a
//! fresh hit, then pingora-cache's state machine hooks) → [`crate::upstream`] (peer, `Host`,
//! hop-by-hop) → [`crate::response`] (the gateway's headers on every response, write
//! invalidation) → [`crate::access_log`] (one line and the metrics).
//! Errors the gateway answers itself use Raster's envelope ([`crate::errors`]).

use std::sync::Arc;
use std::time::Instant;

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
use crate::cache::Cache;
use crate::config::{Count, Settings};
use crate::ctx::{InFlight, RequestCtx};
use crate::edge::{Edge, Principal};
use crate::errors::{self, GatewayError};
use crate::metrics::METRICS;
use crate::ratelimit::{RateLimiter, Subject};
use crate::response;
use crate::routes::RouteNames;
use crate::upstream::{self, Upstream};

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
    ) -> pingora::Result<bool> {
        ctx.error = Some(err);
        METRICS
            .edge_rejections
            .with_label_values(&[err.code()])
            .inc();
        send_error(session, ctx, err).await?;
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
                Some(addr) => Subject::for_ip(addr.ip()),
                None => return Ok(false),
            },
        };
        let decision = limiter.check(subject).await;
        let allowed = decision.allowed;
        ctx.rate = Some(decision);
        if allowed {
            return Ok(false);
        }
        self.reject(session, ctx, GatewayError::RateLimited).await
    }

    fn counts(&self, count: Count) -> bool {
        self.settings.rate_limit.enabled && self.settings.rate_limit.count == count
    }
}

/// Sends `err` as the whole response, closing the connection after it where the error says the
/// stream can no longer be trusted (framing errors).
async fn send_error(
    session: &mut Session,
    ctx: &RequestCtx,
    err: GatewayError,
) -> pingora::Result<()> {
    if err.closes_connection() {
        session.set_keepalive(None);
    }
    let (header, body) = errors::response(err)?;
    response::send(session, ctx, header, Some(body)).await
}

/// Any method not known to be safe (RFC 9110 §9.2.1), extension methods included: its
/// non-error response invalidates the target URI and `Location` / `Content-Location`
/// (RFC 9111 §4.4).
fn is_write(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(&self.in_flight)
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
                return self.reject(session, ctx, e).await;
            }
        }
        (ctx.route_index, ctx.route) = self.routes.lookup(session.req_header().uri.path());

        // 1. Edge checks.
        let admitted = match self.edge.check(session.req_header()) {
            Ok(admitted) => admitted,
            Err(e) => return self.reject(session, ctx, e).await,
        };
        ctx.admitted = Some(admitted);
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.settings.server.max_request_body) {
            return self
                .reject(session, ctx, GatewayError::PayloadTooLarge)
                .await;
        }

        // 2. Rate limit, when every request counts.
        if self.counts(Count::All) && self.rate_limit(session, ctx).await? {
            return Ok(true);
        }

        // 3. The cache: is this request its business, and under which key?
        ctx.cache = self.cache.prepare(
            session.req_header(),
            admitted,
            ctx.route_index,
            self.edge.pinned_api_version(),
        );

        // 4. A fresh hit is answered here, without the cache state machine. A background
        //    refresh must reach the origin, so it never takes this step.
        if ctx.subrequest {
            return Ok(false);
        }
        match self
            .cache
            .fresh_hit(session.req_header(), &ctx.cache, ctx.route)?
        {
            Some(hit) => {
                ctx.cache_status = hit.status;
                response::send(session, ctx, hit.header, hit.body).await?;
                Ok(true)
            }
            None => Ok(false),
        }
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
            ctx.write_body.push(chunk);
        }
        Ok(())
    }

    fn request_cache_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.cache.request_cache_filter(session, &ctx.cache)
    }

    fn cache_key_callback(
        &self,
        _session: &Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<CacheKey> {
        self.cache.cache_key(&ctx.cache)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        _meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        _is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<ForcedFreshness>> {
        self.cache.cache_hit_filter(session, &mut ctx.cache)
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        self.cache.cache_miss(session, &mut ctx.cache)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<RespCacheable> {
        self.cache
            .response_cache_filter(session.req_header(), resp, &mut ctx.cache)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        self.cache.cache_vary_filter(meta, &ctx.cache, req)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        self.cache.should_serve_stale(error)
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
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.cache.upstream_request(session.req_header(), req);
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
        self.cache
            .upstream_response(resp, ctx.upstream_time.unwrap_or_default(), &mut ctx.cache);
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
            self.cache
                .after_write(session.req_header(), resp, ctx.write_body.inspected());
        }
        if ctx.subrequest {
            // A background refresh: nobody sees this response, and the client request that
            // spawned it was already counted.
            return Ok(());
        }
        response::close_when_draining(session);
        ctx.cache_status = self.cache.response_filter(
            session,
            resp,
            &ctx.cache,
            ctx.upstream_status,
            ctx.route,
        )?;
        response::decorate(resp, ctx)
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
                METRICS
                    .upstream_errors
                    .with_label_values(&[kind.as_str()])
                    .inc();
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
                if let Err(write_err) = send_error(session, ctx, err).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unsafe_method_is_a_write() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(!is_write(&Method::from_bytes(m.as_bytes()).unwrap()), "{m}");
        }
        for m in [
            "POST", "PUT", "PATCH", "DELETE", "CONNECT", "M-SEARCH", "PURGE", "LINK",
        ] {
            assert!(is_write(&Method::from_bytes(m.as_bytes()).unwrap()), "{m}");
        }
    }
}
