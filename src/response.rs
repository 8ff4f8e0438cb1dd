//! Response decoration: the headers the gateway adds to every response it sends, whichever room
//! produced it — a fast-path hit, a response through pingora-cache's state machine, or an error
//! the gateway answers itself. One function, so no kind of response can miss them.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

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
/// and a request already on its way is lost with them). The same from SIGQUIT on, during a
/// binary upgrade ([`crate::handover`]).
pub fn close_when_draining(session: &mut Session) {
    if session.is_process_shutting_down() || crate::handover::handing_over() {
        session.set_keepalive(None);
    }
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
