//! `raster-mock`: a Raster REST API simulator used as the origin in tests and benchmarks.
//!
//! It serves the routes of `raster-api.md` from a deterministic fixture (organization
//! `monogram-labs`, libraries `barcelona` with 250 assets and `lisbon` with 40, keys
//! `demo-read`, `demo-write`, `demo-barcelona`), with Raster's envelope, error codes and
//! response shapes (OpenAPI of raster-app/raster-cli). Writes change later reads. Every
//! response carries `Vary: Api-Version`; GET 200s carry a strong `ETag` and a matching
//! `If-None-Match` gets a 304. Control endpoints (no auth, not counted):
//! `GET /__mock/stats`, `POST /__mock/reset`, `GET|PUT /__mock/config`.
//!
//! Layout: [`fixtures`] (the built-in data) → [`state`] (data model) → [`routes`] (routing,
//! checks, handlers; transport-free) → [`control`] (runtime config and counters) →
//! [`server`] ([`MockService`] and the Pingora glue) → [`run`].

pub mod control;
pub mod fixtures;
pub mod routes;
pub mod server;
pub mod state;

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Context;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

pub use control::{MockConfig, Stats};
pub use server::{etag_of, MockApp, MockService};

/// Default listen address of `raster-mock`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

/// Startup options (the `raster-mock` flags).
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// `host:port` to listen on.
    pub listen: String,
    /// Delay before answering each API request.
    pub latency_ms: u64,
    /// `Cache-Control` value for API responses (none by default, like the real API).
    pub cache_control: Option<String>,
    /// Pingora worker threads.
    pub threads: usize,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            listen: DEFAULT_LISTEN.to_string(),
            latency_ms: 0,
            cache_control: None,
            threads: 1,
        }
    }
}

/// Fails with a clear message when `addr` cannot be bound (Pingora alone would retry for
/// about 30 s and then keep running without a listener).
pub fn check_listen(addr: &str) -> anyhow::Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    drop(l);
    Ok(())
}

/// Runs the mock until SIGTERM/SIGINT. Blocking; call outside any async runtime.
pub fn run(opts: MockOptions) -> anyhow::Result<()> {
    check_listen(&opts.listen)?;
    let tmp = std::env::temp_dir();
    let id = format!("raster-mock-{}", std::process::id());
    let conf = ServerConf {
        threads: opts.threads.max(1),
        pid_file: tmp.join(format!("{id}.pid")).to_string_lossy().into_owned(),
        upgrade_sock: tmp
            .join(format!("{id}.sock"))
            .to_string_lossy()
            .into_owned(),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let service = Arc::new(MockService::new(&opts));
    let mut svc = Service::new("raster-mock".to_string(), MockApp(service));
    svc.add_tcp(&opts.listen);
    server.add_service(svc);
    tracing::info!(listen = %opts.listen, "raster-mock listening");
    server.run(RunArgs::default());
    Ok(())
}
