//! Builds and runs the Pingora server from validated [`Settings`]: the proxy service with the
//! [`Gateway`], the admin service, per-instance pid file and upgrade socket, a fail-fast check
//! of the listen ports (Pingora alone retries a busy port for 30 s and then lives on listening on
//! nothing), and graceful shutdown: SIGTERM stops accepting, in-flight requests finish, and the
//! process exits 0 as soon as none is left (or when `server.grace_period` runs out).
//!
//! Background work runs as Pingora background services that stop with the server: nothing
//! polls, and an idle gateway has no timers of its own.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::{self, Admin};
use crate::cache::Cache;
use crate::config::effective::Effective;
use crate::config::{Overrides, Settings};
use crate::ctx::InFlight;
use crate::gateway::Gateway;
use crate::handover::Handover;
use crate::live::{Live, LiveSettings};
use crate::ratelimit::{Limits, RateLimiter};
use crate::reload::{self, ReloadHook, Reloader, Trigger};
use crate::upstream::Upstream;

static LOG_GUARD: parking_lot::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> =
    parking_lot::Mutex::new(None);

/// Keeps the background log writer alive until [`flush_logs`].
pub fn keep_log_guard(guard: tracing_appender::non_blocking::WorkerGuard) {
    *LOG_GUARD.lock() = Some(guard);
}

/// Writes out every buffered log line (before any exit, including the drained-SIGTERM one).
pub fn flush_logs() {
    drop(LOG_GUARD.lock().take());
}

/// Binds each address once to prove it is free, naming the one that is not.
pub fn check_ports(addrs: &[(&str, SocketAddr)]) -> anyhow::Result<()> {
    for (what, addr) in addrs {
        TcpListener::bind(addr).with_context(|| {
            format!("cannot listen on {addr} ({what}): is another process using it?")
        })?;
    }
    Ok(())
}

/// SIGTERM: graceful terminate (and start draining); SIGINT: fast stop; SIGQUIT: hand the
/// listening sockets to a new process (zero-downtime upgrade); SIGHUP: reload the config file
/// (and keep running whatever the outcome).
pub struct Signals {
    reloader: Option<Arc<Reloader>>,
}

impl Signals {
    pub fn new(reloader: Option<Arc<Reloader>>) -> Self {
        Self { reloader }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: no new connections; finishing in-flight requests");
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = quit.recv() => {
                    tracing::info!("SIGQUIT: handing the listeners to the new process; every response now closes its connection");
                    crate::handover::start();
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = hup.recv() => match &self.reloader {
                    Some(r) => {
                        let r = r.clone();
                        // The outcome is logged and counted by the reloader itself.
                        let _ = tokio::task::spawn_blocking(move || r.reload(Trigger::Sighup)).await;
                    }
                    None => tracing::warn!("SIGHUP: this gateway has no reloader; ignored"),
                },
            }
        }
    }
}

/// After a graceful shutdown starts (SIGTERM, or SIGQUIT once the listeners are handed over),
/// exits as soon as no request is in flight. Pingora itself sleeps the whole grace period
/// before stopping; its own timer still bounds the wait if requests never finish.
struct Drain {
    in_flight: InFlight,
}

/// How long the gateway must stay idle before a drained exit: a keep-alive request whose header
/// is still being read has no context yet, and enters within this.
const DRAIN_SETTLE: Duration = Duration::from_millis(50);

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let started = Instant::now();
        if crate::handover::handing_over() {
            // Connections accepted just before the listeners closed still get their request
            // read and answered (see `handover`): no exit before that.
            tokio::time::sleep(crate::handover::SETTLE + DRAIN_SETTLE).await;
        }
        loop {
            self.in_flight.idle().await;
            tokio::time::sleep(DRAIN_SETTLE).await;
            if self.in_flight.count() == 0 {
                break;
            }
        }
        tracing::info!(
            after_ms = started.elapsed().as_millis() as u64,
            "drained; exiting"
        );
        flush_logs();
        std::process::exit(0);
    }
}

/// A gateway built from settings, ready to run: the Pingora server with its services, and the
/// shared state tests and tools reach into.
pub struct Instance {
    server: Server,
    cache: &'static Cache,
    certificates: Option<Arc<crate::tls::Certificates>>,
    reloader: Arc<Reloader>,
}

/// How the process was started, beyond the settings: what a reload reads again, and whether
/// this process takes its listeners over from a running one.
#[derive(Debug, Clone, Default)]
pub struct Boot {
    /// The `--config` file (`None`: the embedded default, nothing to reload).
    pub config_path: Option<PathBuf>,
    /// Command-line overrides, applied again on every reload.
    pub overrides: Overrides,
    /// `--upgrade`: receive the listening sockets from the process that gets SIGQUIT (through
    /// the upgrade socket in `server.runtime_dir`) instead of binding them.
    pub upgrade: bool,
}

impl Instance {
    /// The proxy listener's certificates, when TLS is on: the configuration reload (SIGHUP,
    /// `POST /admin/reload`) calls [`crate::tls::Certificates::reload`] on them.
    pub fn certificates(&self) -> Option<Arc<crate::tls::Certificates>> {
        self.certificates.clone()
    }

    /// The cache this instance serves from (tests age its entries instead of sleeping).
    pub fn cache(&self) -> &'static Cache {
        self.cache
    }

    /// Reloads the configuration (what SIGHUP and `POST /admin/reload` do).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Runs until `signal` says stop.
    pub fn run(self, signal: Box<dyn ShutdownSignalWatch>) {
        self.server.run(RunArgs {
            shutdown_signal: signal,
        });
    }
}

/// Builds the gateway from settings made in process (no file to reload, no upgrade).
pub fn build(settings: Settings) -> anyhow::Result<Instance> {
    build_with(Effective::from_settings(settings), Boot::default())
}

/// Builds the gateway: the proxy service with the [`Gateway`], the admin service, and the
/// background services (readiness, drain, fleet invalidation), all stopping on the server's
/// shutdown.
pub fn build_with(effective: Effective, boot: Boot) -> anyhow::Result<Instance> {
    let settings = Arc::new(effective.settings.clone());
    if !boot.upgrade {
        // With --upgrade the old process holds these ports until it hands them over.
        let mut ports = vec![("listen.admin", settings.listen.admin)];
        ports.extend(settings.listen.proxy.tcp().map(|a| ("listen.proxy", a)));
        ports.extend(settings.listen.plain.map(|a| ("listen.plain", a)));
        check_ports(&ports)?;
    }
    // Certificates are checked before anything starts: a bad one names its key and stops here.
    let certificates = match &settings.tls {
        Some(tls) => Some(crate::tls::Certificates::load(tls)?),
        None => None,
    };
    let dir = &settings.server.runtime_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create runtime dir {}", dir.display()))?;

    let conf = ServerConf {
        threads: settings.server.threads,
        pid_file: dir.join("raster-edge.pid").display().to_string(),
        upgrade_sock: dir.join("raster-edge-upgrade.sock").display().to_string(),
        grace_period_seconds: Some(settings.server.grace_period.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        ca_file: settings
            .upstream
            .ca_file
            .as_ref()
            .map(|p| p.display().to_string()),
        upstream_keepalive_pool_size: 256,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: boot.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    if settings.edge.key_id_secret_generated {
        tracing::warn!("edge.key_id_secret is not set: key ids are random for this process (tiers by key id will not match)");
    }
    // Storage hooks take `&'static self`: the cache lives as long as the process.
    let mut cache = Cache::new(&settings.cache, &settings.upstream, &settings.compression)?;
    let fleet_rx = if settings.redis.invalidation && settings.cache.enabled {
        let (publisher, rx) = crate::cache::fleet::channel();
        let state = std::sync::Arc::new(crate::cache::fleet::FleetState::new(
            settings.redis.invalidation_outage,
        ));
        cache.set_fleet(publisher, state.clone());
        Some((rx, state))
    } else {
        None
    };
    if settings.cache.enabled && settings.cache.shared.enabled {
        if settings.edge.key_id_secret_generated
            && settings.cache.share == crate::config::Share::PerKey
        {
            tracing::warn!("cache.shared is on but edge.key_id_secret is not set: per-key entries are keyed by this process's random key ids, so no other instance will find them");
        }
        // A lease lives as long as the slowest allowed origin fetch; waiters give up at the
        // lock timeout, as local coalesced requests do.
        let lease = settings.upstream.connect_timeout + settings.upstream.read_timeout;
        let tier: &'static crate::cache::shared::SharedTier =
            Box::leak(Box::new(crate::cache::shared::SharedTier::new(
                &settings.cache.shared,
                &settings.redis,
                lease.max(std::time::Duration::from_millis(100)),
                settings.cache.lock_timeout,
            )?));
        cache.storage().attach_shared(tier);
    }
    let cache: &'static Cache = Box::leak(Box::new(cache));
    if let Some((rx, state)) = fleet_rx {
        server.add_service(background_service(
            "fleet invalidation",
            crate::cache::fleet::Link::new(&settings.redis, cache, state, rx)?,
        ));
    }
    let limiter = if settings.rate_limit.enabled {
        Some(Arc::new(RateLimiter::new(
            &settings.rate_limit,
            &settings.redis,
        )?))
    } else {
        None
    };
    let upstream = Upstream::start(settings.upstream.clone());
    let in_flight = InFlight::default();
    let live = Live::new(LiveSettings::new(&effective));

    // What a reload updates besides the request snapshot: each is prepared against the new
    // settings, and committed only when all of them (and the snapshot) prepared.
    let mut hooks: Vec<Box<dyn ReloadHook>> = Vec::new();
    if let Some(limiter) = &limiter {
        let limiter = limiter.clone();
        hooks.push(reload::hook("rate_limit", move |next| {
            let limits = Limits::new(&next.rate_limit)?;
            let limiter = limiter.clone();
            Ok(Box::new(move || limiter.set_limits(limits)))
        }));
    }
    // Certificates: checked against the new `[tls]` in prepare, swapped in commit (the files
    // are read again even when the paths did not change, so SIGHUP also picks up renewals).
    // TLS cannot be switched on or off live: the listener would have to change.
    let tls_certs = certificates.clone();
    hooks.push(reload::hook("tls", move |next| {
        match (&tls_certs, &next.tls) {
            (None, None) => Ok(Box::new(|| ())),
            (Some(certs), Some(tls)) => {
                crate::tls::Certificates::load(tls)?;
                let (certs, tls) = (certs.clone(), tls.clone());
                Ok(Box::new(move || {
                    if let Err(e) = certs.reload_from(&tls) {
                        tracing::error!(error = %e, "tls: certificates checked at reload failed to swap in");
                    }
                }))
            }
            _ => anyhow::bail!(
                "tls: TLS cannot be switched on or off by a reload; restart or upgrade the binary"
            ),
        }
    }));
    let reloader = Arc::new(Reloader::new(
        boot.config_path.clone(),
        boot.overrides.clone(),
        effective,
        live.clone(),
        hooks,
    ));

    let gateway = Gateway::new(
        settings.clone(),
        live.clone(),
        cache,
        limiter,
        upstream.clone(),
        in_flight.clone(),
    );

    let mut http = pingora::proxy::http_proxy(&server.configuration, gateway);
    crate::listeners::configure(&mut http, &settings);
    let mut proxy = Service::new("raster-edge proxy".to_string(), Handover::new(http));
    crate::listeners::add(&mut proxy, &settings, certificates.as_ref())?;
    if let Some(certs) = certificates
        .as_ref()
        .filter(|_| settings.tls.as_ref().is_some_and(|t| t.watch))
    {
        server.add_service(background_service(
            "tls certificate watcher",
            crate::tls::Watcher::new(certs.clone()),
        ));
    }

    let ready = Arc::new(AtomicBool::new(false));
    let mut admin_service = Service::new(
        "raster-edge admin".to_string(),
        Admin::new(live, cache, ready.clone())
            .with_upstream(upstream)
            .with_reloader(reloader.clone()),
    );
    admin_service.add_tcp(&settings.listen.admin.to_string());

    server.add_service(proxy);
    server.add_service(admin_service);
    server.add_service(background_service("drain", Drain { in_flight }));
    server.add_service(background_service(
        "readiness",
        admin::Readiness::new(settings.listen.proxy.clone(), ready),
    ));
    tracing::info!(
        proxy = %settings.listen.proxy,
        admin = %settings.listen.admin,
        tls = settings.tls.is_some(),
        h2c = settings.listen.h2c,
        upstream = %settings.upstream.url,
        "raster-edge starting"
    );
    Ok(Instance {
        server,
        cache,
        certificates,
        reloader,
    })
}

/// Runs the gateway until a signal tells it to stop.
pub fn run(effective: Effective, boot: Boot) -> anyhow::Result<()> {
    let instance = build_with(effective, boot)?;
    let signals = Signals::new(Some(instance.reloader.clone()));
    instance.run(Box::new(signals));
    Ok(())
}
