//! The validated, internal settings the proxy runs on, and one conversion per section from the
//! file format ([`super::file`]). Everything here has been checked: addresses parse, durations
//! and sizes are numbers, patterns compile, secrets are loaded. Each conversion names the key at
//! fault (`cache.routes[2].path`). The request path reads these and never the raw file format.
//! The choice enums are shared with the file format: serde spells them as the file does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use serde::Deserialize;

use super::units::{duration, size};
use super::{file, invalid, ConfigError, SecretFiles};
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
    /// Fresh plain hits on plain-TCP HTTP/1 connections answered below pingora-proxy.
    pub hit_path: bool,
    /// Whole-head deadline for a downstream request (slowloris bound).
    pub header_timeout: Duration,
    /// Tokio work stealing between worker threads (false: one current-thread runtime each).
    pub work_stealing: bool,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
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
    /// `cache.targeted_cache_control`, lowercased; `None` when empty.
    pub targeted_cache_control: Option<http::HeaderName>,
    /// `cache.store_statuses`.
    pub store_statuses: Vec<u16>,
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
    /// Scope templates ([`PathPattern::scope`]): `{name}` from the path, `{body.field}` from
    /// the JSON body.
    pub scopes: Vec<PathPattern>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Count {
    All,
    Upstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

fn addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        invalid(
            key,
            format!("{v:?} is not an address like \"127.0.0.1:8080\""),
        )
    })
}

fn method(key: &str, v: Option<&str>) -> Result<Option<Method>, ConfigError> {
    v.map(|v| {
        Method::from_bytes(v.to_ascii_uppercase().as_bytes())
            .map_err(|_| invalid(key, format!("{v:?} is not an HTTP method")))
    })
    .transpose()
}

fn pattern(key: &str, v: &str) -> Result<PathPattern, ConfigError> {
    PathPattern::parse(v).map_err(|m| invalid(key, m))
}

/// A secret given inline (`key`) or in a file (`key_file`), never both.
fn secret(
    key: &str,
    inline: Option<String>,
    file: Option<String>,
    mode: SecretFiles,
    notes: &mut Vec<String>,
) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(
            key,
            format!("set `{key}` or `{key}_file`, not both"),
        )),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if mode == SecretFiles::Note => {
                notes.push(format!("`{key}_file`: cannot read {path:?} here ({e})"));
                Ok(Some(format!("<unread {path}>")))
            }
            Err(e) => Err(invalid(
                &format!("{key}_file"),
                format!("cannot read {path:?}: {e}"),
            )),
        },
        (None, None) => Ok(None),
    }
    .and_then(|v| match v {
        Some(s) if s.is_empty() => Err(invalid(key, "must not be empty")),
        other => Ok(other),
    })
}

impl TryFrom<file::ListenFile> for ListenSettings {
    type Error = ConfigError;

    fn try_from(f: file::ListenFile) -> Result<Self, ConfigError> {
        let listen = Self {
            proxy: addr("listen.proxy", &f.proxy)?,
            admin: addr("listen.admin", &f.admin)?,
        };
        if listen.proxy == listen.admin {
            return Err(invalid("listen.admin", "must differ from listen.proxy"));
        }
        Ok(listen)
    }
}

/// A size that must fit in memory (header and URI bounds).
fn usize_size(key: &str, v: &str) -> Result<usize, ConfigError> {
    usize::try_from(size(key, v)?).map_err(|_| invalid(key, "too large"))
}

impl ServerSettings {
    /// The runtime directory defaults per proxy port, so it needs the validated listeners.
    pub fn from_file(f: file::ServerFile, listen: &ListenSettings) -> Result<Self, ConfigError> {
        if f.threads == 0 {
            return Err(invalid("server.threads", "must be at least 1"));
        }
        let runtime_dir = f
            .runtime_dir
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("RASTER_EDGE_RUNTIME_DIR").map(PathBuf::from))
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("raster-edge-{}", listen.proxy.port()))
            });
        Ok(Self {
            threads: f.threads,
            grace_period: duration("server.grace_period", &f.grace_period)?,
            runtime_dir,
            max_request_body: size("server.max_request_body", &f.max_request_body)?,
            max_header_size: usize_size("server.max_header_size", &f.max_header_size)?,
            max_header_count: f.max_header_count,
            max_uri_length: usize_size("server.max_uri_length", &f.max_uri_length)?,
            hit_path: f.hit_path,
            header_timeout: positive(
                "server.header_timeout",
                duration("server.header_timeout", &f.header_timeout)?,
            )?,
            work_stealing: f.work_stealing,
        })
    }
}

/// A duration that must not be zero (a zero deadline would refuse every request).
fn positive(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, "must be more than 0s"));
    }
    Ok(d)
}

impl TryFrom<file::UpstreamFile> for UpstreamSettings {
    type Error = ConfigError;

    fn try_from(f: file::UpstreamFile) -> Result<Self, ConfigError> {
        let url = url::Url::parse(&f.url)
            .map_err(|e| invalid("upstream.url", format!("{:?}: {e}", f.url)))?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(invalid(
                    "upstream.url",
                    format!("scheme {other:?} is not http or https"),
                ))
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("upstream.url", "has no host"))?
            .to_string();
        if url.path() != "/" || url.query().is_some() {
            return Err(invalid(
                "upstream.url",
                "must be an origin (scheme://host[:port]) with no path",
            ));
        }
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        Ok(Self {
            url: f.url.clone(),
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            authority,
            connect_timeout: duration("upstream.connect_timeout", &f.connect_timeout)?,
            read_timeout: duration("upstream.read_timeout", &f.read_timeout)?,
            write_timeout: duration("upstream.write_timeout", &f.write_timeout)?,
            idle_timeout: duration("upstream.idle_timeout", &f.idle_timeout)?,
            http2: f.http2,
            ca_file: f.ca_file.map(PathBuf::from),
            retries: f.retries,
        })
    }
}

impl EdgeSettings {
    /// Reads (or, with [`SecretFiles::Note`], notes) the secret files.
    pub fn from_file(
        f: file::EdgeFile,
        mode: SecretFiles,
        notes: &mut Vec<String>,
    ) -> Result<Self, ConfigError> {
        let configured = secret(
            "edge.key_id_secret",
            f.key_id_secret,
            f.key_id_secret_file,
            mode,
            notes,
        )?;
        let (key_id_secret, key_id_secret_generated) = match configured {
            Some(s) => (s.into_bytes(), false),
            None => {
                use rand::RngCore;
                let mut buf = vec![0u8; 32];
                rand::thread_rng().fill_bytes(&mut buf);
                (buf, true)
            }
        };
        let anonymous = f
            .anonymous
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let k = |field: &str| format!("edge.anonymous[{i}].{field}");
                Ok(RouteMatch {
                    method: method(&k("method"), r.method.as_deref())?,
                    pattern: pattern(&k("path"), &r.path)?,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            require_auth: f.require_auth,
            require_api_version: f.require_api_version,
            anonymous,
            api_version: f.api_version.filter(|v| !v.trim().is_empty()),
            api_key: secret("edge.api_key", f.api_key, f.api_key_file, mode, notes)?,
            key_id_secret,
            key_id_secret_generated,
        })
    }
}

impl TryFrom<file::CacheFile> for CacheSettings {
    type Error = ConfigError;

    fn try_from(f: file::CacheFile) -> Result<Self, ConfigError> {
        let mut routes = Vec::with_capacity(f.routes.len());
        for (i, r) in f.routes.into_iter().enumerate() {
            let k = |field: &str| format!("cache.routes[{i}].{field}");
            if r.name.is_empty() {
                return Err(invalid(&k("name"), "is required"));
            }
            let opt = |field: &str, v: &Option<String>| -> Result<_, ConfigError> {
                v.as_deref().map(|s| duration(&k(field), s)).transpose()
            };
            routes.push(CacheRoute {
                pattern: pattern(&k("path"), &r.path)?,
                ttl: opt("ttl", &r.ttl)?,
                stale_while_revalidate: opt("stale_while_revalidate", &r.stale_while_revalidate)?,
                stale_if_error: opt("stale_if_error", &r.stale_if_error)?,
                name: r.name,
            });
        }
        let mut invalidation = Vec::with_capacity(f.invalidation.len());
        for (i, r) in f.invalidation.into_iter().enumerate() {
            let k = |field: &str| format!("cache.invalidation[{i}].{field}");
            let scopes = r
                .scopes
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    PathPattern::scope(s).map_err(|m| invalid(&k(&format!("scopes[{j}]")), m))
                })
                .collect::<Result<_, _>>()?;
            invalidation.push(InvalidationRule {
                method: method(&k("method"), r.method.as_deref())?,
                pattern: pattern(&k("path"), &r.path)?,
                scopes,
            });
        }
        let max_object_size = size("cache.max_object_size", &f.max_object_size)?;
        Ok(Self {
            enabled: f.enabled,
            max_memory: size("cache.max_memory", &f.max_memory)?,
            max_object_size: usize::try_from(max_object_size)
                .map_err(|_| invalid("cache.max_object_size", "too large"))?,
            share: f.share,
            default_ttl: duration("cache.default_ttl", &f.default_ttl)?,
            negative_ttl: duration("cache.negative_ttl", &f.negative_ttl)?,
            stale_while_revalidate: duration(
                "cache.stale_while_revalidate",
                &f.stale_while_revalidate,
            )?,
            stale_if_error: duration("cache.stale_if_error", &f.stale_if_error)?,
            honor_client_no_cache: f.honor_client_no_cache,
            lock_timeout: duration("cache.lock_timeout", &f.lock_timeout)?,
            uncacheable_ttl: duration("cache.uncacheable_ttl", &f.uncacheable_ttl)?,
            fast_path: f.fast_path,
            targeted_cache_control: match f.targeted_cache_control.trim() {
                "" => None,
                name => Some(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid("cache.targeted_cache_control", "not a header field name")
                })?),
            },
            store_statuses: match f
                .store_statuses
                .iter()
                .find(|s| !(200..600).contains(*s) || matches!(s, 206 | 304))
            {
                Some(s) => {
                    return Err(invalid(
                        "cache.store_statuses",
                        format!("{s} is not a status a complete response can be stored with"),
                    ))
                }
                None => f.store_statuses,
            },
            routes,
            invalidation,
        })
    }
}

impl TryFrom<file::RateLimitFile> for RateLimitSettings {
    type Error = ConfigError;

    fn try_from(f: file::RateLimitFile) -> Result<Self, ConfigError> {
        let positive = |key: &str, rate: f64, burst: u32| -> Result<(), ConfigError> {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(invalid(
                    key,
                    format!("rate must be a positive number, got {rate}"),
                ));
            }
            if burst == 0 {
                return Err(invalid(key, "burst must be at least 1"));
            }
            Ok(())
        };
        positive("rate_limit.rate", f.rate, f.burst)?;
        let mut tiers = Vec::with_capacity(f.tiers.len());
        for (i, t) in f.tiers.into_iter().enumerate() {
            let k = format!("rate_limit.tiers[{i}]");
            if t.name.is_empty() {
                return Err(invalid(&format!("{k}.name"), "is required"));
            }
            positive(&k, t.rate, t.burst)?;
            for id in &t.key_ids {
                if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        &format!("{k}.key_ids"),
                        format!("{id:?} is not a key id (hex, from `raster-edge key-id KEY`); raw API keys do not belong in config"),
                    ));
                }
            }
            tiers.push(Tier {
                name: t.name,
                rate: t.rate,
                burst: t.burst,
                key_ids: t
                    .key_ids
                    .into_iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect(),
            });
        }
        Ok(Self {
            enabled: f.enabled,
            rate: f.rate,
            burst: f.burst,
            backend: f.backend,
            count: f.count,
            mode: f.mode,
            max_keys: f.max_keys.max(1),
            tiers,
        })
    }
}

impl TryFrom<file::RedisFile> for RedisSettings {
    type Error = ConfigError;

    fn try_from(f: file::RedisFile) -> Result<Self, ConfigError> {
        if !["redis://", "rediss://", "unix://"]
            .iter()
            .any(|s| f.url.starts_with(s))
        {
            return Err(invalid(
                "redis.url",
                format!("{:?} is not a redis:// URL", f.url),
            ));
        }
        Ok(Self {
            timeout: duration("redis.timeout", &f.timeout)?,
            url: f.url,
            on_error: f.on_error,
            key_prefix: f.key_prefix,
            invalidation: f.invalidation,
        })
    }
}

impl AdminSettings {
    pub fn from_file(
        f: file::AdminFile,
        mode: SecretFiles,
        notes: &mut Vec<String>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            token: secret("admin.token", f.token, f.token_file, mode, notes)?,
        })
    }
}

impl From<file::LogFile> for LogSettings {
    fn from(f: file::LogFile) -> Self {
        Self {
            format: f.format,
            level: f.level,
            access_log: f.access_log,
        }
    }
}
