//! The external configuration format: exactly what the TOML file (and `RASTER_EDGE_…`
//! environment overrides) may say. There are no defaults here: every file is layered over the
//! embedded `config/raster-edge.toml`, which is the one place defaults live and supplies every
//! key that is not an `Option` (a test holds it to that). Nothing here is validated beyond its
//! TOML type and the choice fields' spellings; [`super::settings`] turns each section into the
//! internal settings the proxy uses, so the file format can evolve without touching the
//! request path.

use serde::Deserialize;

use super::settings::{Backend, Count, LogFormat, Mode, OnError, Share};

#[derive(Debug, Clone, Deserialize)]
pub struct FileConfig {
    pub listen: ListenFile,
    pub server: ServerFile,
    pub upstream: UpstreamFile,
    pub edge: EdgeFile,
    pub cache: CacheFile,
    pub rate_limit: RateLimitFile,
    pub redis: RedisFile,
    pub admin: AdminFile,
    pub log: LogFile,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListenFile {
    /// Gateway listener.
    pub proxy: String,
    /// Admin listener: /healthz /readyz /metrics /admin/*.
    pub admin: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerFile {
    /// Worker threads for the proxy service.
    pub threads: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub grace_period: String,
    /// Where the pid file and the upgrade socket live (per instance).
    pub runtime_dir: Option<String>,
    /// Largest request body accepted (413 PAYLOAD_TOO_LARGE beyond).
    pub max_request_body: String,
    /// Largest request header section, request line included (431 beyond).
    pub max_header_size: String,
    /// Most request header fields (431 beyond).
    pub max_header_count: usize,
    /// Longest request target (414 URI_TOO_LONG beyond).
    pub max_uri_length: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamFile {
    pub url: String,
    pub connect_timeout: String,
    pub read_timeout: String,
    pub write_timeout: String,
    pub idle_timeout: String,
    /// Offer HTTP/2 over TLS (ALPN h2, falling back to HTTP/1.1).
    pub http2: bool,
    /// Extra CA bundle for upstream certificate verification.
    pub ca_file: Option<String>,
    /// How many times an idempotent request that never reached the origin is retried.
    pub retries: usize,
}

#[derive(Clone, Deserialize)]
pub struct EdgeFile {
    /// Reject requests without `Authorization: Bearer …` (401 UNAUTHENTICATED).
    pub require_auth: bool,
    /// Reject requests without `Api-Version` (400 API_VERSION_REQUIRED).
    pub require_api_version: bool,
    /// Routes that are anonymous upstream and pass without a key.
    pub anonymous: Vec<RouteMatchFile>,
    /// Sidecar: Api-Version sent upstream when the client sends none.
    pub api_version: Option<String>,
    /// Sidecar: API key sent upstream when the client sends none.
    pub api_key: Option<String>,
    pub api_key_file: Option<String>,
    /// Secret of the HMAC that turns API keys into key ids; generated at start when absent
    /// (key ids then change across restarts and differ between instances).
    pub key_id_secret: Option<String>,
    pub key_id_secret_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RouteMatchFile {
    pub method: Option<String>,
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CacheFile {
    pub enabled: bool,
    pub max_memory: String,
    pub max_object_size: String,
    /// `per-key` (partitioned by key id, `private` storable) or `shared` (RFC 9111 shared cache).
    pub share: Share,
    /// TTL for a GET 200 with no origin freshness and no route rule (0 = not stored).
    pub default_ttl: String,
    /// TTL for a 404 with no origin freshness.
    pub negative_ttl: String,
    pub stale_while_revalidate: String,
    pub stale_if_error: String,
    /// Let clients force revalidation with `Cache-Control: no-cache` / `max-age=0`.
    pub honor_client_no_cache: bool,
    /// How long coalesced requests wait for the one upstream fetch of their key.
    pub lock_timeout: String,
    /// How long a key whose response was uncacheable skips the cache lock.
    pub uncacheable_ttl: String,
    /// Answer fresh hits in `request_filter`, ahead of pingora-cache's state machine.
    pub fast_path: bool,
    /// A targeted cache-control field (RFC 9213) that governs this cache ahead of
    /// `CDN-Cache-Control` and `Cache-Control`; empty for none.
    pub targeted_cache_control: String,
    /// Statuses a response may be stored with (in `shared` mode, any complete status with
    /// explicit freshness may be stored too).
    pub store_statuses: Vec<u16>,
    pub routes: Vec<CacheRouteFile>,
    /// An empty list means no rules; only an absent key takes the embedded default's.
    pub invalidation: Vec<InvalidationRuleFile>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CacheRouteFile {
    /// Name used in metrics and logs.
    pub name: String,
    /// `{name}` matches one path segment.
    pub path: String,
    pub ttl: Option<String>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
}

/// Which scopes a successful write under `path` bumps.
#[derive(Debug, Clone, Deserialize)]
pub struct InvalidationRuleFile {
    pub method: Option<String>,
    pub path: String,
    /// Scope templates: `{name}` from the path, `{body.field}` from the JSON request body.
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitFile {
    pub enabled: bool,
    /// Requests per second per key.
    pub rate: f64,
    pub burst: u32,
    pub backend: Backend,
    /// `all` requests count, or only `upstream`-bound ones (cache hits are free).
    pub count: Count,
    /// `enforce` or `shadow` (decide and count, never reject).
    pub mode: Mode,
    /// Upper bound on tracked keys in process (idle ones are evicted first).
    pub max_keys: u64,
    pub tiers: Vec<TierFile>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TierFile {
    pub name: String,
    pub rate: f64,
    pub burst: u32,
    /// Key ids (`raster-edge key-id KEY`), never raw keys.
    pub key_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisFile {
    pub url: String,
    /// Bound on one Redis round trip; past it the `on_error` policy decides.
    pub timeout: String,
    /// `local` (per-instance limits), `allow` or `deny` while Redis is unreachable.
    pub on_error: OnError,
    pub key_prefix: String,
    /// Publish and apply cache invalidations fleet-wide through Redis pub/sub.
    pub invalidation: bool,
}

#[derive(Clone, Deserialize)]
pub struct AdminFile {
    pub token: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogFile {
    pub format: LogFormat,
    /// tracing filter, e.g. `info` or `raster_edge=debug`.
    pub level: String,
    pub access_log: bool,
}

/// `Some("<redacted>")` for a secret that is set: a `{:?}` of the file format must not print
/// one, as the validated settings' `Debug` does not.
fn redacted(v: &Option<String>) -> Option<&'static str> {
    v.as_ref().map(|_| "<redacted>")
}

impl std::fmt::Debug for EdgeFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeFile")
            .field("require_auth", &self.require_auth)
            .field("require_api_version", &self.require_api_version)
            .field("anonymous", &self.anonymous)
            .field("api_version", &self.api_version)
            .field("api_key", &redacted(&self.api_key))
            .field("api_key_file", &self.api_key_file)
            .field("key_id_secret", &redacted(&self.key_id_secret))
            .field("key_id_secret_file", &self.key_id_secret_file)
            .finish()
    }
}

impl std::fmt::Debug for AdminFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminFile")
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .finish()
    }
}
