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
use crate::live::Live;
use crate::metrics::{self, InvalidationReason, METRICS};
use crate::reload::{Reloader, Trigger};
use crate::upstream::Upstream;

/// Largest purge request body read.
const MAX_ADMIN_BODY: usize = 16 * 1024;

pub struct Admin {
    /// The admin token, the pinned Api-Version (`/admin/cache`), what Redis is used for
    /// (`/admin/stats`): read per admin request, so a reload applies to the next one.
    live: Arc<Live>,
    cache: &'static Cache,
    ready: Arc<AtomicBool>,
    upstream: Option<Arc<Upstream>>,
    /// `POST /admin/reload`, and the last reload for `/admin/stats`.
    reloader: Option<Arc<Reloader>>,
}

impl Admin {
    pub fn new(live: Arc<Live>, cache: &'static Cache, ready: Arc<AtomicBool>) -> Self {
        Self {
            live,
            cache,
            ready,
            upstream: None,
            reloader: None,
        }
    }

    /// Serves `POST /admin/reload` with `reloader`.
    pub fn with_reloader(mut self, reloader: Arc<Reloader>) -> Self {
        self.reloader = Some(reloader);
        self
    }

    fn token(&self) -> Option<String> {
        self.live.load().settings.admin.token.clone()
    }

    /// `/readyz` also requires the upstream name to have an address.
    pub fn with_upstream(mut self, upstream: Arc<Upstream>) -> Self {
        self.upstream = Some(upstream);
        self
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(expected) = self.token() else {
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
            return self.unauthorized();
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

impl Admin {
    /// `POST /admin/reload` (admin token): reloads the `--config` file now. 200 with the
    /// report when applied, 409 `RELOAD_REFUSED` with the reason and the keys at fault when
    /// not (the previous configuration stays).
    async fn reload(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(session) {
            return self.unauthorized();
        }
        let Some(reloader) = self.reloader.clone() else {
            return json(
                StatusCode::CONFLICT,
                envelope(
                    "RELOAD_REFUSED",
                    "this gateway was built without a reloader",
                )
                .to_vec(),
            );
        };
        // File reads: off the admin listener's runtime threads.
        let outcome = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Admin)).await;
        match outcome {
            Ok(report) if report.applied() => json(
                StatusCode::OK,
                serde_json::json!({ "data": report })
                    .to_string()
                    .into_bytes(),
            ),
            Ok(report) => {
                let mut v = serde_json::json!({
                    "error": {
                        "code": "RELOAD_REFUSED",
                        "message": report.error.clone().unwrap_or_default(),
                    }
                });
                v["error"]["keys"] = serde_json::json!(report.keys);
                json(StatusCode::CONFLICT, v.to_string().into_bytes())
            }
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                envelope("INTERNAL", &format!("reload task failed: {e}")).to_vec(),
            ),
        }
    }
}

/// The status page: plain HTML and one inline script, no external resources.
const STATUS_PAGE: &str = include_str!("admin/status.html");

impl Admin {
    /// The admin token if one is configured, from the bearer header or (for the page a browser
    /// navigates to) the `token` query parameter; open when no token is configured.
    fn authorized_if_configured(&self, session: &ServerSession, query_token: bool) -> bool {
        let Some(expected) = self.token() else {
            return true;
        };
        if self.authorized(session) {
            return true;
        }
        query_token
            && session.req_header().uri.query().is_some_and(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .filter(|(k, _)| k == "token")
                    .any(|(_, v)| bool::from(v.as_bytes().ct_eq(expected.as_bytes())))
            })
    }

    fn unauthorized(&self) -> Response<Vec<u8>> {
        let msg = if self.token().is_some() {
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
        let live = self.live.load();
        let pinned = live.edge.pinned_api_version();
        let answer = inspect::EntryQuery::parse(session.req_header().uri.query())
            .and_then(|q| inspect::cache_entry(self.cache, &q, pinned, &live.cache));
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
        let live = self.live.load();
        let mut v = inspect::stats(self.cache, Some(live.settings.as_ref()));
        v["config"] = serde_json::json!({
            "hash": live.hash,
            "last_reload": self.reloader.as_ref().and_then(|r| r.last()),
        });
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
            (Method::POST, "/admin/reload") => self.reload(session).await,
            (Method::GET | Method::HEAD, "/") => self.status_page(session),
            (Method::GET | Method::HEAD, "/admin/cache") => self.cache_entry(session),
            (Method::GET | Method::HEAD, "/admin/stats") => self.stats(session),
            (_, "/" | "/admin/cache" | "/admin/stats") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                envelope("METHOD_NOT_ALLOWED", "method not allowed on this path").to_vec(),
            ),
            (_, "/healthz" | "/readyz" | "/metrics" | "/admin/purge" | "/admin/reload") => json(
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
    proxy: crate::config::ProxyAddr,
    ready: Arc<AtomicBool>,
}

impl Readiness {
    pub fn new(proxy: crate::config::ProxyAddr, ready: Arc<AtomicBool>) -> Self {
        Self { proxy, ready }
    }
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut wait = Duration::from_millis(5);
        loop {
            let connect = async {
                match &self.proxy {
                    crate::config::ProxyAddr::Tcp(a) => {
                        tokio::net::TcpStream::connect(a).await.map(drop)
                    }
                    crate::config::ProxyAddr::Unix(p) => {
                        tokio::net::UnixStream::connect(p).await.map(drop)
                    }
                }
            };
            let probe = tokio::time::timeout(Duration::from_millis(200), connect);
            if let Ok(Ok(())) = probe.await {
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
