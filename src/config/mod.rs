//! Configuration: one TOML file (the embedded default `config/raster-edge.toml` when none is
//! given), then `RASTER_EDGE_<SECTION>_<KEY>` environment variables, then CLI flags. The file
//! format lives in [`file`], the validated settings the proxy runs on in [`settings`]; this
//! module layers the sources and validates, reporting every problem by the key's name.

pub mod file;
pub mod settings;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::Method;

pub use file::FileConfig;
pub use settings::*;

use crate::routes::PathPattern;

/// The embedded default configuration (`config/raster-edge.toml`).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/raster-edge.toml");

/// Prefix of environment overrides: `RASTER_EDGE_UPSTREAM_URL`, `RASTER_EDGE_CACHE_MAX_MEMORY`…
pub const ENV_PREFIX: &str = "RASTER_EDGE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid TOML in {origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("unknown config key{}: {}", if .0.len() > 1 { "s" } else { "" }, .0.join(", "))]
    UnknownKeys(Vec<String>),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Command-line values that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
}

/// Loads the file (or the embedded default), applies the environment and the CLI overrides,
/// and validates the result.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let (text, origin) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            p.display().to_string(),
        ),
        None => (EMBEDDED_DEFAULT.to_string(), "embedded default".to_string()),
    };
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    let mut file = parse(&text, &origin, &env)?;
    if let Some(v) = &overrides.listen {
        file.listen.proxy = v.clone();
    }
    if let Some(v) = &overrides.admin_listen {
        file.listen.admin = v.clone();
    }
    if let Some(v) = &overrides.upstream {
        file.upstream.url = v.clone();
    }
    validate(file)
}

/// Parses TOML text into the file format, layered over the embedded default (a file only says
/// what differs: tables merge key by key, arrays such as `[[cache.routes]]` replace), applying
/// `env` overrides and rejecting unknown keys by their full dotted name.
pub fn parse(
    text: &str,
    origin: &str,
    env: &[(String, String)],
) -> Result<FileConfig, ConfigError> {
    let syntax = |origin: &str, e: toml::de::Error| ConfigError::Syntax {
        origin: origin.to_string(),
        message: e.to_string(),
    };
    let mut value: toml::Table = EMBEDDED_DEFAULT
        .parse()
        .map_err(|e| syntax("embedded default", e))?;
    let file: toml::Table = text.parse().map_err(|e| syntax(origin, e))?;
    merge(&mut value, file);
    apply_env(&mut value, env)?;
    let mut unknown = Vec::new();
    let file: FileConfig = serde_ignored::deserialize(toml::Value::Table(value), |path| {
        unknown.push(path.to_string())
    })
    .map_err(|e| ConfigError::Syntax {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    if !unknown.is_empty() {
        return Err(ConfigError::UnknownKeys(unknown));
    }
    Ok(file)
}

/// Deep merge: tables recursively, everything else (scalars, arrays) replaced by `over`.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Scalar keys that have no default value, so the schema walk below cannot see them.
const OPTIONAL_KEYS: &[&str] = &[
    "server.runtime_dir",
    "upstream.ca_file",
    "edge.api_version",
    "edge.api_key",
    "edge.api_key_file",
    "edge.key_id_secret",
    "edge.key_id_secret_file",
    "admin.token",
    "admin.token_file",
];

/// Environment variables that are ours but are not config keys.
const ENV_NOT_KEYS: &[&str] = &["RASTER_EDGE_RUNTIME_DIR", "RASTER_EDGE_LOG"];

fn env_name(section: &str, key: &str) -> String {
    format!("{ENV_PREFIX}{}_{}", section, key).to_ascii_uppercase()
}

fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    if env.is_empty() {
        return Ok(());
    }
    // Every scalar key of the schema, with the TOML type its default has.
    let defaults = toml::Table::try_from(FileConfig::default())
        .map_err(|e| invalid("(defaults)", e.to_string()))?;
    let mut known: Vec<(String, String, Option<toml::Value>)> = Vec::new();
    for (section, v) in &defaults {
        if let toml::Value::Table(t) = v {
            for (key, dv) in t {
                if !matches!(dv, toml::Value::Array(_) | toml::Value::Table(_)) {
                    known.push((section.clone(), key.clone(), Some(dv.clone())));
                }
            }
        }
    }
    for dotted in OPTIONAL_KEYS {
        if let Some((s, k)) = dotted.split_once('.') {
            known.push((s.to_string(), k.to_string(), None));
        }
    }
    for (name, raw) in env {
        if ENV_NOT_KEYS.contains(&name.as_str()) {
            continue;
        }
        let Some((section, key, default)) = known.iter().find(|(s, k, _)| env_name(s, k) == *name)
        else {
            return Err(ConfigError::UnknownKeys(vec![format!(
                "{name} (environment)"
            )]));
        };
        let dotted = format!("{section}.{key}");
        let value = match default {
            Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
                raw.parse()
                    .map_err(|_| invalid(&dotted, format!("{name}={raw:?} is not true/false")))?,
            ),
            Some(toml::Value::Integer(_)) => toml::Value::Integer(
                raw.parse()
                    .map_err(|_| invalid(&dotted, format!("{name}={raw:?} is not an integer")))?,
            ),
            Some(toml::Value::Float(_)) => toml::Value::Float(
                raw.parse()
                    .map_err(|_| invalid(&dotted, format!("{name}={raw:?} is not a number")))?,
            ),
            _ => toml::Value::String(raw.clone()),
        };
        let sec = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match sec {
            toml::Value::Table(t) => {
                t.insert(key.clone(), value);
            }
            _ => return Err(invalid(section, "must be a table")),
        }
    }
    Ok(())
}

fn addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        invalid(
            key,
            format!("{v:?} is not an address like \"127.0.0.1:8080\""),
        )
    })
}

fn method(key: &str, v: &str) -> Result<Method, ConfigError> {
    Method::from_bytes(v.to_ascii_uppercase().as_bytes())
        .map_err(|_| invalid(key, format!("{v:?} is not an HTTP method")))
}

fn pattern(key: &str, v: &str) -> Result<PathPattern, ConfigError> {
    PathPattern::parse(v).map_err(|m| invalid(key, m))
}

/// How secrets kept in files are treated while validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFiles {
    /// Read them (running the gateway): an unreadable file is an error.
    Read,
    /// Only note unreadable ones (`check-config` on a machine other than the one that runs the
    /// gateway, such as CI); the setting gets a placeholder value.
    Note,
}

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

fn one_of<T: Copy>(key: &str, v: &str, options: &[(&str, T)]) -> Result<T, ConfigError> {
    options
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            invalid(key, format!("{v:?} is not one of {}", names.join(", ")))
        })
}

fn upstream(f: file::UpstreamFile) -> Result<UpstreamSettings, ConfigError> {
    use units::duration;
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
    Ok(UpstreamSettings {
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

fn cache(f: file::CacheFile) -> Result<CacheSettings, ConfigError> {
    use units::{duration, size};
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
        invalidation.push(InvalidationRule {
            method: r
                .method
                .as_deref()
                .map(|m| method(&k("method"), m))
                .transpose()?,
            pattern: pattern(&k("path"), &r.path)?,
            scopes: r.scopes,
        });
    }
    let max_object_size = size("cache.max_object_size", &f.max_object_size)?;
    Ok(CacheSettings {
        enabled: f.enabled,
        max_memory: size("cache.max_memory", &f.max_memory)?,
        max_object_size: usize::try_from(max_object_size)
            .map_err(|_| invalid("cache.max_object_size", "too large"))?,
        share: one_of(
            "cache.share",
            &f.share,
            &[("per-key", Share::PerKey), ("shared", Share::Shared)],
        )?,
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
        routes,
        invalidation,
    })
}

fn rate_limit(f: file::RateLimitFile) -> Result<RateLimitSettings, ConfigError> {
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
    Ok(RateLimitSettings {
        enabled: f.enabled,
        rate: f.rate,
        burst: f.burst,
        backend: one_of(
            "rate_limit.backend",
            &f.backend,
            &[("local", Backend::Local), ("redis", Backend::Redis)],
        )?,
        count: one_of(
            "rate_limit.count",
            &f.count,
            &[("all", Count::All), ("upstream", Count::Upstream)],
        )?,
        mode: one_of(
            "rate_limit.mode",
            &f.mode,
            &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
        )?,
        max_keys: f.max_keys.max(1),
        tiers,
    })
}

/// Checks every value of the file format and builds the internal settings.
pub fn validate(f: FileConfig) -> Result<Settings, ConfigError> {
    validate_with(f, SecretFiles::Read).map(|(s, _)| s)
}

/// [`validate`], with a choice about secret files; returns notes about what was not checked.
pub fn validate_with(
    f: FileConfig,
    mode: SecretFiles,
) -> Result<(Settings, Vec<String>), ConfigError> {
    use units::{duration, size};
    let mut notes = Vec::new();
    let listen = ListenSettings {
        proxy: addr("listen.proxy", &f.listen.proxy)?,
        admin: addr("listen.admin", &f.listen.admin)?,
    };
    if listen.proxy == listen.admin {
        return Err(invalid("listen.admin", "must differ from listen.proxy"));
    }
    if f.server.threads == 0 {
        return Err(invalid("server.threads", "must be at least 1"));
    }
    let runtime_dir = f
        .server
        .runtime_dir
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("RASTER_EDGE_RUNTIME_DIR").map(PathBuf::from))
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("raster-edge-{}", listen.proxy.port()))
        });
    let server = ServerSettings {
        threads: f.server.threads,
        grace_period: duration("server.grace_period", &f.server.grace_period)?,
        runtime_dir,
        max_request_body: size("server.max_request_body", &f.server.max_request_body)?,
        max_header_size: size("server.max_header_size", &f.server.max_header_size)? as usize,
        max_header_count: f.server.max_header_count,
        max_uri_length: size("server.max_uri_length", &f.server.max_uri_length)? as usize,
    };
    let edge_secret = secret(
        "edge.key_id_secret",
        f.edge.key_id_secret,
        f.edge.key_id_secret_file,
        mode,
        &mut notes,
    )?;
    let (key_id_secret, key_id_secret_generated) = match edge_secret {
        Some(s) => (s.into_bytes(), false),
        None => {
            use rand::RngCore;
            let mut buf = vec![0u8; 32];
            rand::thread_rng().fill_bytes(&mut buf);
            (buf, true)
        }
    };
    let mut anonymous = Vec::with_capacity(f.edge.anonymous.len());
    for (i, r) in f.edge.anonymous.iter().enumerate() {
        let k = |field: &str| format!("edge.anonymous[{i}].{field}");
        anonymous.push(RouteMatch {
            method: r
                .method
                .as_deref()
                .map(|m| method(&k("method"), m))
                .transpose()?,
            pattern: pattern(&k("path"), &r.path)?,
        });
    }
    let edge = EdgeSettings {
        require_auth: f.edge.require_auth,
        require_api_version: f.edge.require_api_version,
        anonymous,
        api_version: f.edge.api_version.filter(|v| !v.trim().is_empty()),
        api_key: secret(
            "edge.api_key",
            f.edge.api_key,
            f.edge.api_key_file,
            mode,
            &mut notes,
        )?,
        key_id_secret,
        key_id_secret_generated,
    };
    let rate_limit = rate_limit(f.rate_limit)?;
    if rate_limit.enabled && rate_limit.backend == Backend::Redis && key_id_secret_generated {
        // A random per-process secret gives every instance different key ids, so a shared
        // quota would silently become one quota per instance.
        return Err(invalid(
            "edge.key_id_secret",
            "rate_limit.backend = \"redis\" needs the same key_id_secret (or _file) on every instance",
        ));
    }
    let redis = RedisSettings {
        url: {
            let u = &f.redis.url;
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("unix://"))
            {
                return Err(invalid("redis.url", format!("{u:?} is not a redis:// URL")));
            }
            u.clone()
        },
        timeout: duration("redis.timeout", &f.redis.timeout)?,
        on_error: one_of(
            "redis.on_error",
            &f.redis.on_error,
            &[
                ("local", OnError::Local),
                ("allow", OnError::Allow),
                ("deny", OnError::Deny),
            ],
        )?,
        key_prefix: f.redis.key_prefix,
        invalidation: f.redis.invalidation,
    };
    let admin = AdminSettings {
        token: secret(
            "admin.token",
            f.admin.token,
            f.admin.token_file,
            mode,
            &mut notes,
        )?,
    };
    let log = LogSettings {
        format: one_of(
            "log.format",
            &f.log.format,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )?,
        level: f.log.level,
        access_log: f.log.access_log,
    };
    let settings = Settings {
        listen,
        server,
        upstream: upstream(f.upstream)?,
        edge,
        cache: cache(f.cache)?,
        rate_limit,
        redis,
        admin,
        log,
    };
    Ok((settings, notes))
}

/// `check-config`: parses and validates `path` without reading secret files; returns notes.
pub fn check_file(path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file = parse(&text, &path.display().to_string(), &[])?;
    validate_with(file, SecretFiles::Note).map(|(_, notes)| notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Settings, ConfigError> {
        validate(parse(text, "test", &[])?)
    }

    #[test]
    fn embedded_default_is_valid_and_points_at_raster() {
        let s = load_str(EMBEDDED_DEFAULT).expect("embedded default");
        assert_eq!(s.upstream.authority, "api.raster.app");
        assert!(s.upstream.tls);
        assert_eq!(s.upstream.port, 443);
        assert!(s.cache.enabled);
        assert_eq!(s.cache.max_memory, 256 * 1024 * 1024);
        assert_eq!(s.rate_limit.backend, Backend::Local);
        assert!(!s.cache.routes.is_empty());
    }

    #[test]
    fn a_file_layers_over_the_embedded_default() {
        let s = load_str("[cache]\nmax_memory = \"1MiB\"\n").unwrap();
        assert_eq!(s.cache.max_memory, 1024 * 1024);
        let defaults = load_str("").unwrap();
        assert_eq!(s.cache.routes.len(), defaults.cache.routes.len());
        assert!(
            s.cache.routes.iter().any(|r| r.name == "assets"),
            "{:?}",
            s.cache.routes
        );
        // Arrays replace rather than append.
        let s = load_str("[[cache.routes]]\nname = \"only\"\npath = \"/x\"\n").unwrap();
        assert_eq!(s.cache.routes.len(), 1);
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let e = load_str("[cache]\nmx_memory = \"1MiB\"\n[nope]\nx = 1\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cache.mx_memory"), "{msg}");
        assert!(msg.contains("nope"), "{msg}");
    }

    #[test]
    fn bad_duration_is_reported_by_key() {
        let e = load_str("[cache]\ndefault_ttl = \"forever\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache.default_ttl"), "{e}");
    }

    #[test]
    fn bad_enum_lists_the_choices() {
        let e = load_str("[cache]\nshare = \"everyone\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache.share") && e.contains("per-key"), "{e}");
    }

    #[test]
    fn env_overrides_the_file_with_typed_values() {
        let env = vec![
            (
                "RASTER_EDGE_UPSTREAM_URL".to_string(),
                "http://127.0.0.1:9".to_string(),
            ),
            ("RASTER_EDGE_CACHE_ENABLED".to_string(), "false".to_string()),
            ("RASTER_EDGE_RATE_LIMIT_BURST".to_string(), "7".to_string()),
            ("RASTER_EDGE_ADMIN_TOKEN".to_string(), "s3cret".to_string()),
        ];
        let s = validate(parse("[cache]\nenabled = true\n", "t", &env).unwrap()).unwrap();
        assert_eq!(s.upstream.authority, "127.0.0.1:9");
        assert!(!s.upstream.tls);
        assert!(!s.cache.enabled);
        assert_eq!(s.rate_limit.burst, 7);
        assert_eq!(s.admin.token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn unknown_env_override_is_named() {
        let env = vec![("RASTER_EDGE_CACHE_SIZE".to_string(), "1".to_string())];
        let e = parse("", "t", &env).unwrap_err().to_string();
        assert!(e.contains("RASTER_EDGE_CACHE_SIZE"), "{e}");
    }

    #[test]
    fn upstream_url_must_be_an_origin() {
        assert!(load_str("[upstream]\nurl = \"ftp://x\"\n").is_err());
        assert!(load_str("[upstream]\nurl = \"https://x/v1\"\n").is_err());
        let s = load_str("[upstream]\nurl = \"http://127.0.0.1:8081\"\n").unwrap();
        assert_eq!(s.upstream.authority, "127.0.0.1:8081");
    }

    #[test]
    fn redis_rate_limits_need_a_shared_key_id_secret() {
        let e = load_str("[rate_limit]\nbackend = \"redis\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("edge.key_id_secret"), "{e}");
        assert!(
            load_str("[rate_limit]\nbackend = \"redis\"\n[edge]\nkey_id_secret = \"s\"\n").is_ok()
        );
    }

    #[test]
    fn tiers_refuse_raw_keys() {
        let e = load_str("[[rate_limit.tiers]]\nname = \"gold\"\nrate = 10\nburst = 10\nkey_ids = [\"demo-read\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rate_limit.tiers[0].key_ids"), "{e}");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let s = load_str("[edge]\napi_key = \"sk-live-123\"\nkey_id_secret = \"hush\"\n[admin]\ntoken = \"tok\"\n").unwrap();
        let dump = format!("{s:?}");
        assert!(
            !dump.contains("sk-live-123") && !dump.contains("hush") && !dump.contains("\"tok\""),
            "{dump}"
        );
    }
}
