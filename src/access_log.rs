//! The end of every request: one structured access-log line (target `raster_edge::access`, text
//! or JSON per `log.format`) and the request metrics. The key appears only as the short key id
//! prefix; the path is logged without its query string, which can carry search terms.

use pingora::proxy::Session;
use pingora::Error;

use crate::ctx::RequestCtx;
use crate::metrics::{method_label, status_class, METRICS};
use crate::routes::path_only;
use crate::stats::STATS;

pub fn record(session: &Session, e: Option<&Error>, ctx: &RequestCtx, log_line: bool) {
    let req = session.req_header();
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or_else(|| ctx.error.map(|g| g.status()))
        .unwrap_or(0);
    let cache = ctx.cache_status.as_str();
    let elapsed = ctx.start.elapsed();
    let method = method_label(&req.method);

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
        path = path_only(req.uri.path()),
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
