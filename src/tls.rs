//! TLS termination: the certificates the proxy listener presents, chosen by SNI, checked when
//! loaded and swapped in place when their files change.
//!
//! Pingora's rustls listener takes either one certificate pair (loaded once, and a bad file
//! panics) or a `ResolvesServerCert`. [`Certificates`] is that resolver: it holds the loaded set
//! behind an [`ArcSwap`], so a reload replaces it for the next handshake while every
//! established connection keeps the session it negotiated (nothing is dropped). A set that
//! fails to load — unreadable file, no certificate, a key that does not match, an expired or
//! not yet valid leaf, a server name the certificate does not cover — never replaces the one
//! in service: the error is logged, counted in `raster_edge_tls_reloads_total{result="error"}`,
//! and at start (and in `check-config`) it names the config key at fault.
//!
//! Reloads come from [`Watcher`] (inotify on the certificates' directories through the
//! `notify` crate: an idle gateway does not poll; the directories are watched, not the files,
//! so an editor's rename, `cp`, cert-manager and Kubernetes' `..data` symlink swap are all
//! seen) and from [`Certificates::reload`], which the configuration reload calls.
//!
//! Protocol choices (rustls via Pingora): TLS 1.3 and 1.2 only, ring's default cipher suites
//! (AEAD only, forward secrecy only), ALPN `h2` then `http/1.1`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{CertFiles, SecretFiles, TlsSettings, UnknownSni};
use crate::metrics::{SniResult, TlsReloadResult, TLS_METRICS};

/// Why a certificate pair was refused; the message starts with the config key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct CertError {
    /// `tls.cert_file`, `tls.certificates[1].key_file`…
    pub key: String,
    pub message: String,
}

fn err(key: String, message: impl Into<String>) -> CertError {
    CertError {
        key,
        message: message.into(),
    }
}

/// What was loaded from one pair of files (for logs and the expiry gauge).
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The config key (`tls`, `tls.certificates[0]`).
    pub key: String,
    /// The leaf's subject alternative DNS names.
    pub dns_names: Vec<String>,
    /// The leaf's notAfter, seconds since the epoch.
    pub not_after: i64,
}

/// One loaded, consistent set: what a handshake chooses from.
struct Loaded {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    info: Vec<CertInfo>,
}

/// The proxy listener's certificates (a rustls `ResolvesServerCert`).
pub struct Certificates {
    settings: Mutex<TlsSettings>,
    loaded: ArcSwap<Loaded>,
    unknown_sni: ArcSwap<UnknownSni>,
    /// Woken when the watched files may have moved (a reload with new settings).
    files_changed: tokio::sync::Notify,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("certificates", &self.loaded.load().info)
            .finish()
    }
}

impl Certificates {
    /// Loads and checks every certificate of `settings`; the first problem is the error.
    pub fn load(settings: &TlsSettings) -> Result<Arc<Self>, CertError> {
        let loaded = load_set(settings)?;
        publish(&loaded.info);
        Ok(Arc::new(Self {
            settings: Mutex::new(settings.clone()),
            loaded: ArcSwap::from_pointee(loaded),
            unknown_sni: ArcSwap::from_pointee(settings.unknown_sni),
            files_changed: tokio::sync::Notify::new(),
        }))
    }

    /// Reads the certificate files again and, if every one is good, serves them from the next
    /// handshake on; otherwise keeps the certificates in service. Logged and counted either
    /// way. Connections already established are not touched.
    pub fn reload(&self) -> Result<(), CertError> {
        let settings = self.settings.lock().clone();
        self.swap(&settings)
    }

    /// [`Certificates::reload`] with new settings (a configuration reload that changed
    /// `[tls]`): on success the new files are served and watched; on failure nothing changes.
    pub fn reload_from(&self, settings: &TlsSettings) -> Result<(), CertError> {
        self.swap(settings)?;
        *self.settings.lock() = settings.clone();
        self.unknown_sni.store(Arc::new(settings.unknown_sni));
        self.files_changed.notify_one();
        Ok(())
    }

    fn swap(&self, settings: &TlsSettings) -> Result<(), CertError> {
        match load_set(settings) {
            Ok(loaded) => {
                for c in &loaded.info {
                    tracing::info!(certificate = %c.key, names = ?c.dns_names, not_after = c.not_after, "TLS certificate loaded");
                }
                publish(&loaded.info);
                self.loaded.store(Arc::new(loaded));
                TLS_METRICS
                    .reloads
                    .with_label_values(&[TlsReloadResult::Ok.as_str()])
                    .inc();
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload refused; the certificates in service are kept");
                TLS_METRICS
                    .reloads
                    .with_label_values(&[TlsReloadResult::Error.as_str()])
                    .inc();
                Err(e)
            }
        }
    }

    /// What is in service now.
    pub fn info(&self) -> Vec<CertInfo> {
        self.loaded.load().info.clone()
    }

    /// The directories holding the certificate files, and the file names in each.
    fn watch_set(&self) -> HashMap<PathBuf, HashSet<std::ffi::OsString>> {
        let settings = self.settings.lock();
        let mut dirs: HashMap<PathBuf, HashSet<std::ffi::OsString>> = HashMap::new();
        for files in settings.all() {
            for path in [&files.cert_file, &files.key_file] {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                if let Some(name) = path.file_name() {
                    dirs.entry(dir).or_default().insert(name.to_os_string());
                }
            }
        }
        dirs
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.load();
        let Some(name) = hello.server_name() else {
            // No SNI (a client that connects by IP address): nothing to mismatch.
            TLS_METRICS.sni(SniResult::None);
            return Some(loaded.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(c) = loaded.exact.get(&name) {
            TLS_METRICS.sni(SniResult::Matched);
            return Some(c.clone());
        }
        if let Some(c) = name
            .split_once('.')
            .and_then(|(_, parent)| loaded.wildcard.get(parent))
        {
            TLS_METRICS.sni(SniResult::Matched);
            return Some(c.clone());
        }
        match **self.unknown_sni.load() {
            UnknownSni::Default => {
                TLS_METRICS.sni(SniResult::Default);
                Some(loaded.default.clone())
            }
            UnknownSni::Refuse => {
                TLS_METRICS.sni(SniResult::Refused);
                None
            }
        }
    }
}

/// Sets the expiry gauge of every certificate in service.
fn publish(info: &[CertInfo]) {
    TLS_METRICS.expiry.reset();
    for c in info {
        TLS_METRICS
            .expiry
            .with_label_values(&[&c.key])
            .set(c.not_after);
    }
}

fn provider() -> Arc<CryptoProvider> {
    // The same provider Pingora installs for its listeners.
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn load_set(settings: &TlsSettings) -> Result<Loaded, CertError> {
    let provider = provider();
    let now = unix_now();
    let (default, info) = load_pair(&settings.default, &provider, now)?;
    let mut loaded = Loaded {
        default: Arc::new(default),
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        info: vec![info],
    };
    for c in &settings.certificates {
        let (ck, info) = load_pair(&c.files, &provider, now)?;
        for name in &c.server_names {
            if !covers(&info.dns_names, name) {
                return Err(err(
                    format!("{}.server_names", c.files.key),
                    format!(
                        "{name:?} is not among the names of {} ({})",
                        c.files.cert_file.display(),
                        info.dns_names.join(", ")
                    ),
                ));
            }
        }
        let ck = Arc::new(ck);
        for name in &c.server_names {
            match name.strip_prefix("*.") {
                Some(parent) => loaded.wildcard.insert(parent.to_string(), ck.clone()),
                None => loaded.exact.insert(name.clone(), ck.clone()),
            };
        }
        loaded.info.push(info);
    }
    Ok(loaded)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether a certificate for `dns_names` is valid for `name` (RFC 6125: a wildcard stands for
/// exactly one leftmost label). A wildcard server name needs the same wildcard.
fn covers(dns_names: &[String], name: &str) -> bool {
    dns_names.iter().any(|san| {
        let san = san.to_ascii_lowercase();
        san == name
            || san.strip_prefix("*.").is_some_and(|parent| {
                name.split_once('.')
                    .is_some_and(|(label, rest)| label != "*" && rest == parent)
            })
    })
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| {
        err(
            key.to_string(),
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

/// Loads one chain and key and checks them together.
fn load_pair(
    files: &CertFiles,
    provider: &CryptoProvider,
    now: i64,
) -> Result<(CertifiedKey, CertInfo), CertError> {
    let cert_key = format!("{}.cert_file", files.key);
    let key_key = format!("{}.key_file", files.key);
    let pem = read(&cert_key, &files.cert_file)?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            err(
                cert_key.clone(),
                format!("{}: bad PEM: {e}", files.cert_file.display()),
            )
        })?;
    let Some(leaf) = chain.first() else {
        return Err(err(
            cert_key,
            format!("no CERTIFICATE in {}", files.cert_file.display()),
        ));
    };
    let (_, x509) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
        err(
            cert_key.clone(),
            format!(
                "{}: the first certificate does not parse: {e}",
                files.cert_file.display()
            ),
        )
    })?;
    let validity = x509.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if not_after < now {
        return Err(err(
            cert_key,
            format!(
                "the certificate in {} expired at {} (notAfter)",
                files.cert_file.display(),
                validity.not_after
            ),
        ));
    }
    if not_before > now {
        return Err(err(
            cert_key,
            format!(
                "the certificate in {} is not valid before {} (notBefore)",
                files.cert_file.display(),
                validity.not_before
            ),
        ));
    }
    let dns_names = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();

    let key_pem = read(&key_key, &files.key_file)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| {
            err(
                key_key.clone(),
                format!("{}: bad PEM: {e}", files.key_file.display()),
            )
        })?
        .ok_or_else(|| {
            err(
                key_key.clone(),
                format!("no PRIVATE KEY in {}", files.key_file.display()),
            )
        })?;
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        err(
            key_key.clone(),
            format!("{}: unsupported private key: {e}", files.key_file.display()),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        err(
            key_key,
            format!(
                "the key in {} does not match the certificate in {}",
                files.key_file.display(),
                files.cert_file.display()
            ),
        )
    })?;
    Ok((
        certified,
        CertInfo {
            key: files.key.clone(),
            dns_names,
            not_after,
        },
    ))
}

/// `check-config`: loads and checks every certificate whose files are readable here; files
/// that are not (the config is checked on another machine, e.g. CI) become notes, as secret
/// files do.
pub fn check(
    settings: &TlsSettings,
    mode: SecretFiles,
    notes: &mut Vec<String>,
) -> Result<(), CertError> {
    let unreadable: Vec<&Path> = settings
        .all()
        .flat_map(|f| [f.cert_file.as_path(), f.key_file.as_path()])
        .filter(|p| std::fs::metadata(p).is_err())
        .collect();
    if mode == SecretFiles::Note && !unreadable.is_empty() {
        for p in unreadable {
            notes.push(format!(
                "TLS file {} cannot be read here: certificates not checked",
                p.display()
            ));
        }
        return Ok(());
    }
    load_set(settings).map(|_| ())
}

/// How long file events are gathered before a reload: a certificate and its key are written
/// one after the other, and a half-written pair would be refused.
const SETTLE: Duration = Duration::from_millis(250);

/// Reloads the certificates when their files change (inotify via `notify`), until shutdown.
pub struct Watcher {
    certs: Arc<Certificates>,
}

impl Watcher {
    pub fn new(certs: Arc<Certificates>) -> Self {
        Self { certs }
    }
}

/// Whether an event in a watched directory concerns a certificate file (or Kubernetes'
/// `..data` symlink swap, which replaces every file of a mounted secret at once).
fn relevant(event: &notify::Event, dirs: &HashMap<PathBuf, HashSet<std::ffi::OsString>>) -> bool {
    if event.kind.is_access() {
        return false;
    }
    event.paths.iter().any(|p| {
        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
            return false;
        };
        dirs.get(dir)
            .is_some_and(|names| names.contains(name) || name.to_string_lossy().starts_with(".."))
    })
}

#[async_trait]
impl BackgroundService for Watcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use notify::Watcher as _;
        loop {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let dirs = self.certs.watch_set();
            let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(event) = res {
                    let _ = tx.send(event);
                }
            });
            let mut watcher = match watcher {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch the TLS certificate files; they reload only on request");
                    return;
                }
            };
            // The directories are watched (absolute, so event paths compare equal).
            let dirs: HashMap<PathBuf, _> = dirs
                .into_iter()
                .map(|(d, names)| (std::fs::canonicalize(&d).unwrap_or(d), names))
                .collect();
            for dir in dirs.keys() {
                if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot watch a TLS certificate directory");
                }
            }
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = self.certs.files_changed.notified() => break,
                    event = rx.recv() => {
                        let Some(event) = event else { return };
                        if !relevant(&event, &dirs) {
                            continue;
                        }
                        // Gather the rest of this change before reading the files.
                        loop {
                            tokio::select! {
                                _ = tokio::time::sleep(SETTLE) => break,
                                more = rx.recv() => if more.is_none() { return },
                            }
                        }
                        tracing::info!("TLS certificate files changed; reloading");
                        let _ = self.certs.reload();
                    }
                }
            }
        }
    }
}

/// A Pingora TLS listener setting with these certificates: TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1.
pub fn listener_settings(
    certs: &Arc<Certificates>,
) -> pingora::Result<pingora::listeners::tls::TlsSettings> {
    let mut tls = pingora::listeners::tls::TlsSettings::intermediate("", "")?;
    tls.set_cert_resolver(certs.clone());
    tls.enable_h2();
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        let sans = vec!["*.example.com".to_string(), "edge.test".to_string()];
        assert!(covers(&sans, "a.example.com"));
        assert!(!covers(&sans, "a.b.example.com"));
        assert!(!covers(&sans, "example.com"));
        assert!(covers(&sans, "edge.test"));
        assert!(!covers(&sans, "other.test"));
    }
}
