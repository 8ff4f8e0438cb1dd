//! Configuration hot reload (`SIGHUP`, `POST /admin/reload`): reads the `--config` file again,
//! with the same environment and command-line overrides as at start, and applies what can
//! change live to the requests after it, without touching connections, the cache or the
//! rate-limit state.
//!
//! In order, and nothing is applied unless every step passes:
//! 1. load and validate the file as at start: a bad value is refused with its key;
//! 2. compare it with the configuration in effect key by key
//!    ([`Effective::changed_keys`]): a changed key that is not live ([`LIVE_KEYS`]) refuses
//!    the reload and is named (listener addresses, threads, cache size… need a restart or the
//!    binary upgrade). The list is of what *can* change, so a key added later is refused until
//!    someone makes it live;
//! 3. build the next [`LiveSettings`] and prepare every [`ReloadHook`] (the rate limiter's
//!    quotas, the log filter, and whatever else registers one, such as TLS certificates);
//! 4. swap: the hooks commit and the snapshot is stored. In-flight requests finish on the
//!    snapshot they started with.
//!
//! Every attempt is counted in `raster_edge_config_reload_total{result}` and logged; the last
//! one is kept for `/admin/stats` and the status page.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::effective::{self, Effective};
use crate::config::{ConfigError, Overrides, Settings};
use crate::live::{Live, LiveSettings};
use crate::metrics::{ReloadResult, METRICS};

/// Keys a reload applies (a dotted key, or a section prefix of it). Everything else must stay
/// as it is for a reload to be accepted.
pub const LIVE_KEYS: &[&str] = &[
    // Certificates (the listener itself cannot change: see the "tls" hook in server.rs).
    "tls",
    // Route rules and TTLs, storage policy, invalidation rules.
    "cache.routes",
    "cache.default_ttl",
    "cache.negative_ttl",
    "cache.stale_while_revalidate",
    "cache.stale_if_error",
    "cache.honor_client_no_cache",
    "cache.share",
    "cache.targeted_cache_control",
    "cache.store_statuses",
    "cache.invalidation",
    // Quotas and tiers (the tracked state stays).
    "rate_limit.rate",
    "rate_limit.burst",
    "rate_limit.mode",
    "rate_limit.count",
    "rate_limit.tiers",
    // Upstream timeouts and retries (the address and TLS are fixed: pooled connections).
    "upstream.connect_timeout",
    "upstream.read_timeout",
    "upstream.write_timeout",
    "upstream.idle_timeout",
    "upstream.retries",
    // Edge checks and sidecar pins (the key-id secret is fixed: it names every key's state).
    "edge.require_auth",
    "edge.require_api_version",
    "edge.anonymous",
    "edge.api_version",
    "edge.api_key",
    "edge.api_key_file",
    // Admin token, log level and access log.
    "admin.token",
    "admin.token_file",
    "log.level",
    "log.access_log",
];

/// Whether a changed key is applied live.
pub fn is_live(key: &str) -> bool {
    LIVE_KEYS.iter().any(|live| {
        key == *live
            || key
                .strip_prefix(live)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// Applies the change once every hook has prepared: what a hook returns from
/// [`ReloadHook::prepare`].
pub type Commit = Box<dyn FnOnce() + Send>;

/// Something besides the request snapshot that a reload updates: prepared (checked and built)
/// first, committed only when every hook prepared.
pub trait ReloadHook: Send + Sync {
    /// Names the hook in a refusal (`tls: cannot read …`).
    fn name(&self) -> &'static str;
    fn prepare(&self, next: &Settings) -> anyhow::Result<Commit>;
}

/// A [`ReloadHook`] from a name and a closure.
pub fn hook<F>(name: &'static str, prepare: F) -> Box<dyn ReloadHook>
where
    F: Fn(&Settings) -> anyhow::Result<Commit> + Send + Sync + 'static,
{
    struct FnHook<F>(&'static str, F);
    impl<F> ReloadHook for FnHook<F>
    where
        F: Fn(&Settings) -> anyhow::Result<Commit> + Send + Sync,
    {
        fn name(&self) -> &'static str {
            self.0
        }
        fn prepare(&self, next: &Settings) -> anyhow::Result<Commit> {
            (self.1)(next)
        }
    }
    Box::new(FnHook(name, prepare))
}

/// Sets the log filter (installed by the binary, which owns the subscriber).
pub type LogFilterSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_FILTER: OnceLock<LogFilterSetter> = OnceLock::new();

/// Registers how `log.level` is applied on reload. Without it (tests in process) the level
/// stays as it was.
pub fn set_log_filter_setter(setter: LogFilterSetter) {
    let _ = LOG_FILTER.set(setter);
}

/// What started a reload (for the log and the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Sighup,
    Admin,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no --config file was given at start: there is nothing to reload (the embedded default cannot change)")]
    NoConfigFile,
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("{} cannot change without a restart (use the binary upgrade: docs/OPERATIONS.md)", .0.join(", "))]
    NeedsRestart(Vec<String>),
    #[error("{hook}: {error:#}")]
    Hook {
        hook: &'static str,
        error: anyhow::Error,
    },
}

impl Report {
    /// The new configuration is in effect (else it was refused and the old one runs on).
    pub fn applied(&self) -> bool {
        self.error.is_none()
    }
}

impl Refusal {
    /// The keys at fault, for the log line and the report.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Refusal::Invalid(ConfigError::Invalid { key, .. }) => vec![key.clone()],
            Refusal::Invalid(ConfigError::UnknownKeys(keys)) => keys.clone(),
            Refusal::NeedsRestart(keys) => keys.clone(),
            _ => Vec::new(),
        }
    }
}

/// The outcome of one reload, kept for `/admin/stats` and answered by `POST /admin/reload`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub result: &'static str,
    pub trigger: Trigger,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The configuration in effect after the attempt.
    pub hash: String,
    /// Keys that changed (applied when `result` is ok).
    pub changed: Vec<String>,
    /// Why it was refused, and the keys at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

pub struct Reloader {
    path: Option<PathBuf>,
    overrides: Overrides,
    live: Arc<Live>,
    /// The configuration in effect; held while a reload runs, so reloads never interleave.
    current: Mutex<Effective>,
    hooks: Vec<Box<dyn ReloadHook>>,
    last: Mutex<Option<Report>>,
}

impl Reloader {
    /// `path` is the `--config` file (`None`: started on the embedded default, nothing to
    /// reload); `current` the configuration `live` was built from.
    pub fn new(
        path: Option<PathBuf>,
        overrides: Overrides,
        current: Effective,
        live: Arc<Live>,
        hooks: Vec<Box<dyn ReloadHook>>,
    ) -> Self {
        set_config_info(None, &live.load().hash);
        Self {
            path,
            overrides,
            live,
            current: Mutex::new(current),
            hooks,
            last: Mutex::new(None),
        }
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The last reload's report, if any happened.
    pub fn last(&self) -> Option<Report> {
        self.last.lock().clone()
    }

    /// Reads the file again and applies it, or refuses it and keeps what runs
    /// ([`Report::applied`] tells which). Blocking (file reads): call it off the request path.
    pub fn reload(&self, trigger: Trigger) -> Report {
        let mut current = self.current.lock();
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let old_hash = self.live.load().hash.clone();
        // Steps 1 to 3: nothing is applied unless all of them pass.
        let prepared = self.attempt(&current).and_then(|(next, changed)| {
            let live = LiveSettings::new(&next);
            let commits = prepare_hooks(&next, &self.hooks)?;
            Ok((next, changed, live, commits))
        });
        let (next, changed, live, commits) = match prepared {
            Ok(p) => p,
            Err(refusal) => return self.refused(trigger, at, &old_hash, refusal),
        };
        // Step 4.
        for commit in commits {
            commit();
        }
        let hash = live.hash.clone();
        self.live.store(live);
        *current = next;
        set_config_info(Some(&old_hash), &hash);
        METRICS
            .config_reloads
            .with_label_values(&[ReloadResult::Ok.as_str()])
            .inc();
        tracing::info!(?trigger, %hash, changed = ?changed, "configuration reloaded");
        let report = Report {
            result: ReloadResult::Ok.as_str(),
            trigger,
            at,
            hash,
            changed,
            error: None,
            keys: Vec::new(),
        };
        *self.last.lock() = Some(report.clone());
        report
    }

    /// Steps 1 and 2: the next configuration and what changed, or why not.
    fn attempt(&self, current: &Effective) -> Result<(Effective, Vec<String>), Refusal> {
        let path = self.path.as_deref().ok_or(Refusal::NoConfigFile)?;
        let mut next = effective::load(Some(path), &self.overrides)?;
        let (now, then) = (&current.settings.edge, &mut next.settings.edge);
        if now.key_id_secret_generated && then.key_id_secret_generated {
            // Without a configured secret each load draws a new one: keep this process's, or
            // every key id (its cache partition and its quota state) would change.
            then.key_id_secret = now.key_id_secret.clone();
        }
        let changed = current.changed_keys(&next);
        let fixed: Vec<String> = changed.iter().filter(|k| !is_live(k)).cloned().collect();
        if !fixed.is_empty() {
            return Err(Refusal::NeedsRestart(fixed));
        }
        Ok((next, changed))
    }

    fn refused(&self, trigger: Trigger, at: u64, hash: &str, refusal: Refusal) -> Report {
        let keys = refusal.keys();
        METRICS
            .config_reloads
            .with_label_values(&[ReloadResult::Error.as_str()])
            .inc();
        tracing::error!(
            ?trigger,
            key = %keys.join(", "),
            error = %refusal,
            "configuration reload refused; the previous configuration stays in effect"
        );
        let report = Report {
            result: ReloadResult::Error.as_str(),
            trigger,
            at,
            hash: hash.to_string(),
            changed: Vec::new(),
            error: Some(refusal.to_string()),
            keys,
        };
        *self.last.lock() = Some(report.clone());
        report
    }
}

/// Step 3: every hook prepared against the next settings, the log filter included.
fn prepare_hooks(next: &Effective, hooks: &[Box<dyn ReloadHook>]) -> Result<Vec<Commit>, Refusal> {
    let mut commits = Vec::with_capacity(hooks.len() + 1);
    for h in hooks {
        let commit = h.prepare(&next.settings).map_err(|error| Refusal::Hook {
            hook: h.name(),
            error,
        })?;
        commits.push(commit);
    }
    if let Some(setter) = LOG_FILTER.get() {
        // Checked here, applied with the rest: a bad filter refuses the whole reload.
        let level = next.settings.log.level.clone();
        tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| {
            Refusal::Invalid(ConfigError::Invalid {
                key: "log.level".into(),
                message: e.to_string(),
            })
        })?;
        commits.push(Box::new(move || {
            if let Err(e) = setter(&level) {
                tracing::warn!(error = %e, "log.level not applied");
            }
        }));
    }
    Ok(commits)
}

fn set_config_info(old: Option<&str>, new: &str) {
    if let Some(old) = old.filter(|o| *o != new) {
        let _ = METRICS.config_info.remove_label_values(&[old]);
    }
    METRICS.config_info.with_label_values(&[new]).set(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_match_whole_keys_and_their_parts() {
        assert!(is_live("cache.routes"));
        assert!(is_live("cache.routes[0].ttl"));
        assert!(is_live("rate_limit.tiers"));
        assert!(!is_live("cache.max_memory"));
        assert!(!is_live("listen.proxy"));
        assert!(!is_live("server.threads"));
        assert!(!is_live("cache.routes_extra"));
        assert!(!is_live("edge.key_id_secret"));
    }

    #[test]
    fn every_live_key_exists_in_the_embedded_default_or_is_optional() {
        let table: toml::Table = crate::config::EMBEDDED_DEFAULT.parse().unwrap();
        for key in LIVE_KEYS {
            let Some((section, k)) = key.split_once('.') else {
                // A whole section; `[tls]` is optional, so absent from the embedded default.
                assert!(
                    table.contains_key(*key) || *key == "tls",
                    "{key} is not a config section"
                );
                continue;
            };
            let known = table
                .get(section)
                .and_then(|s| s.as_table())
                .is_some_and(|s| s.contains_key(k));
            assert!(
                known
                    || [
                        "edge.api_version",
                        "edge.api_key",
                        "edge.api_key_file",
                        "admin.token",
                        "admin.token_file"
                    ]
                    .contains(key),
                "{key} is not a config key"
            );
        }
    }
}
