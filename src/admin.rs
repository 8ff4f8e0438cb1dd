//! The admin listener, separate from the proxy port (loopback by default): `/healthz` (the
//! process runs), `/readyz` (every listener accepts and the upstream name has an address),
//! `/metrics` (Prometheus text), and
//! `POST /admin/purge` (bearer admin token, compared in constant time) that invalidates a scope
//! or a URL for every key. None of these paths is reachable through the proxy port.

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
use subtle::ConstantTimeEq;

use crate::cache::{Cache, PurgeTarget};
use crate::edge::bearer_token;
use crate::errors::envelope;
use crate::metrics::{self, InvalidationReason, METRICS};
use crate::upstream::Upstream;

/// Largest purge request body read.
const MAX_ADMIN_BODY: usize = 16 * 1024;

pub struct Admin {
    token: Option<String>,
    cache: &'static Cache,
    ready: Arc<AtomicBool>,
    upstream: Option<Arc<Upstream>>,
}

impl Admin {
    pub fn new(token: Option<String>, cache: &'static Cache, ready: Arc<AtomicBool>) -> Self {
        Self {
            token,
            cache,
            ready,
            upstream: None,
        }
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
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(expected.as_bytes())))
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
