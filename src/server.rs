//! Builds and runs the Pingora server from validated [`Settings`]: the proxy service with the
//! [`Gateway`], the admin service, per-instance pid file and upgrade socket, a fail-fast check
//! of the listen ports (Pingora alone retries a busy port for 30 s and then lives on listening on
//! nothing), and graceful shutdown: SIGTERM stops accepting, in-flight requests finish, and the
//! process exits 0 as soon as none is left (or when `server.grace_period` runs out).

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;

use crate::admin::{self, Admin};
use crate::cache::Cache;
use crate::config::Settings;
use crate::gateway::{Gateway, InFlight};
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
struct Signals {
    draining: Arc<AtomicBool>,
}

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
                self.draining.store(true, Ordering::Release);
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
        }
    }
}

/// After SIGTERM, exits as soon as no request is in flight. Pingora itself would sleep the whole
/// grace period; it still bounds the wait if requests never finish.
fn exit_when_drained(draining: Arc<AtomicBool>, in_flight: InFlight) {
    let spawned = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            while !draining.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let started = Instant::now();
            // Idle for two consecutive looks: a request being read at the first look has
            // entered by the second.
            let mut idle_looks = 0;
            loop {
                std::thread::sleep(Duration::from_millis(50));
                if in_flight.count() == 0 {
                    idle_looks += 1;
                } else {
                    idle_looks = 0;
                }
                if idle_looks >= 2 {
                    tracing::info!(
                        after_ms = started.elapsed().as_millis() as u64,
                        "drained; exiting"
                    );
                    flush_logs();
                    std::process::exit(0);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the drain thread; shutdown waits the grace period");
    }
}

/// Runs the gateway until it is told to stop.
pub fn run(settings: Settings) -> anyhow::Result<()> {
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
        crate::cache::fleet::start(settings.redis.clone(), cache, rx)?;
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

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "raster-edge proxy",
    );
    proxy.add_tcp(&settings.listen.proxy.to_string());

    let ready = Arc::new(AtomicBool::new(false));
    let mut admin_service = Service::new(
        "raster-edge admin".to_string(),
        Admin::new(settings.admin.token.clone(), cache, ready.clone()).with_upstream(upstream),
    );
    admin_service.add_tcp(&settings.listen.admin.to_string());

    server.add_service(proxy);
    server.add_service(admin_service);

    let draining = Arc::new(AtomicBool::new(false));
    exit_when_drained(draining.clone(), in_flight);
    admin::watch_readiness(settings.listen.proxy, ready);
    tracing::info!(
        proxy = %settings.listen.proxy,
        admin = %settings.listen.admin,
        upstream = %settings.upstream.url,
        "raster-edge starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { draining }),
    });
    Ok(())
}
