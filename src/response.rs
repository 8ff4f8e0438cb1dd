//! Response decoration: the headers the gateway adds to every response it sends, whichever room
//! produced it — a fast-path hit, a response through pingora-cache's state machine, or an error
//! the gateway answers itself. One function, so no kind of response can miss them.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::cache::FreshHit;
use crate::ctx::RequestCtx;

/// Adds the gateway's own headers to `resp` (today: the rate-limit headers of a counted request).
pub fn decorate(resp: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    if let Some(decision) = &ctx.rate {
        for (name, value) in decision.headers() {
            resp.insert_header(name, value)?;
        }
    }
    Ok(())
}

/// Once shutdown has begun, every response says `Connection: close`: a keep-alive client then
/// opens its next connection elsewhere instead of writing a request onto a connection the
/// draining process is about to drop (Pingora closes idle keep-alive connections at shutdown,
/// and a request already on its way is lost with them).
pub fn close_when_draining(session: &mut Session) {
    if session.is_process_shutting_down() {
        session.set_keepalive(None);
    }
}

/// The whole response for a fresh hit, decorated, with its cache status recorded in `ctx`: the
/// one function that makes a hit response. The proxy's `request_filter` writes it through
/// Pingora's session ([`write`]); the hit path below the proxy ([`crate::hitpath`]) serialises
/// it itself. Whatever changes a hit (a header, an encoding) belongs here, so both get it.
pub fn fresh_hit(
    hit: FreshHit,
    ctx: &mut RequestCtx,
) -> pingora::Result<(ResponseHeader, Option<Bytes>)> {
    ctx.cache_status = hit.status;
    let mut header = hit.header;
    decorate(&mut header, ctx)?;
    Ok((header, hit.body))
}

/// Decorates and writes a whole response the gateway made itself. `body` is `None` for a
/// header-only response; HEAD requests never get one.
pub async fn send(
    session: &mut Session,
    ctx: &RequestCtx,
    mut header: ResponseHeader,
    body: Option<Bytes>,
) -> pingora::Result<()> {
    decorate(&mut header, ctx)?;
    write(session, header, body).await
}

/// Writes a response that is already decorated.
pub async fn write(
    session: &mut Session,
    header: ResponseHeader,
    body: Option<Bytes>,
) -> pingora::Result<()> {
    close_when_draining(session);
    let body = body.filter(|_| session.req_header().method != http::Method::HEAD);
    session
        .write_response_header(Box::new(header), body.is_none())
        .await?;
    if let Some(body) = body {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
