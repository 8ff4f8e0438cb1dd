//! The end of every request: one structured access-log line (target `raster_edge::access`, text
//! or JSON per `log.format`) and the request metrics. The key appears only as the short key id
//! prefix; the path is logged without its query string, which can carry search terms.

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Error;

use crate::ctx::RequestCtx;
use crate::metrics::{method_label, status_class, METRICS};
use crate::routes::path_only;
use crate::stats::STATS;

pub fn record(session: &Session, e: Option<&Error>, ctx: &RequestCtx, log_line: bool) {
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or_else(|| ctx.error.map(|g| g.status()))
        .unwrap_or(0);
    record_request(Some(session.req_header()), status, e, ctx, log_line);
}

/// The same line and metrics for a request answered outside a Pingora session (the hit path
/// below the proxy, [`crate::hitpath`]). `status` is what was sent (0: nothing); `req` is `None`
/// for a head that never arrived whole (logged as method `other`, path `-`).
pub fn record_request(
    req: Option<&RequestHeader>,
    status: u16,
    e: Option<&Error>,
    ctx: &RequestCtx,
    log_line: bool,
) {
    let cache = ctx.cache_status.as_str();
    let elapsed = ctx.start.elapsed();
    let method = req.map_or("other", |r| method_label(&r.method));

    METRICS
        .requests
        .with_label_values(&[method, status_class(status), cache, ctx.route])
        .inc();
    METRICS
        .request_duration
        .with_label_values(&[ctx.route, cache])
        .observe(elapsed.as_secs_f64());
    STATS.record(
        ctx.route,
        ctx.cache_status,
        ctx.rate.as_ref(),
        ctx.upstream_time,
    );

    if !log_line {
        return;
    }
    let key = ctx
        .principal()
        .and_then(|p| p.key_id())
        .map(|k| k.short())
        .unwrap_or_else(|| "-".to_string());
    tracing::info!(
        target: "raster_edge::access",
        method,
        path = req.map_or("-", |r| path_only(r.uri.path())),
        route = ctx.route,
        status,
        cache,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        upstream_status = ctx.upstream_status.unwrap_or(0),
        upstream_ms = ctx.upstream_time.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        key = %key,
        error = ctx
            .error
            .map(|g| g.code())
            .or(ctx.upstream_error.map(|k| k.as_str()))
            .unwrap_or("-"),
        detail = %e.map(|e| e.etype().as_str()).unwrap_or("-"),
    );
}
