//! Configuration: the embedded default `config/raster-edge.toml`, with the given TOML file
//! layered over it, then `RASTER_EDGE_<SECTION>_<KEY>` environment variables, then CLI flags.
//! The embedded file is the one source of defaults: the code has none of its own (an absent key
//! takes the embedded value, an empty list stays empty). The file format lives in [`file`], the
//! validated settings the proxy runs on and their per-section conversions in [`settings`]; this
//! module layers the sources, reporting every problem by the key's name.

pub mod file;
pub mod settings;
pub mod units;

use std::path::{Path, PathBuf};

pub use file::FileConfig;
pub use settings::*;

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
    let defaults: toml::Table = EMBEDDED_DEFAULT
        .parse()
        .map_err(|e| syntax("embedded default", e))?;
    let file: toml::Table = text.parse().map_err(|e| syntax(origin, e))?;
    let mut value = defaults.clone();
    merge(&mut value, file);
    apply_env(&mut value, &defaults, env)?;
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path| unknown.push(path.to_string());
    let de = serde_ignored::Deserializer::new(toml::Value::Table(value), &mut note_unknown);
    // The path of a bad value names its key (`cache.share`, `cache.routes[2].path`).
    let file: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        // `message()`: without toml's own (less precise) "in `key`" suffix.
        let message = e.inner().message().to_string();
        if key == "." {
            ConfigError::Syntax {
                origin: origin.to_string(),
                message,
            }
        } else {
            ConfigError::Invalid { key, message }
        }
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

/// Scalar keys that have no default value, so the embedded default does not list them.
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

/// Applies `RASTER_EDGE_<SECTION>_<KEY>` overrides; a key's TOML type is the one its value
/// has in the embedded default (`defaults`), which lists every key that has a default.
fn apply_env(
    table: &mut toml::Table,
    defaults: &toml::Table,
    env: &[(String, String)],
) -> Result<(), ConfigError> {
    if env.is_empty() {
        return Ok(());
    }
    let mut known: Vec<(String, String, Option<toml::Value>)> = Vec::new();
    for (section, v) in defaults {
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

/// How secrets kept in files are treated while validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFiles {
    /// Read them (running the gateway): an unreadable file is an error.
    Read,
    /// Only note unreadable ones (`check-config` on a machine other than the one that runs the
    /// gateway, such as CI); the setting gets a placeholder value.
    Note,
}

/// Checks every value of the file format and builds the internal settings.
pub fn validate(f: FileConfig) -> Result<Settings, ConfigError> {
    validate_with(f, SecretFiles::Read).map(|(s, _)| s)
}

/// [`validate`], with a choice about secret files; returns notes about what was not checked.
/// Each section converts on its own ([`settings`]); only checks across sections live here.
pub fn validate_with(
    f: FileConfig,
    mode: SecretFiles,
) -> Result<(Settings, Vec<String>), ConfigError> {
    let mut notes = Vec::new();
    let listen = ListenSettings::try_from(f.listen)?;
    let server = ServerSettings::from_file(f.server, &listen)?;
    let edge = EdgeSettings::from_file(f.edge, mode, &mut notes)?;
    let rate_limit = RateLimitSettings::try_from(f.rate_limit)?;
    if rate_limit.enabled && rate_limit.backend == Backend::Redis && edge.key_id_secret_generated {
        // A random per-process secret gives every instance different key ids, so a shared
        // quota would silently become one quota per instance.
        return Err(invalid(
            "edge.key_id_secret",
            "rate_limit.backend = \"redis\" needs the same key_id_secret (or _file) on every instance",
        ));
    }
    let settings = Settings {
        listen,
        server,
        upstream: f.upstream.try_into()?,
        edge,
        cache: f.cache.try_into()?,
        rate_limit,
        redis: f.redis.try_into()?,
        admin: AdminSettings::from_file(f.admin, mode, &mut notes)?,
        log: f.log.into(),
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
    use http::Method;

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
        // The file format, before validation, too.
        let f = parse(
            "[edge]\napi_key = \"sk-live-123\"\nkey_id_secret = \"hush\"\n[admin]\ntoken = \"tok\"\n",
            "test",
            &[],
        )
        .unwrap();
        let dump = format!("{f:?}");
        assert!(dump.contains("<redacted>"), "{dump}");
        assert!(
            !dump.contains("sk-live-123") && !dump.contains("hush") && !dump.contains("\"tok\""),
            "{dump}"
        );
    }

    #[test]
    fn embedded_default_supplies_every_key_without_code_defaults() {
        // Deserialised alone, not layered: the embedded file must carry every key itself.
        let table: toml::Table = EMBEDDED_DEFAULT.parse().unwrap();
        let f: FileConfig = serde_path_to_error::deserialize(toml::Value::Table(table.clone()))
            .unwrap_or_else(|e| panic!("embedded default: {}: {e}", e.path()));
        assert!(!f.cache.invalidation.is_empty());
        // And nothing in the code fills a key in: without any one of them it does not load.
        let mut checked = 0;
        for (section, v) in &table {
            let toml::Value::Table(keys) = v else {
                panic!("{section} is not a table")
            };
            for key in keys.keys() {
                let mut t = table.clone();
                if let Some(toml::Value::Table(s)) = t.get_mut(section) {
                    s.remove(key);
                }
                let e = serde_path_to_error::deserialize::<_, FileConfig>(toml::Value::Table(t))
                    .err()
                    .unwrap_or_else(|| panic!("{section}.{key} has a default in the code"));
                assert_eq!(e.path().to_string(), *section, "{section}.{key}: {e}");
                assert!(e.to_string().contains(key.as_str()), "{section}.{key}: {e}");
                checked += 1;
            }
        }
        assert!(checked > 40, "{checked}");
        for dotted in OPTIONAL_KEYS {
            let (section, key) = dotted.split_once('.').unwrap();
            assert!(table[section].get(key).is_none(), "{dotted} has a default");
        }
    }

    #[test]
    fn empty_invalidation_list_means_no_rules() {
        assert!(!load_str("").unwrap().cache.invalidation.is_empty());
        let s = load_str("[cache]\ninvalidation = []\n").unwrap();
        assert!(s.cache.invalidation.is_empty());
        let inv = crate::cache::invalidation::Invalidation::new(&s.cache.invalidation).unwrap();
        let path = "/organizations/o/libraries/barcelona/assets";
        let w = inv.on_write(&Method::POST, path, path, None, &[]);
        assert!(w.scopes.is_empty() && w.trees.is_empty(), "{w:?}");
        assert_eq!(w.urls, vec![path]);
    }

    #[test]
    fn invalidation_rules_are_checked_with_the_config() {
        let e = load_str(
            "[[cache.invalidation]]\npath = \"/a/{x}\"\nscopes = [\"/a\", \"/a/{body.}\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cache.invalidation[0].scopes[1]"), "{e}");
        let s = load_str("[[cache.invalidation]]\nmethod = \"post\"\npath = \"/a/{x}\"\nscopes = [\"/a/{body.to}\"]\n").unwrap();
        assert_eq!(s.cache.invalidation[0].method, Some(Method::POST));
        assert_eq!(s.cache.invalidation[0].scopes[0].as_str(), "/a/{body.to}");
        let e = load_str("[[cache.invalidation]]\npath = \"/a/{body.x}\"\nscopes = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache.invalidation[0].path"), "{e}");
    }

    #[test]
    fn missing_and_mistyped_values_are_named_by_key() {
        let e = load_str("[[cache.routes]]\nname = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache.routes[0]") && e.contains("path"), "{e}");
        let e = load_str("[[cache.routes]]\nname = \"a\"\npath = \"/a\"\n[[cache.routes]]\nname = \"b\"\npath = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache.routes[1].path"), "{e}");
        let e = load_str("[server]\nthreads = \"four\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.threads"), "{e}");
    }

    #[test]
    fn every_choice_field_is_an_enum_named_by_key() {
        for (toml, key, choice) in [
            (
                "[rate_limit]\nbackend = \"memcached\"\n",
                "rate_limit.backend",
                "redis",
            ),
            (
                "[rate_limit]\ncount = \"some\"\n",
                "rate_limit.count",
                "upstream",
            ),
            (
                "[rate_limit]\nmode = \"strict\"\n",
                "rate_limit.mode",
                "shadow",
            ),
            ("[redis]\non_error = \"retry\"\n", "redis.on_error", "deny"),
            ("[log]\nformat = \"xml\"\n", "log.format", "json"),
        ] {
            let e = load_str(toml).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(choice), "{e}");
        }
        let s = load_str("[cache]\nshare = \"shared\"\n[rate_limit]\ncount = \"upstream\"\nmode = \"shadow\"\n[redis]\non_error = \"deny\"\n[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(s.cache.share, Share::Shared);
        assert_eq!(s.rate_limit.count, Count::Upstream);
        assert_eq!(s.rate_limit.mode, Mode::Shadow);
        assert_eq!(s.redis.on_error, OnError::Deny);
        assert_eq!(s.log.format, LogFormat::Json);
        // Environment overrides go through the same enums.
        let env = vec![("RASTER_EDGE_LOG_FORMAT".to_string(), "xml".to_string())];
        let e = parse("", "t", &env).unwrap_err().to_string();
        assert!(e.contains("log.format") && e.contains("text"), "{e}");
    }
}
