//! The `raster-edge` binary: command line, logging, then [`raster_edge::server::run`].

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use raster_edge::config::{self, LogFormat, Overrides, Settings};
use raster_edge::edge::KeyIdHasher;

// The request path allocates small, short-lived objects (headers, keys, log fields); glibc's
// malloc/free were ~10% of CPU on cache hits, mimalloc roughly halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A caching, rate-limiting gateway for the Raster REST API.
#[derive(Parser, Debug)]
#[command(name = "raster-edge", version, about)]
struct Cli {
    /// TOML config file (default: the embedded config/raster-edge.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Gateway listen address (overrides listen.proxy).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin listen address (overrides listen.admin).
    #[arg(long = "admin-listen", value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Upstream origin URL (overrides upstream.url).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate a config file without starting; exits non-zero naming the offending key.
    CheckConfig { file: PathBuf },
    /// Print the key id of an API key under the configured key_id_secret (for rate-limit
    /// tiers). Reads the key from standard input when not given, keeping it out of shell history.
    KeyId { key: Option<String> },
}

/// Crates whose log lines may carry request headers below `info`.
const PINGORA_TARGETS: &[&str] = &[
    "pingora",
    "pingora_core",
    "pingora_proxy",
    "pingora_cache",
    "pingora_http",
    "pingora_pool",
];

fn init_logging(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RASTER_EDGE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&settings.log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Pingora's debug and trace lines print whole request headers, `Authorization` included
    // (pingora-proxy's "Sending header to upstream"), so they stay off whatever the level:
    // API keys are never logged (docs/SECURITY.md, tests/secrets.rs).
    let filter =
        PINGORA_TARGETS
            .iter()
            .fold(filter, |f, target| match format!("{target}=info").parse() {
                Ok(d) => f.add_directive(d),
                Err(_) => f,
            });
    use std::io::IsTerminal;
    // Log lines are written by a background thread: one write syscall per access-log line on
    // the request path would cost more than serving a cache hit.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    raster_edge::server::keep_log_guard(guard);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let result = match settings.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("raster-edge: logging not initialised: {e}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            raster_edge::server::flush_logs();
            eprintln!("raster-edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: cli.listen.clone(),
        admin_listen: cli.admin_listen.clone(),
        upstream: cli.upstream.clone(),
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig { file } => {
            for note in config::check_file(&file)? {
                eprintln!("note: {note}");
            }
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::KeyId { key } => {
            let settings = config::load(cli.config.as_deref(), &overrides)?;
            if settings.edge.key_id_secret_generated {
                anyhow::bail!("no edge.key_id_secret (or _file, or RASTER_EDGE_EDGE_KEY_ID_SECRET) is configured: key ids would be random");
            }
            let key = match key {
                Some(k) => k,
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("read the key from stdin")?;
                    s.trim().to_string()
                }
            };
            anyhow::ensure!(!key.is_empty(), "empty key");
            println!(
                "{}",
                KeyIdHasher::new(&settings.edge.key_id_secret).key_id(&key)
            );
            Ok(())
        }
        Command::Run => {
            let settings = config::load(cli.config.as_deref(), &overrides)?;
            init_logging(&settings);
            let result = raster_edge::server::run(settings);
            raster_edge::server::flush_logs();
            result
        }
    }
}
