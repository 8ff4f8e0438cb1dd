//! Edge checks: the first thing every request meets. Admin and mock-control paths are refused on
//! the proxy port; `Authorization: Bearer …` and `Api-Version` are required (Raster's own codes
//! `UNAUTHENTICATED` / `API_VERSION_REQUIRED`) unless the route is anonymous or the sidecar
//! options supply a pinned key / version. The raw API key is turned into a [`KeyId`] here, once,
//! with HMAC-SHA256 under a server secret: everything downstream (cache partition, rate limit,
//! logs) sees only the key id, and the raw key is never logged, labelled or stored.
//!
//! Before those checks, [`sanitize`] bounds the request head (`server.max_header_size`,
//! `max_header_count`, `max_uri_length`), refuses framing an origin could read differently
//! (bare LF, `Content-Length` with `Transfer-Encoding`, duplicate or non-numeric
//! `Content-Length`, a coding other than `chunked`), methods Raster does not define, and
//! rewrites the path to its canonical form ([`path`]) so keying, scoping and forwarding all see
//! the same path. Headers that name the caller or the version must appear once: two
//! `Authorization` or `Api-Version` headers are refused, since the key id would come from one
//! while the origin may read the other.

pub mod path;

use std::fmt;

use hmac::{Hmac, Mac};
use http::Method;
use pingora::http::RequestHeader;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::{EdgeSettings, ServerSettings};
use crate::errors::GatewayError;
use crate::routes::path_only;

/// The first 128 bits of HMAC-SHA256(secret, api key): collision-free in practice, useless to an
/// attacker without the secret. Displayed as 32 hex digits; logs use [`KeyId::short`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// First 8 hex digits: enough to tell keys apart in logs, too little to matter if leaked.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.short())
    }
}

/// Derives key ids; the HMAC state is keyed once at start and cloned per derivation.
#[derive(Clone)]
pub struct KeyIdHasher {
    mac: Hmac<Sha256>,
}

impl KeyIdHasher {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail; keep the fallback explicit.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self { mac }
    }

    pub fn key_id(&self, api_key: &str) -> KeyId {
        let mut mac = self.mac.clone();
        mac.update(api_key.as_bytes());
        let out = mac.finalize().into_bytes();
        let mut id = [0u8; 16];
        id.copy_from_slice(&out[..16]);
        KeyId(id)
    }
}

/// The last API key seen on one connection and its id (see [`Edge::check_memo`]). The key is
/// held only as long as the connection that sent it, and compared in constant time.
#[derive(Default)]
pub struct KeyIdMemo {
    last: Option<(Box<[u8]>, KeyId)>,
}

impl KeyIdMemo {
    fn key_id(&mut self, hasher: &KeyIdHasher, token: &str) -> KeyId {
        if let Some((key, id)) = &self.last {
            if key.len() == token.len() && bool::from(key.ct_eq(token.as_bytes())) {
                return *id;
            }
        }
        let id = hasher.key_id(token);
        self.last = Some((token.as_bytes().into(), id));
        id
    }
}

/// Who is asking, as far as the gateway is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// A request with an API key (the client's, or the sidecar's pinned one).
    Key(KeyId),
    /// An anonymous route with no key (rate-limited by client IP).
    Anonymous,
}

impl Principal {
    pub fn key_id(&self) -> Option<KeyId> {
        match self {
            Principal::Key(k) => Some(*k),
            Principal::Anonymous => None,
        }
    }
}

/// What the edge decided about a request that may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub principal: Principal,
    /// The sidecar key must be added upstream (the client sent none).
    pub inject_key: bool,
    /// The pinned Api-Version must be added upstream (the client sent none).
    pub inject_version: bool,
}

/// Paths that belong to the admin listener or to raster-mock's control plane: never proxied.
pub fn is_reserved_path(path: &str) -> bool {
    const RESERVED: &[&str] = &["/admin", "/metrics", "/healthz", "/readyz", "/__mock"];
    RESERVED
        .iter()
        .any(|p| path == *p || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/')))
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750 token68).
pub fn bearer_token(value: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim_start();
    let token68 = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    (!token.is_empty() && token.bytes().all(token68)).then_some(token)
}

/// Headers that must appear at most once, with the name shown in the error.
const SINGLE_HEADERS: &[(&str, &str)] = &[
    ("authorization", "Authorization"),
    ("api-version", "Api-Version"),
    ("host", "Host"),
];

/// Methods forwarded to the origin. TRACE (cross-site tracing), CONNECT (tunnels) and methods
/// Raster does not define are answered 405 here.
fn allowed_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    )
}

/// The checks on the request head that come before everything else, and the path rewrite.
/// `raw_head` is the head as received (request line and header fields, empty when unknown):
/// Pingora's parser already folded some framing away (it drops `Content-Length` when
/// `Transfer-Encoding` is present), so those checks read the bytes.
pub fn sanitize(
    req: &mut RequestHeader,
    raw_head: &[u8],
    limits: &ServerSettings,
) -> Result<(), GatewayError> {
    if req.raw_path().len() > limits.max_uri_length {
        return Err(GatewayError::UriTooLong);
    }
    let head_size = if raw_head.is_empty() {
        head_size(req)
    } else {
        raw_head.len()
    };
    if head_size > limits.max_header_size {
        return Err(GatewayError::HeaderSectionTooLarge);
    }
    if req.headers.len() > limits.max_header_count {
        return Err(GatewayError::TooManyHeaders);
    }
    check_framing(req, raw_head)?;
    if !allowed_method(&req.method) {
        return Err(GatewayError::MethodNotAllowed);
    }
    if req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST) {
        // RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request without Host.
        return Err(GatewayError::Malformed(
            "HTTP/1.1 request without a Host header",
        ));
    }
    normalize_target(req)
}

/// Request line plus `name: value\r\n` per field and the final CRLF.
fn head_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    let fields: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    line + fields + 2
}

fn check_framing(req: &RequestHeader, raw_head: &[u8]) -> Result<(), GatewayError> {
    if raw_head
        .iter()
        .enumerate()
        .any(|(i, &c)| c == b'\n' && (i == 0 || raw_head[i - 1] != b'\r'))
    {
        return Err(GatewayError::Malformed(
            "bare LF line ending in the request head",
        ));
    }
    let te = req.headers.get_all(http::header::TRANSFER_ENCODING);
    let has_te = te.iter().next().is_some();
    if has_te {
        let raw_cl = raw_head
            .split(|&c| c == b'\n')
            .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"));
        if raw_cl || req.headers.contains_key(http::header::CONTENT_LENGTH) {
            return Err(GatewayError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        let mut values = te.iter();
        let only_chunked = values
            .next()
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
            && values.next().is_none();
        if !only_chunked {
            return Err(GatewayError::Malformed(
                "Transfer-Encoding other than \"chunked\"",
            ));
        }
    }
    let mut cl = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let Some(v) = cl.next() {
        if cl.next().is_some() {
            return Err(GatewayError::DuplicateHeader("Content-Length"));
        }
        let v = v.as_bytes().trim_ascii();
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err(GatewayError::Malformed("Content-Length is not a number"));
        }
    }
    Ok(())
}

/// Rewrites the target to the canonical origin-form path (and the query as sent).
fn normalize_target(req: &mut RequestHeader) -> Result<(), GatewayError> {
    if !req.raw_path_is_utf8() {
        return Err(GatewayError::Malformed(
            "request path has a character that must be percent-encoded",
        ));
    }
    let raw = req.raw_path();
    let absolute_form = !raw.starts_with(b"/")
        && (starts_with_ci(raw, b"http://") || starts_with_ci(raw, b"https://"));
    if !absolute_form && !raw.starts_with(b"/") {
        return Err(GatewayError::Malformed(
            "request target must be an absolute path (origin-form)",
        ));
    }
    let normal = path::normalize(req.uri.path()).map_err(GatewayError::Malformed)?;
    if !absolute_form && matches!(normal, std::borrow::Cow::Borrowed(_)) {
        return Ok(());
    }
    let target = match req.uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal.into_owned(),
    };
    let uri = http::Uri::try_from(target)
        .map_err(|_| GatewayError::Malformed("request target is not a valid URI"))?;
    req.set_uri(uri);
    Ok(())
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The edge checks, configured once.
pub struct Edge {
    settings: EdgeSettings,
    hasher: KeyIdHasher,
    pinned_key_id: Option<KeyId>,
}

impl Edge {
    pub fn new(settings: EdgeSettings) -> Self {
        let hasher = KeyIdHasher::new(&settings.key_id_secret);
        let pinned_key_id = settings.api_key.as_deref().map(|k| hasher.key_id(k));
        Self {
            settings,
            hasher,
            pinned_key_id,
        }
    }

    pub fn hasher(&self) -> &KeyIdHasher {
        &self.hasher
    }

    pub fn pinned_api_key(&self) -> Option<&str> {
        self.settings.api_key.as_deref()
    }

    pub fn pinned_api_version(&self) -> Option<&str> {
        self.settings.api_version.as_deref()
    }

    fn is_anonymous(&self, method: &Method, path: &str) -> bool {
        self.settings
            .anonymous
            .iter()
            .any(|r| r.matches(method, path))
    }

    /// Runs the checks in order: reserved path, single credentials / version / host, credentials,
    /// version.
    pub fn check(&self, req: &RequestHeader) -> Result<Admitted, GatewayError> {
        self.check_with(req, |token| self.hasher.key_id(token))
    }

    /// [`Self::check`], remembering the last key id in `memo`: a keep-alive connection almost
    /// always repeats one key, and its id is then not recomputed (one HMAC-SHA256 per request
    /// otherwise). The memo lives with one connection and dies with it.
    pub fn check_memo(
        &self,
        req: &RequestHeader,
        memo: &mut KeyIdMemo,
    ) -> Result<Admitted, GatewayError> {
        self.check_with(req, |token| memo.key_id(&self.hasher, token))
    }

    fn check_with(
        &self,
        req: &RequestHeader,
        key_id: impl FnOnce(&str) -> KeyId,
    ) -> Result<Admitted, GatewayError> {
        let path = path_only(req.uri.path());
        if is_reserved_path(path) {
            return Err(GatewayError::EndpointNotFound);
        }
        for (name, shown) in SINGLE_HEADERS {
            if req.headers.get_all(*name).iter().nth(1).is_some() {
                return Err(GatewayError::DuplicateHeader(shown));
            }
        }
        let auth = req.headers.get(http::header::AUTHORIZATION);
        let (principal, inject_key) = match auth {
            Some(v) => match bearer_token(v.as_bytes()) {
                Some(token) => (Principal::Key(key_id(token)), false),
                // A malformed header is refused even on anonymous routes: the client meant to
                // authenticate and would otherwise be surprised by what it gets.
                None if self.settings.require_auth => return Err(GatewayError::Unauthenticated),
                None => (Principal::Anonymous, false),
            },
            None => match self.pinned_key_id {
                Some(id) => (Principal::Key(id), true),
                None if !self.settings.require_auth || self.is_anonymous(&req.method, path) => {
                    (Principal::Anonymous, false)
                }
                None => return Err(GatewayError::Unauthenticated),
            },
        };
        let version = req
            .headers
            .get("api-version")
            .filter(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace));
        let inject_version = match version {
            Some(_) => false,
            None if self.settings.api_version.is_some() => true,
            // Anonymous routes still need a version: the origin checks it before anything else.
            None if self.settings.require_api_version => {
                return Err(GatewayError::ApiVersionRequired)
            }
            None => false,
        };
        Ok(Admitted {
            principal,
            inject_key,
            inject_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteMatch;
    use crate::routes::PathPattern;

    fn settings() -> EdgeSettings {
        EdgeSettings {
            require_auth: true,
            require_api_version: true,
            anonymous: vec![RouteMatch {
                method: Some(Method::POST),
                pattern: PathPattern::parse("/libraries").unwrap(),
            }],
            api_version: None,
            api_key: None,
            key_id_secret: b"test-secret".to_vec(),
            key_id_secret_generated: false,
        }
    }

    fn req(method: &str, path: &str, headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.insert_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn key_ids_are_stable_per_secret_and_differ_across_secrets() {
        let a = KeyIdHasher::new(b"s1");
        let b = KeyIdHasher::new(b"s2");
        assert_eq!(a.key_id("demo-read"), a.key_id("demo-read"));
        assert_ne!(a.key_id("demo-read"), a.key_id("demo-write"));
        assert_ne!(a.key_id("demo-read"), b.key_id("demo-read"));
        assert_eq!(a.key_id("k").to_string().len(), 32);
        assert!(!a.key_id("demo-read").to_string().contains("demo"));
    }

    #[test]
    fn bearer_parsing_is_strict() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc.def-1"), Some("abc.def-1"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
        assert_eq!(bearer_token(b"Bearer \xff"), None);
    }

    #[test]
    fn missing_key_is_unauthenticated_and_missing_version_is_required() {
        let e = Edge::new(settings());
        let r = req("GET", "/me", &[("api-version", "2026-05-20")]);
        assert_eq!(e.check(&r), Err(GatewayError::Unauthenticated));
        let r = req(
            "GET",
            "/me",
            &[("authorization", "Token x"), ("api-version", "v")],
        );
        assert_eq!(e.check(&r), Err(GatewayError::Unauthenticated));
        let r = req("GET", "/me", &[("authorization", "Bearer demo-read")]);
        assert_eq!(e.check(&r), Err(GatewayError::ApiVersionRequired));
        let r = req(
            "GET",
            "/me",
            &[("authorization", "Bearer demo-read"), ("api-version", " ")],
        );
        assert_eq!(e.check(&r), Err(GatewayError::ApiVersionRequired));
        let r = req(
            "GET",
            "/me",
            &[
                ("authorization", "Bearer demo-read"),
                ("api-version", "2026-05-20"),
            ],
        );
        let ok = e.check(&r).unwrap();
        assert!(matches!(ok.principal, Principal::Key(_)));
        assert!(!ok.inject_key && !ok.inject_version);
    }

    #[test]
    fn anonymous_route_passes_without_key_but_needs_version() {
        let e = Edge::new(settings());
        let ok = e
            .check(&req("POST", "/libraries", &[("api-version", "2026-05-20")]))
            .unwrap();
        assert_eq!(ok.principal, Principal::Anonymous);
        assert_eq!(
            e.check(&req("POST", "/libraries", &[])),
            Err(GatewayError::ApiVersionRequired)
        );
        assert_eq!(
            e.check(&req("GET", "/libraries", &[])),
            Err(GatewayError::Unauthenticated)
        );
    }

    #[test]
    fn reserved_paths_are_not_proxied() {
        let e = Edge::new(settings());
        for p in [
            "/metrics",
            "/admin/purge",
            "/healthz",
            "/__mock/stats",
            "/readyz?x=1",
        ] {
            assert_eq!(
                e.check(&req("GET", p, &[])),
                Err(GatewayError::EndpointNotFound),
                "{p}"
            );
        }
        assert!(!is_reserved_path("/administrators"));
    }

    #[test]
    fn sidecar_injects_pinned_key_and_version() {
        let mut s = settings();
        s.api_key = Some("demo-read".into());
        s.api_version = Some("2026-05-20".into());
        let e = Edge::new(s);
        let ok = e.check(&req("GET", "/me", &[])).unwrap();
        assert!(ok.inject_key && ok.inject_version);
        assert_eq!(ok.principal.key_id(), Some(e.hasher().key_id("demo-read")));
    }
}
