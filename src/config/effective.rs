//! The effective configuration: the layered table (embedded default, the file, the environment,
//! the command line) beside the settings validated from it. `print-config` prints the table with
//! secrets redacted, `raster_edge_config_info{hash}` names it, and a reload compares two of them
//! key by key ([`changed_keys`]) to tell what changed.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{from_table, layered, validate, ConfigError, Overrides, Settings, EMBEDDED_DEFAULT};

/// Keys whose values are secrets: shown as [`REDACTED`], never hashed in the clear.
/// (`*_file` keys name a path, which is not a secret, and stay visible.)
pub const SECRET_KEYS: &[&str] = &["edge.api_key", "edge.key_id_secret", "admin.token"];

pub const REDACTED: &str = "<redacted>";

/// A validated configuration and the layered table it came from.
#[derive(Debug, Clone)]
pub struct Effective {
    pub settings: Settings,
    /// Every key with its effective value (secrets included: never print this one).
    table: toml::Table,
}

/// Loads `path` (or the embedded default) with the environment and `overrides` applied.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Effective, ConfigError> {
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
        .filter(|(k, _)| k.starts_with(super::ENV_PREFIX))
        .collect();
    let mut table = layered(&text, &origin, &env)?;
    for (section, key, value) in [
        ("listen", "proxy", &overrides.listen),
        ("listen", "admin", &overrides.admin_listen),
        ("upstream", "url", &overrides.upstream),
    ] {
        if let Some(v) = value {
            if let Some(toml::Value::Table(t)) = table.get_mut(section) {
                t.insert(key.to_string(), toml::Value::String(v.clone()));
            }
        }
    }
    let settings = validate(from_table(table.clone(), &origin)?)?;
    Ok(Effective { settings, table })
}

impl Effective {
    /// Settings built in process (tests, tools) with no file behind them: printable and
    /// hashable from an empty table only, so never the base of a reload.
    pub fn from_settings(settings: Settings) -> Self {
        Self {
            settings,
            table: toml::Table::new(),
        }
    }

    /// The table with every secret replaced by [`REDACTED`].
    pub fn redacted(&self) -> toml::Table {
        let mut t = self.table.clone();
        for dotted in SECRET_KEYS {
            if let Some((section, key)) = dotted.split_once('.') {
                if let Some(toml::Value::Table(s)) = t.get_mut(section) {
                    if s.contains_key(key) {
                        s.insert(key.to_string(), toml::Value::String(REDACTED.to_string()));
                    }
                }
            }
        }
        t
    }

    /// `print-config`'s output: TOML that `check-config` accepts (secrets aside).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.redacted()).unwrap_or_else(|e| format!("# {e}\n"))
    }

    /// Names this configuration: 16 hex digits of SHA-256 over the redacted effective table and
    /// a digest of the secret values keyed with `edge.key_id_secret` (so a rotated admin token
    /// changes the hash, while the hash gives nothing to guess a weak token against). With a
    /// generated key-id secret the secrets do not take part: the hash would differ per process.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(
            toml::to_string(&self.redacted())
                .unwrap_or_default()
                .as_bytes(),
        );
        if !self.settings.edge.key_id_secret_generated {
            if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.settings.edge.key_id_secret) {
                for s in [&self.settings.admin.token, &self.settings.edge.api_key] {
                    mac.update(s.as_deref().unwrap_or("").as_bytes());
                    mac.update(&[0]);
                }
                h.update(mac.finalize().into_bytes());
            }
        }
        hex::encode(&h.finalize()[..8])
    }

    /// Every dotted key whose effective value differs between `self` and `new` (arrays of
    /// tables, such as `cache.routes`, compare whole), plus secrets read from files whose
    /// content changed under the same path.
    pub fn changed_keys(&self, new: &Effective) -> Vec<String> {
        let mut out = Vec::new();
        diff("", &self.table, &new.table, &mut out);
        let (a, b) = (&self.settings, &new.settings);
        for (key, changed) in [
            (
                "edge.key_id_secret",
                a.edge.key_id_secret != b.edge.key_id_secret
                    && !(a.edge.key_id_secret_generated && b.edge.key_id_secret_generated),
            ),
            ("edge.api_key", a.edge.api_key != b.edge.api_key),
            ("admin.token", a.admin.token != b.admin.token),
        ] {
            if changed && !out.iter().any(|k| k == key) {
                out.push(key.to_string());
            }
        }
        out.sort();
        out
    }
}

fn diff(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let dotted = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => diff(&dotted, x, y, out),
            (x, y) if x != y => out.push(dotted),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eff(text: &str) -> Effective {
        let table = layered(text, "t", &[]).unwrap();
        let settings = validate(from_table(table.clone(), "t").unwrap()).unwrap();
        Effective { settings, table }
    }

    #[test]
    fn changed_keys_names_each_key_and_whole_arrays() {
        let a = eff("[edge]\nkey_id_secret = \"s\"\n");
        let b = eff("[edge]\nkey_id_secret = \"s\"\n[server]\nthreads = 3\n[cache]\ndefault_ttl = \"9s\"\n[[cache.routes]]\nname = \"x\"\npath = \"/x\"\n");
        assert_eq!(
            a.changed_keys(&b),
            vec!["cache.default_ttl", "cache.routes", "server.threads"]
        );
        assert!(a.changed_keys(&a.clone()).is_empty());
    }

    #[test]
    fn secrets_are_redacted_and_still_change_the_hash() {
        let a = eff("[edge]\nkey_id_secret = \"hush\"\n[admin]\ntoken = \"tok-1\"\n");
        let b = eff("[edge]\nkey_id_secret = \"hush\"\n[admin]\ntoken = \"tok-2\"\n");
        let text = a.to_toml();
        assert!(!text.contains("hush") && !text.contains("tok-1"), "{text}");
        assert!(text.contains(REDACTED), "{text}");
        assert_eq!(a.to_toml(), b.to_toml());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), a.clone().hash());
        assert_eq!(a.hash().len(), 16);
        assert_eq!(a.changed_keys(&b), vec!["admin.token"]);
    }

    #[test]
    fn printed_config_reads_back_as_the_same_settings() {
        let a = eff("[cache]\ndefault_ttl = \"7s\"\n");
        let back = eff(&a.to_toml());
        assert!(
            a.changed_keys(&back).is_empty(),
            "{:?}",
            a.changed_keys(&back)
        );
    }
}
