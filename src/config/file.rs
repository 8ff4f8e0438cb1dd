//! The external configuration format: exactly what the TOML file (and `RASTER_EDGE_…`
//! environment overrides) may say, with every default in one place. Nothing here is validated
//! beyond its TOML type; [`super::settings`] turns it into the internal settings the proxy uses,
//! so the file format can evolve without touching the request path.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ListenFile {
    /// Gateway listener.
    pub proxy: String,
    /// Admin listener: /healthz /readyz /metrics /admin/*.
    pub admin: String,
}

impl Default for ListenFile {
    fn default() -> Self {
        Self {
            proxy: "127.0.0.1:8080".into(),
            admin: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
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

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            threads: 1,
            grace_period: "10s".into(),
            runtime_dir: None,
            max_request_body: "32MiB".into(),
            max_header_size: "32KiB".into(),
            max_header_count: 64,
            max_uri_length: "8KiB".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
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

impl Default for UpstreamFile {
    fn default() -> Self {
        Self {
            url: "https://api.raster.app".into(),
            connect_timeout: "2s".into(),
            read_timeout: "30s".into(),
            write_timeout: "30s".into(),
            idle_timeout: "60s".into(),
            http2: false,
            ca_file: None,
            retries: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
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

impl Default for EdgeFile {
    fn default() -> Self {
        Self {
            require_auth: true,
            require_api_version: true,
            anonymous: vec![RouteMatchFile {
                method: Some("POST".into()),
                path: "/libraries".into(),
            }],
            api_version: None,
            api_key: None,
            api_key_file: None,
            key_id_secret: None,
            key_id_secret_file: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RouteMatchFile {
    pub method: Option<String>,
    pub path: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct CacheFile {
    pub enabled: bool,
    pub max_memory: String,
    pub max_object_size: String,
    /// `per-key` (partitioned by key id, `private` storable) or `shared` (RFC 9111 shared cache).
    pub share: String,
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
    pub routes: Vec<CacheRouteFile>,
    pub invalidation: Vec<InvalidationRuleFile>,
}

impl Default for CacheFile {
    fn default() -> Self {
        Self {
            enabled: true,
            max_memory: "256MiB".into(),
            max_object_size: "8MiB".into(),
            share: "per-key".into(),
            default_ttl: "0s".into(),
            negative_ttl: "5s".into(),
            stale_while_revalidate: "0s".into(),
            stale_if_error: "0s".into(),
            honor_client_no_cache: false,
            lock_timeout: "10s".into(),
            uncacheable_ttl: "30s".into(),
            fast_path: true,
            routes: Vec::new(),
            invalidation: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
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
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct InvalidationRuleFile {
    pub method: Option<String>,
    pub path: String,
    /// Scope templates: `{name}` from the path, `{body.field}` from the JSON request body.
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RateLimitFile {
    pub enabled: bool,
    /// Requests per second per key.
    pub rate: f64,
    pub burst: u32,
    /// `local` or `redis`.
    pub backend: String,
    /// `all` requests count, or only `upstream`-bound ones (cache hits are free).
    pub count: String,
    /// `enforce` or `shadow` (decide and count, never reject).
    pub mode: String,
    /// Upper bound on tracked keys in process (idle ones are evicted first).
    pub max_keys: u64,
    pub tiers: Vec<TierFile>,
}

impl Default for RateLimitFile {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 50.0,
            burst: 100,
            backend: "local".into(),
            count: "all".into(),
            mode: "enforce".into(),
            max_keys: 1_000_000,
            tiers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct TierFile {
    pub name: String,
    pub rate: f64,
    pub burst: u32,
    /// Key ids (`raster-edge key-id KEY`), never raw keys.
    pub key_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RedisFile {
    pub url: String,
    /// Bound on one Redis round trip; past it the `on_error` policy decides.
    pub timeout: String,
    /// `local` (per-instance limits), `allow` or `deny` while Redis is unreachable.
    pub on_error: String,
    pub key_prefix: String,
    /// Publish and apply cache invalidations fleet-wide through Redis pub/sub.
    pub invalidation: bool,
}

impl Default for RedisFile {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            timeout: "50ms".into(),
            on_error: "local".into(),
            key_prefix: "raster-edge".into(),
            invalidation: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminFile {
    pub token: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LogFile {
    /// `text` or `json`.
    pub format: String,
    /// tracing filter, e.g. `info` or `raster_edge=debug`.
    pub level: String,
    pub access_log: bool,
}

impl Default for LogFile {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
            access_log: true,
        }
    }
}
