//! `raster-mock`: the Raster REST API simulator (see `raster_edge::mock`).

use clap::Parser;
use raster_edge::mock::{run, MockOptions, DEFAULT_LISTEN};

#[derive(Parser, Debug)]
#[command(name = "raster-mock", version, about = "Raster REST API simulator")]
struct Args {
    /// Address to listen on.
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
    };
    if let Err(e) = run(opts) {
        eprintln!("raster-mock: {e:#}");
        std::process::exit(1);
    }
}
