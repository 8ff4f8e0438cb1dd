//! The gateway inside the test process: the real Pingora server built by
//! `raster_edge::server::build`, on ephemeral loopback ports, stopped when the handle drops.
//! It serves exactly as the binary does; what it adds is reach into the process — the test
//! holds the cache and ages its entries instead of sleeping through TTLs.
//!
//! Metrics are process-wide, so tests that read `/metrics` use the real binary ([`super::Edge`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use raster_edge::cache::Cache;
use raster_edge::config;

use super::transport::Transport;
use super::{reserve, wait_for_port, Target};

/// Tells the in-process server to stop (a fast shutdown: no drain, no process exit).
struct StopSignal(Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

pub struct InProcess {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The `--config` file of [`InProcess::start_reloadable`]: rewrite it, then [`reload`].
    ///
    /// [`reload`]: InProcess::reload
    pub config: std::path::PathBuf,
    reloader: Arc<raster_edge::reload::Reloader>,
    cache: &'static Cache,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
    transport: Transport,
}

impl InProcess {
    /// Starts a gateway in front of `upstream` with `toml` layered over the embedded default.
    pub fn start(upstream: &str, toml: &str) -> InProcess {
        InProcess::start_over(Transport::Http1, upstream, toml)
    }

    /// [`InProcess::start`] speaking `transport`.
    pub fn start_over(transport: Transport, upstream: &str, toml: &str) -> InProcess {
        let toml = &format!("{}{toml}", transport.toml());
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = config::parse(toml, "test config", &[]).expect("test config parses");
        let (proxy, admin) = (reserve(), reserve());
        file.listen.proxy = proxy.addr().to_string();
        file.listen.admin = admin.addr().to_string();
        file.upstream.url = upstream.to_string();
        file.server.runtime_dir = Some(dir.path().display().to_string());
        let settings = config::validate(file).expect("test config is valid");
        // Held until just before the server is built and binds them.
        let (addr, admin) = (proxy.release(), admin.release());
        let instance = raster_edge::server::build(settings).expect("gateway builds");
        Self::run(
            instance,
            transport,
            addr,
            admin,
            dir,
            std::path::PathBuf::new(),
        )
    }

    /// Like [`InProcess::start`], with `toml` in a file given as `--config` would be, so the
    /// test can rewrite it and reload.
    pub fn start_reloadable(upstream: &str, toml: &str) -> InProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raster-edge.toml");
        std::fs::write(&path, toml).expect("write config");
        let (proxy, admin) = (reserve(), reserve());
        let overrides = config::Overrides {
            listen: Some(proxy.addr().to_string()),
            admin_listen: Some(admin.addr().to_string()),
            upstream: Some(upstream.to_string()),
        };
        let mut effective =
            config::effective::load(Some(&path), &overrides).expect("test config is valid");
        // Only at start: the runtime dir is not part of what a reload compares.
        effective.settings.server.runtime_dir = dir.path().to_path_buf();
        let (addr, admin) = (proxy.release(), admin.release());
        let boot = raster_edge::server::Boot {
            config_path: Some(path.clone()),
            overrides,
            upgrade: false,
        };
        let instance = raster_edge::server::build_with(effective, boot).expect("gateway builds");
        Self::run(instance, Transport::Http1, addr, admin, dir, path)
    }

    /// Reloads the config file, as SIGHUP would.
    pub fn reload(&self) -> raster_edge::reload::Report {
        self.reloader.reload(raster_edge::reload::Trigger::Sighup)
    }

    fn run(
        instance: raster_edge::server::Instance,
        transport: Transport,
        addr: SocketAddr,
        admin: SocketAddr,
        dir: tempfile::TempDir,
        config: std::path::PathBuf,
    ) -> InProcess {
        let cache = instance.cache();
        let reloader = instance.reloader().clone();
        let stop = Arc::new(tokio::sync::Notify::new());
        let signal = StopSignal(stop.clone());
        let thread = std::thread::Builder::new()
            .name("in-process gateway".into())
            .spawn(move || instance.run(Box::new(signal)))
            .expect("spawn the gateway thread");
        assert!(
            wait_for_port(addr, Duration::from_secs(15)),
            "in-process gateway did not listen on {addr}"
        );
        InProcess {
            addr,
            admin,
            config,
            reloader,
            cache,
            stop,
            thread: Some(thread),
            _dir: dir,
            transport,
        }
    }

    /// The gateway's cache (to ask it what it would serve).
    pub fn cache(&self) -> &'static Cache {
        self.cache
    }

    /// Ages every stored response by `by`, as if that much time had passed.
    pub fn age(&self, by: Duration) {
        self.cache.storage().age_entries(by);
    }
}

impl Target for InProcess {
    fn url(&self, path: &str) -> String {
        self.transport.url(self.addr, path)
    }

    fn client(&self) -> reqwest::Client {
        self.transport.client(self.addr)
    }

    fn transport(&self) -> Transport {
        self.transport
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
