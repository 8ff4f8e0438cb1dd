//! The validated, internal settings the proxy runs on. Everything here has been checked:
//! addresses parse, durations and sizes are numbers, enums are enums, patterns compile, secrets
//! are loaded. The request path reads these and never the raw file format.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;

use crate::routes::PathPattern;

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: ListenSettings,
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub edge: EdgeSettings,
    pub cache: CacheSettings,
    pub rate_limit: RateLimitSettings,
    pub redis: RedisSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone)]
pub struct ListenSettings {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period: Duration,
    pub runtime_dir: PathBuf,
    pub max_request_body: u64,
    pub max_header_size: usize,
    pub max_header_count: usize,
    pub max_uri_length: usize,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The URL as configured, for logs.
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host` or `host:port` (non-default port): the `Host` header and the cache key authority.
    pub authority: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2: bool,
    pub ca_file: Option<PathBuf>,
    pub retries: usize,
}

#[derive(Clone)]
pub struct EdgeSettings {
    pub require_auth: bool,
    pub require_api_version: bool,
    pub anonymous: Vec<RouteMatch>,
    pub api_version: Option<String>,
    pub api_key: Option<String>,
    pub key_id_secret: Vec<u8>,
    /// True when no secret was configured and one was generated for this process.
    pub key_id_secret_generated: bool,
}

impl std::fmt::Debug for EdgeSettings {
    // Secrets stay out of Debug output so a settings dump can never leak them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeSettings")
            .field("require_auth", &self.require_auth)
            .field("require_api_version", &self.require_api_version)
            .field("anonymous", &self.anonymous)
            .field("api_version", &self.api_version)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("key_id_secret", &"<redacted>")
            .field("key_id_secret_generated", &self.key_id_secret_generated)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub method: Option<Method>,
    pub pattern: PathPattern,
}

impl RouteMatch {
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && self.pattern.matches(path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Partitioned by key id: a private cache per key.
    PerKey,
    /// RFC 9111 shared cache.
    Shared,
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub enabled: bool,
    pub max_memory: u64,
    pub max_object_size: usize,
    pub share: Share,
    pub default_ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub honor_client_no_cache: bool,
    pub lock_timeout: Duration,
    pub uncacheable_ttl: Duration,
    pub fast_path: bool,
    pub routes: Vec<CacheRoute>,
    pub invalidation: Vec<InvalidationRule>,
}

#[derive(Debug, Clone)]
pub struct CacheRoute {
    pub name: String,
    pub pattern: PathPattern,
    pub ttl: Option<Duration>,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct InvalidationRule {
    pub method: Option<Method>,
    pub pattern: PathPattern,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    All,
    Upstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Shadow,
}

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub rate: f64,
    pub burst: u32,
    pub backend: Backend,
    pub count: Count,
    pub mode: Mode,
    pub max_keys: u64,
    pub tiers: Vec<Tier>,
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    pub rate: f64,
    pub burst: u32,
    pub key_ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Local,
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub timeout: Duration,
    pub on_error: OnError,
    pub key_prefix: String,
    pub invalidation: bool,
}

#[derive(Clone, Default)]
pub struct AdminSettings {
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
}
