//! The HTTP side: [`MockService`] (shared state, control endpoints, conditional requests,
//! precomputed bodies) and its Pingora [`ServeHttp`] glue.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::{
    CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use parking_lot::{Mutex, RwLock};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use super::control::{MockConfig, Stats};
use super::fixtures::fixture;
use super::routes::{bearer_token, dispatch, ApiCall, ApiError};
use super::state::Data;
use super::MockOptions;

/// Largest request body the mock reads (uploads included).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Precomputed GET bodies kept at most (the map is dropped whole when it grows past this).
const MAX_CACHED_BODIES: usize = 20_000;

struct Cached {
    body: Vec<u8>,
    etag: String,
}

#[derive(Default)]
struct BodyCache {
    generation: u64,
    map: HashMap<String, Arc<Cached>>,
}

/// The whole mock: data, runtime config, counters. One per process; shared by every connection.
pub struct MockService {
    startup: MockConfig,
    data: RwLock<Data>,
    config: RwLock<Arc<MockConfig>>,
    stats: Stats,
    bodies: Mutex<BodyCache>,
}

/// A quoted strong entity tag: 64-bit FNV-1a of the body.
pub fn etag_of(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{h:016x}-{:x}\"", body.len())
}

/// Whether `Accept-Encoding` accepts gzip (a `gzip`, `x-gzip` or `*` member with q > 0).
fn accepts_gzip(req: &HeaderMap) -> bool {
    req.get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            let mut parts = m.split(';');
            let name = parts.next().unwrap_or("").trim();
            let zero = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q")
                        && v.trim().chars().all(|c| c == '0' || c == '.')
                })
            });
            !zero
                && (name.eq_ignore_ascii_case("gzip")
                    || name.eq_ignore_ascii_case("x-gzip")
                    || name == "*")
        })
}

/// `If-None-Match` (weak comparison, RFC 9110 §13.1.2) against our strong tag.
fn none_match(header: &[u8], etag: &str) -> bool {
    let Ok(h) = std::str::from_utf8(header) else {
        return false;
    };
    h.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

impl MockService {
    pub fn new(opts: &MockOptions) -> MockService {
        let startup = MockConfig {
            latency_ms: opts.latency_ms,
            cache_control: opts.cache_control.clone(),
            gzip: opts.gzip,
            ..MockConfig::default()
        };
        MockService {
            config: RwLock::new(Arc::new(startup.clone())),
            startup,
            data: RwLock::new(fixture()),
            stats: Stats::default(),
            bodies: Mutex::new(BodyCache::default()),
        }
    }

    /// The current runtime configuration.
    pub fn config(&self) -> Arc<MockConfig> {
        self.config.read().clone()
    }

    /// Restores the fixture data, zeroes the counters and puts the config back to the flags.
    pub fn reset(&self) {
        *self.data.write() = fixture();
        self.invalidate();
        self.stats.reset();
        *self.config.write() = Arc::new(self.startup.clone());
    }

    fn invalidate(&self) {
        let mut b = self.bodies.lock();
        b.generation += 1;
        b.map.clear();
    }

    /// Answers one request. `path` excludes the query string.
    pub async fn handle(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response<Vec<u8>> {
        if let Some(rest) = path.strip_prefix("/__mock/") {
            return self.control(method, rest, body);
        }
        self.api(method, path, query, headers, body).await
    }

    async fn api(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response<Vec<u8>> {
        let conditional =
            headers.contains_key(IF_NONE_MATCH) || headers.contains_key(IF_MODIFIED_SINCE);
        self.stats.record(method, conditional);
        let cfg = self.config();
        if cfg.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(cfg.latency_ms)).await;
        }
        if cfg.down {
            let e = ApiError::new(
                503,
                "SERVICE_UNAVAILABLE",
                "The service is temporarily unavailable; retry with backoff.",
            );
            return self.finish(&cfg, method, headers, e.status, e.body(), None);
        }
        if let Some(s) = cfg.status {
            let e = ApiError::for_status(s);
            return self.finish(&cfg, method, headers, e.status, e.body(), None);
        }
        if method == Method::POST && path == "/" {
            let token = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().split_once(' '))
                .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
                .map(|(_, t)| t.trim());
            let a = super::graphql::handle(&self.data, token, body);
            if a.mutated {
                self.invalidate();
            }
            return self.finish(&cfg, method, headers, a.status, a.body, None);
        }
        let call = ApiCall {
            method,
            path,
            query,
            api_version: headers.get("api-version").map(HeaderValue::as_bytes),
            authorization: headers
                .get(http::header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
            content_type: headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            body,
        };
        let is_get = method == Method::GET || method == Method::HEAD;
        let version_ok = call
            .api_version
            .is_some_and(|v| !v.iter().all(u8::is_ascii_whitespace));
        let cache_key = if is_get && version_ok {
            bearer_token(&call).map(|t| format!("{t} {path}?{}", query.unwrap_or("")))
        } else {
            None
        };
        let mut generation = 0;
        if let Some(k) = &cache_key {
            let b = self.bodies.lock();
            if let Some(c) = b.map.get(k) {
                let c = c.clone();
                drop(b);
                return self.finish(&cfg, method, headers, 200, c.body.clone(), Some(&c.etag));
            }
            generation = b.generation;
        }
        match dispatch(&self.data, &call) {
            Ok(reply) => {
                if reply.mutated {
                    self.invalidate();
                }
                if reply.status == 200 && is_get {
                    let etag = etag_of(&reply.body);
                    if let Some(k) = cache_key {
                        let mut b = self.bodies.lock();
                        if b.generation == generation {
                            if b.map.len() >= MAX_CACHED_BODIES {
                                b.map.clear();
                            }
                            b.map.insert(
                                k,
                                Arc::new(Cached {
                                    body: reply.body.clone(),
                                    etag: etag.clone(),
                                }),
                            );
                        }
                    }
                    return self.finish(&cfg, method, headers, 200, reply.body, Some(&etag));
                }
                self.finish(&cfg, method, headers, reply.status, reply.body, None)
            }
            Err(e) => self.finish(&cfg, method, headers, e.status, e.body(), None),
        }
    }

    /// Adds the standard headers, applies `If-None-Match`, strips HEAD bodies.
    fn finish(
        &self,
        cfg: &MockConfig,
        method: &Method,
        req: &HeaderMap,
        status: u16,
        mut body: Vec<u8>,
        etag: Option<&str>,
    ) -> Response<Vec<u8>> {
        let mut resp = Response::new(Vec::new());
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(VARY, HeaderValue::from_static("Api-Version"));
        if let Some(cc) = cfg
            .cache_control
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            h.insert(CACHE_CONTROL, cc);
        }
        let mut not_modified = false;
        if let (true, Some(tag)) = (cfg.etag, etag) {
            if let Ok(v) = HeaderValue::from_str(tag) {
                h.insert(ETAG, v);
            }
            not_modified = req
                .get(IF_NONE_MATCH)
                .is_some_and(|v| none_match(v.as_bytes(), tag));
        }
        for (k, v) in &cfg.headers {
            h.insert(k.clone(), v.clone());
        }
        if not_modified {
            self.stats.record_not_modified();
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp.headers_mut().remove(CONTENT_TYPE);
            return resp;
        }
        if cfg.gzip && !body.is_empty() && accepts_gzip(req) {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            if enc.write_all(&body).is_ok() {
                if let Ok(gz) = enc.finish() {
                    body = gz;
                    let h = resp.headers_mut();
                    h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                    if cfg.gzip_vary && !cfg.headers.iter().any(|(k, _)| k == VARY) {
                        h.insert(
                            VARY,
                            HeaderValue::from_static("Api-Version, Accept-Encoding"),
                        );
                    }
                    if let Some(tag) = h.get(ETAG).map(|t| t.as_bytes().to_vec()) {
                        // The gzipped body is another byte sequence than the one tagged.
                        let mut weak = b"W/".to_vec();
                        weak.extend_from_slice(&tag);
                        if let Ok(v) = HeaderValue::from_bytes(&weak) {
                            h.insert(ETAG, v);
                        }
                    }
                }
            }
        }
        resp.headers_mut().insert(CONTENT_LENGTH, body.len().into());
        if method == Method::HEAD {
            body = Vec::new();
        }
        *resp.body_mut() = body;
        resp
    }

    fn control(&self, method: &Method, what: &str, body: &[u8]) -> Response<Vec<u8>> {
        let reply = |status: u16, v: Value| {
            let body = serde_json::to_vec(&v).unwrap_or_default();
            let mut r = Response::new(Vec::new());
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(VARY, HeaderValue::from_static("Api-Version"));
            h.insert(CONTENT_LENGTH, body.len().into());
            if method != Method::HEAD {
                *r.body_mut() = body;
            }
            r
        };
        let err = |e: ApiError| {
            reply(
                e.status,
                json!({"error": {"code": e.code, "message": e.message}}),
            )
        };
        let get = method == Method::GET || method == Method::HEAD;
        match (what.trim_end_matches('/'), method) {
            ("stats", _) if get => reply(200, json!({"data": self.stats.to_json()})),
            ("reset", &Method::POST) => {
                self.reset();
                reply(200, json!({"data": {"reset": true}}))
            }
            ("config", _) if get => reply(200, json!({"data": self.config().to_json()})),
            ("config", &Method::PUT) | ("config", &Method::PATCH) => {
                let patch: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => {
                        return err(ApiError::bad_input(format!("Malformed JSON body: {e}.")))
                    }
                };
                let mut next = (*self.config()).clone();
                match next.apply(&patch) {
                    Ok(()) => {
                        let j = next.to_json();
                        *self.config.write() = Arc::new(next);
                        reply(200, json!({"data": j}))
                    }
                    Err(m) => err(ApiError::bad_input(m)),
                }
            }
            _ => err(ApiError::endpoint_not_found(
                method,
                &format!("/__mock/{what}"),
            )),
        }
    }
}

/// Pingora glue: read the whole request body, answer from [`MockService::handle`].
pub struct MockApp(pub Arc<MockService>);

#[async_trait]
impl ServeHttp for MockApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body: Vec<u8> = Vec::new();
        let mut too_large = false;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        too_large = true;
                    } else {
                        body.extend_from_slice(&chunk);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let e = ApiError::bad_input("Could not read the request body.");
                    session.set_keepalive(None);
                    return error_response(&e);
                }
            }
        }
        if too_large {
            let e = ApiError::new(413, "PAYLOAD_TOO_LARGE", "The request body is too large.");
            return error_response(&e);
        }
        let req = session.req_header();
        let uri = &req.uri;
        self.0
            .handle(&req.method, uri.path(), uri.query(), &req.headers, &body)
            .await
    }
}

fn error_response(e: &ApiError) -> Response<Vec<u8>> {
    let body = e.body();
    let mut r = Response::new(Vec::new());
    *r.status_mut() = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(VARY, HeaderValue::from_static("Api-Version"));
    h.insert(CONTENT_LENGTH, body.len().into());
    *r.body_mut() = body;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let t = etag_of(b"{}");
        assert!(none_match(t.as_bytes(), &t));
        assert!(none_match(format!("\"x\", W/{t}").as_bytes(), &t));
        assert!(none_match(b"*", &t));
        assert!(!none_match(b"\"other\"", &t));
    }
}
