//! The `raster-edge` binary: command line, logging, then [`raster_edge::server::run`].

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use raster_edge::config::{self, LogFormat, Overrides, Settings};
use raster_edge::edge::KeyIdHasher;
use raster_edge::warm;

// The request path allocates small, short-lived objects (headers, keys, log fields); glibc's
// malloc/free were ~10% of CPU on cache hits, mimalloc roughly halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--version`: the package version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RASTER_BUILD_COMMIT"),
    ")"
);

/// A caching, rate-limiting gateway for the Raster REST API.
#[derive(Parser, Debug)]
#[command(name = "raster-edge", version = VERSION, about)]
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
    /// Take the listening sockets over from the running gateway (send it SIGQUIT within 5 s);
    /// the binary upgrade, docs/OPERATIONS.md.
    #[arg(long, short = 'u')]
    upgrade: bool,
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
    /// Print the effective configuration (embedded default, --config file, RASTER_EDGE_*
    /// environment and flags applied; secrets redacted) and its hash.
    PrintConfig,
    /// Warm a cold cache: GET every path in a list through the gateway with one API key (from
    /// RASTER_API_KEY or --key-file; none when the sidecar pins edge.api_key), so the entries
    /// are stored under that key's id. Exits non-zero when any request fails.
    Warm(warm::Args),
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

/// Pingora's debug and trace lines print whole request headers, `Authorization` included
/// (pingora-proxy's "Sending header to upstream"), so they stay off whatever the level, at
/// start and after a reload: API keys are never logged (docs/SECURITY.md, tests/secrets.rs).
fn capped(filter: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    PINGORA_TARGETS
        .iter()
        .fold(filter, |f, target| match format!("{target}=info").parse() {
            Ok(d) => f.add_directive(d),
            Err(_) => f,
        })
}

fn init_logging(settings: &Settings) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{reload, EnvFilter};
    let from_env = std::env::var("RASTER_EDGE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok());
    let pinned_by_env = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&settings.log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let filter = capped(filter);
    // The filter sits behind a reload handle: a config reload sets `log.level` live.
    let (filter, handle) = reload::Layer::new(filter);
    use std::io::IsTerminal;
    // Log lines are written by a background thread: one write syscall per access-log line on
    // the request path would cost more than serving a cache hit.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    raster_edge::server::keep_log_guard(guard);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match settings.log.format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    if let Err(e) = result {
        eprintln!("raster-edge: logging not initialised: {e}");
        return;
    }
    raster_edge::reload::set_log_filter_setter(Box::new(move |level| {
        if pinned_by_env {
            // RASTER_EDGE_LOG wins over the file, at start and on reload alike.
            return Ok(());
        }
        let filter = capped(EnvFilter::try_new(level).map_err(|e| e.to_string())?);
        handle.reload(filter).map_err(|e| e.to_string())
    }));
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
            let (settings, mut notes) = config::check_file_settings(&file)?;
            if let Some(tls) = &settings.tls {
                raster_edge::tls::check(tls, config::SecretFiles::Note, &mut notes)?;
            }
            for note in notes {
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
        Command::PrintConfig => {
            let effective = config::effective::load(cli.config.as_deref(), &overrides)?;
            let from = cli
                .config
                .as_deref()
                .map_or("the embedded default".to_string(), |p| {
                    p.display().to_string()
                });
            println!(
                "# raster-edge {VERSION}: effective configuration from {from}, RASTER_EDGE_* \
                 environment and flags applied; secrets redacted\n# hash {}\n",
                effective.hash()
            );
            print!("{}", effective.to_toml());
            Ok(())
        }
        Command::Warm(args) => {
            let settings = config::load(cli.config.as_deref(), &overrides)?;
            warm::run(args, &settings)
        }
        Command::Run => {
            let effective = config::effective::load(cli.config.as_deref(), &overrides)?;
            init_logging(&effective.settings);
            tracing::info!(version = VERSION, config = %effective.hash(), "raster-edge");
            let boot = raster_edge::server::Boot {
                config_path: cli.config.clone(),
                overrides,
                upgrade: cli.upgrade,
            };
            let result = raster_edge::server::run(effective, boot);
            raster_edge::server::flush_logs();
            result
        }
    }
}
