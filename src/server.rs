//! Builds and runs the Pingora server from validated [`Settings`]: the proxy service with the
//! [`Gateway`], the admin service, per-instance pid file and upgrade socket, a fail-fast check
//! of the listen ports (Pingora alone retries a busy port for 30 s and then lives on listening on
//! nothing), and graceful shutdown: SIGTERM stops accepting, in-flight requests finish, and the
//! process exits 0 as soon as none is left (or when `server.grace_period` runs out).
//!
//! Background work runs as Pingora background services that stop with the server: nothing
//! polls, and an idle gateway has no timers of its own.

use std::net::{SocketAddr, TcpListener};
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
use crate::config::Settings;
use crate::ctx::InFlight;
use crate::gateway::Gateway;
use crate::ratelimit::RateLimiter;
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
/// listening sockets to a new process (zero-downtime upgrade).
pub struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: no new connections; finishing in-flight requests");
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
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
}

impl Instance {
    /// The cache this instance serves from (tests age its entries instead of sleeping).
    pub fn cache(&self) -> &'static Cache {
        self.cache
    }

    /// Runs until `signal` says stop.
    pub fn run(self, signal: Box<dyn ShutdownSignalWatch>) {
        self.server.run(RunArgs {
            shutdown_signal: signal,
        });
    }
}

/// Builds the gateway: the proxy service with the [`Gateway`], the admin service, and the
/// background services (readiness, drain, fleet invalidation), all stopping on the server's
/// shutdown.
pub fn build(settings: Settings) -> anyhow::Result<Instance> {
    let settings = Arc::new(settings);
    check_ports(&[
        ("listen.proxy", settings.listen.proxy),
        ("listen.admin", settings.listen.admin),
    ])?;
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
        work_stealing: settings.server.work_stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    if settings.edge.key_id_secret_generated {
        tracing::warn!("edge.key_id_secret is not set: key ids are random for this process (tiers by key id will not match)");
    }
    // Storage hooks take `&'static self`: the cache lives as long as the process.
    let mut cache = Cache::new(&settings.cache, &settings.upstream)?;
    let fleet_rx = if settings.redis.invalidation && settings.cache.enabled {
        let (publisher, rx) = crate::cache::fleet::channel();
        cache.set_fleet(publisher);
        Some(rx)
    } else {
        None
    };
    let cache: &'static Cache = Box::leak(Box::new(cache));
    if let Some(rx) = fleet_rx {
        server.add_service(background_service(
            "fleet invalidation",
            crate::cache::fleet::Link::new(&settings.redis, cache, rx)?,
        ));
    }
    let limiter = if settings.rate_limit.enabled {
        Some(RateLimiter::new(&settings.rate_limit, &settings.redis)?)
    } else {
        None
    };
    let upstream = Upstream::start(settings.upstream.clone());
    let in_flight = InFlight::default();
    let gateway = Gateway::new(
        settings.clone(),
        cache,
        limiter,
        upstream.clone(),
        in_flight.clone(),
    );

    // The proxy service: the hit path's connection loop in front of pingora-proxy.
    let mut proxy = crate::hitpath::service(&server.configuration, gateway, "raster-edge proxy");
    proxy.add_listener(crate::hitpath::tcp_listener(
        &settings.listen.proxy.to_string(),
    ));

    let ready = Arc::new(AtomicBool::new(false));
    let mut admin_service = Service::new(
        "raster-edge admin".to_string(),
        Admin::new(settings.admin.token.clone(), cache, ready.clone())
            .with_upstream(upstream)
            .with_settings(settings.clone()),
    );
    admin_service.add_tcp(&settings.listen.admin.to_string());

    server.add_service(proxy);
    server.add_service(admin_service);
    server.add_service(background_service("drain", Drain { in_flight }));
    server.add_service(background_service(
        "readiness",
        admin::Readiness::new(settings.listen.proxy, ready),
    ));
    tracing::info!(
        proxy = %settings.listen.proxy,
        admin = %settings.listen.admin,
        upstream = %settings.upstream.url,
        "raster-edge starting"
    );
    Ok(Instance { server, cache })
}

/// Runs the gateway until a signal tells it to stop.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    build(settings)?.run(Box::new(Signals));
    Ok(())
}
