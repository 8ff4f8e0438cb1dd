//! The admin listener, separate from the proxy port (loopback by default): `/healthz` (the
//! process runs), `/readyz` (every listener accepts and the upstream name has an address),
//! `/metrics` (Prometheus text), and
//! `POST /admin/purge` (bearer admin token, compared in constant time) that invalidates a scope
//! or a URL for every key. None of these paths is reachable through the proxy port.
//!
//! Inspection ([`inspect`]): `GET /admin/cache?url=…&key_id=…` (admin token: it tells what one
//! key has stored), `GET /admin/stats` (aggregates, like `/metrics`) and the status page at
//! `GET /` that polls it. The last two need the admin token only when one is configured; the
//! page also takes it as `?token=`, since a browser cannot send a bearer header when it
//! navigates (the page then sends it as a header and drops it from the address bar).

pub mod inspect;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::cache::{Cache, PurgeTarget};
use crate::config::Settings;
use crate::edge::bearer_token;
use crate::errors::envelope;
use crate::metrics::{self, InvalidationReason, METRICS};
use crate::upstream::Upstream;

/// Whether a presented admin token is the configured one, in time independent of where they
/// first differ and of either one's length: both are hashed (SHA-256) and the digests compared
/// with `subtle`'s constant-time equality. Comparing the tokens themselves with `ct_eq` would
/// still return early on a length mismatch and so tell the token's length.
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let (g, e) = (Sha256::digest(given), Sha256::digest(expected));
    bool::from(g.as_slice().ct_eq(e.as_slice()))
}

/// Largest purge request body read.
const MAX_ADMIN_BODY: usize = 16 * 1024;

pub struct Admin {
    token: Option<String>,
    cache: &'static Cache,
    ready: Arc<AtomicBool>,
    upstream: Option<Arc<Upstream>>,
    /// For `/admin/cache` (the pinned Api-Version) and `/admin/stats` (what Redis is used for).
    settings: Option<Arc<Settings>>,
}

impl Admin {
    pub fn new(token: Option<String>, cache: &'static Cache, ready: Arc<AtomicBool>) -> Self {
        Self {
            token,
            cache,
            ready,
            upstream: None,
            settings: None,
        }
    }

    /// `/admin/cache` keys with the pinned `edge.api_version`; `/admin/stats` reports Redis use.
    pub fn with_settings(mut self, settings: Arc<Settings>) -> Self {
        self.settings = Some(settings);
        self
    }

    /// `/readyz` also requires the upstream name to have an address.
    pub fn with_upstream(mut self, upstream: Arc<Upstream>) -> Self {
        self.upstream = Some(upstream);
        self
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(expected) = &self.token else {
            return false;
        };
        session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
            .is_some_and(|t| token_matches(t.as_bytes(), expected.as_bytes()))
    }

    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(session) {
            let msg = if self.token.is_some() {
                "missing or wrong admin token; send \"Authorization: Bearer <admin token>\""
            } else {
                "no admin token is configured (admin.token or admin.token_file)"
            };
            return json(
                StatusCode::UNAUTHORIZED,
                envelope("UNAUTHENTICATED", msg).to_vec(),
            );
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_ADMIN_BODY {
                        return json(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            envelope("PAYLOAD_TOO_LARGE", "purge body over 16 KiB").to_vec(),
                        );
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        envelope("BAD_REQUEST", &format!("cannot read body: {e}")).to_vec(),
                    )
                }
            }
        }
        let target = match PurgeTarget::from_json(&body) {
            Ok(t) => t,
            Err(msg) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    envelope("BAD_USER_INPUT", &msg).to_vec(),
                )
            }
        };
        let outcome = self.cache.purge(&target);
        METRICS
            .cache_invalidations
            .with_label_values(&[InvalidationReason::Purge.as_str()])
            .inc();
        tracing::info!(target = ?target, "admin purge");
        let v = serde_json::json!({ "data": { "purged": target.to_json(), "result": outcome } });
        json(StatusCode::OK, v.to_string().into_bytes())
    }
}

/// The status page: plain HTML and one inline script, no external resources.
const STATUS_PAGE: &str = include_str!("admin/status.html");

impl Admin {
    /// The admin token if one is configured, from the bearer header or (for the page a browser
    /// navigates to) the `token` query parameter; open when no token is configured.
    fn authorized_if_configured(&self, session: &ServerSession, query_token: bool) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        if self.authorized(session) {
            return true;
        }
        query_token
            && session.req_header().uri.query().is_some_and(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .filter(|(k, _)| k == "token")
                    .any(|(_, v)| token_matches(v.as_bytes(), expected.as_bytes()))
            })
    }

    fn unauthorized(&self) -> Response<Vec<u8>> {
        let msg = if self.token.is_some() {
            "missing or wrong admin token; send \"Authorization: Bearer <admin token>\""
        } else {
            "no admin token is configured (admin.token or admin.token_file)"
        };
        json(
            StatusCode::UNAUTHORIZED,
            envelope("UNAUTHENTICATED", msg).to_vec(),
        )
    }

    fn cache_entry(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(session) {
            return self.unauthorized();
        }
        let pinned = self
            .settings
            .as_ref()
            .and_then(|s| s.edge.api_version.as_deref());
        let answer = inspect::EntryQuery::parse(session.req_header().uri.query())
            .and_then(|q| inspect::cache_entry(self.cache, &q, pinned));
        match answer {
            Ok(v) => json(
                StatusCode::OK,
                serde_json::json!({ "data": v }).to_string().into_bytes(),
            ),
            Err((status, code, msg)) => json(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                envelope(code, &msg).to_vec(),
            ),
        }
    }

    fn stats(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if !self.authorized_if_configured(session, false) {
            return self.unauthorized();
        }
        let v = inspect::stats(self.cache, self.settings.as_deref());
        json(
            StatusCode::OK,
            serde_json::json!({ "data": v }).to_string().into_bytes(),
        )
    }

    fn status_page(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if !self.authorized_if_configured(session, true) {
            return self.unauthorized();
        }
        let mut r = response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            STATUS_PAGE.as_bytes().to_vec(),
        );
        let h = r.headers_mut();
        // Nothing but this page's own inline script and style, and fetches to this listener.
        h.insert(
            http::header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        );
        // The token may be in the page's URL: never send it on.
        h.insert(
            http::header::REFERRER_POLICY,
            http::HeaderValue::from_static("no-referrer"),
        );
        h.insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            http::HeaderValue::from_static("nosniff"),
        );
        r
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
    response(status, "application/json", body)
}

fn response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let len = r.body().len();
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/healthz") => {
                json(StatusCode::OK, br#"{"data":{"status":"ok"}}"#.to_vec())
            }
            (Method::GET | Method::HEAD, "/readyz") => {
                let upstream = self.upstream.as_ref().map_or(Ok(()), |u| u.readiness());
                match (self.ready.load(Ordering::Acquire), upstream) {
                    (true, Ok(())) => {
                        json(StatusCode::OK, br#"{"data":{"status":"ready"}}"#.to_vec())
                    }
                    (false, _) => json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        envelope("NOT_READY", "listeners are not up yet").to_vec(),
                    ),
                    (true, Err(why)) => json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        envelope("NOT_READY", &why).to_vec(),
                    ),
                }
            }
            (Method::GET | Method::HEAD, "/metrics") => response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(),
            ),
            (Method::POST, "/admin/purge") => self.purge(session).await,
            (Method::GET | Method::HEAD, "/") => self.status_page(session),
            (Method::GET | Method::HEAD, "/admin/cache") => self.cache_entry(session),
            (Method::GET | Method::HEAD, "/admin/stats") => self.stats(session),
            (_, "/" | "/admin/cache" | "/admin/stats") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                envelope("METHOD_NOT_ALLOWED", "method not allowed on this path").to_vec(),
            ),
            (_, "/healthz" | "/readyz" | "/metrics" | "/admin/purge") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                envelope("METHOD_NOT_ALLOWED", "method not allowed on this path").to_vec(),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                envelope("ENDPOINT_NOT_FOUND", "no such admin endpoint").to_vec(),
            ),
        }
    }
}

/// Marks the process ready once the proxy listener accepts connections (the admin listener is
/// up by the time anyone can ask). Pingora signals a service ready before it binds, so the
/// proxy port itself is asked, with backoff, until it answers; then this service is done.
pub struct Readiness {
    proxy: SocketAddr,
    ready: Arc<AtomicBool>,
}

impl Readiness {
    pub fn new(proxy: SocketAddr, ready: Arc<AtomicBool>) -> Self {
        Self { proxy, ready }
    }
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut wait = Duration::from_millis(5);
        loop {
            let probe = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(self.proxy),
            );
            if let Ok(Ok(_)) = probe.await {
                self.ready.store(true, Ordering::Release);
                METRICS.ready.set(1.0);
                tracing::info!(proxy = %self.proxy, "ready");
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = (wait * 2).min(Duration::from_millis(500));
        }
    }
}

#[cfg(test)]
mod token_tests {
    use super::token_matches;

    #[test]
    fn only_the_exact_token_matches() {
        let t = b"s3cr3t-admin-token";
        assert!(token_matches(t, t));
        for wrong in [
            &b""[..],
            b"s3cr3t-admin-toke",
            b"s3cr3t-admin-token ",
            b"s3cr3t-admin-tokeN",
            b"S3cr3t-admin-token",
            b"s3cr3t-admin-token\0",
        ] {
            assert!(!token_matches(wrong, t), "{wrong:?}");
        }
    }
}
