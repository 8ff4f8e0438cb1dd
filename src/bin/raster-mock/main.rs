//! `raster-mock`: a Raster REST API simulator used as the origin in tests and benchmarks.
//!
//! It serves Raster's REST routes from a deterministic fixture (organization `monogram-labs`,
//! libraries `barcelona` with 250 assets and `lisbon` with 40, keys `demo-read`, `demo-write`,
//! `demo-barcelona`), with Raster's envelope, error codes and response shapes (OpenAPI of
//! raster-app/raster-cli). Writes change later reads. Every response carries
//! `Vary: Api-Version`; GET 200s carry a strong `ETag` and a matching `If-None-Match` gets a
//! 304. `POST /` is Raster's GraphQL API over the same data ([`graphql`]). With `--gzip` (or
//! `PUT /__mock/config {"gzip": true}`) bodies are gzipped for clients that accept it.
//! Control endpoints (no auth, not counted): `GET /__mock/stats`, `POST /__mock/reset`,
//! `GET|PUT /__mock/config`.
//!
//! It is a binary-only module tree: none of it is linked into the `raster_edge` library.
//!
//! Layout: [`fixtures`] (the built-in data) → [`state`] (data model) → [`routes`] (routing,
//! checks, handlers; transport-free) → [`control`] (runtime config and counters) →
//! [`server`] (`MockService` and its Pingora `ServeHttp` glue) → [`listener`] (the socket we
//! bind ourselves and its accept loop) → [`run`].

mod control;
mod fixtures;
mod graphql;
mod listener;
mod routes;
mod server;
mod state;
mod writes;

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};

use server::{MockApp, MockService};

/// Default listen address of `raster-mock`.
const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

#[derive(Parser, Debug)]
#[command(name = "raster-mock", version, about = "Raster REST API simulator")]
struct Args {
    /// Address to listen on. Port 0 picks a free port; the first stdout line always names the
    /// bound address (`listening on HOST:PORT`).
    #[arg(long, default_value = DEFAULT_LISTEN, env = "RASTER_MOCK_LISTEN")]
    listen: String,
    /// Delay before answering each API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Cache-Control value to put on API responses (none by default).
    #[arg(long)]
    cache_control: Option<String>,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// gzip response bodies for clients whose Accept-Encoding accepts gzip.
    #[arg(long)]
    gzip: bool,
}

/// Startup options (the `raster-mock` flags).
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// `host:port` to listen on (port 0: any free port).
    pub listen: String,
    /// Delay before answering each API request.
    pub latency_ms: u64,
    /// `Cache-Control` value for API responses (none by default, like the real API).
    pub cache_control: Option<String>,
    /// Worker threads.
    pub threads: usize,
    /// gzip bodies for clients that accept it (`--gzip`).
    pub gzip: bool,
}

fn main() {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let opts = MockOptions {
        listen: args.listen,
        latency_ms: args.latency_ms,
        cache_control: args.cache_control,
        threads: args.threads,
        gzip: args.gzip,
    };
    if let Err(e) = run(opts) {
        eprintln!("raster-mock: {e:#}");
        std::process::exit(1);
    }
}

/// Binds the listener, announces it on stdout, then serves until SIGTERM/SIGINT. Blocking; call
/// outside any async runtime.
///
/// The socket is bound here, before Pingora starts, so a busy port fails at once with the
/// address in the message (Pingora's own listeners retry for about 30 s and then keep running
/// without one), and `--listen HOST:0` hands back the port the kernel chose: whoever starts the
/// mock reads it from the first stdout line instead of guessing a free port and racing for it.
fn run(opts: MockOptions) -> anyhow::Result<()> {
    let socket = TcpListener::bind(&opts.listen)
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let bound = socket
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {}", opts.listen))?;

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
    let app = Arc::new(MockApp(Arc::new(MockService::new(&opts))));
    server.add_service(listener::service(socket, app, opts.threads.max(1)));

    // The socket already listens (connections queue in its backlog until the accept loop
    // runs), so the announcement is true the moment it is printed.
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {bound}")
        .and_then(|()| out.flush())
        .context("cannot write the bound address to stdout")?;
    drop(out);
    tracing::info!(listen = %bound, "raster-mock listening");
    server.run(RunArgs::default());
    Ok(())
}
