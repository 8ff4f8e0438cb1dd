//! `raster-edge warm --from LIST`: fills a cold cache (after a binary upgrade or a restart) by
//! sending a GET for every path in a list through the gateway, with one API key.
//!
//! Through the gateway rather than into the store directly: the cache is partitioned by key id
//! and the origin needs the key itself, which the gateway never keeps. So warming is what the
//! key's own first requests would have done, with the same edge checks, rate limits and
//! storage decisions; nothing is stored that a real request would not store. The requests
//! count against the key's quota like any other.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;

use crate::config::Settings;

/// The environment variable `warm` reads the API key from (kept off the command line).
pub const KEY_ENV: &str = "RASTER_API_KEY";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// File with one path and query per line (`/organizations/o/libraries`); blank lines and
    /// lines starting with `#` are skipped; `-` reads standard input.
    #[arg(long = "from", value_name = "URL-LIST")]
    pub from: PathBuf,
    /// The gateway to warm (default: http://<listen.proxy> from the config).
    #[arg(long, value_name = "URL")]
    pub gateway: Option<String>,
    /// File holding the API key (default: the RASTER_API_KEY environment variable).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Api-Version to send (default: none, which the gateway's pinned edge.api_version fills).
    #[arg(long, value_name = "VERSION")]
    pub api_version: Option<String>,
    /// Requests in parallel.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Bound on each request.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// What happened to one path.
#[derive(Debug)]
enum Fetched {
    /// 2xx, with the gateway's `X-Cache` value.
    Ok(String),
    Failed(String),
}

/// The paths of a list: one per line, comments and blanks skipped; each must be origin-form.
pub fn parse_list(text: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        anyhow::ensure!(
            line.starts_with('/') && !line.starts_with("//"),
            "line {}: {line:?} is not a path (it must start with one '/')",
            i + 1
        );
        out.push(line.to_string());
    }
    Ok(out)
}

pub fn run(args: Args, settings: &Settings) -> anyhow::Result<()> {
    let text = if args.from.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("read the list from stdin")?
    } else {
        std::fs::read_to_string(&args.from)
            .with_context(|| format!("read {}", args.from.display()))?
    };
    let paths = parse_list(&text)?;
    let key = match &args.key_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("read {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var(KEY_ENV).ok().map(|k| k.trim().to_string()),
    }
    .filter(|k| !k.is_empty());
    let base = args
        .gateway
        .clone()
        .unwrap_or_else(|| format!("http://{}", settings.listen.proxy));
    let base = base.trim_end_matches('/').to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let results = runtime.block_on(fetch_all(&args, &base, key.as_deref(), &paths))?;
    let mut by_cache: std::collections::BTreeMap<String, usize> = Default::default();
    let mut failed = Vec::new();
    for (path, r) in paths.iter().zip(results) {
        match r {
            Fetched::Ok(x) => *by_cache.entry(x).or_default() += 1,
            Fetched::Failed(why) => failed.push(format!("{path}: {why}")),
        }
    }
    let ok: usize = by_cache.values().sum();
    let detail = by_cache
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "warm: {} paths, {ok} ok ({detail}), {} failed in {:.1} s",
        paths.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    for f in &failed {
        eprintln!("warm: {f}");
    }
    anyhow::ensure!(failed.is_empty(), "{} paths failed", failed.len());
    Ok(())
}

async fn fetch_all(
    args: &Args,
    base: &str,
    key: Option<&str>,
    paths: &[String],
) -> anyhow::Result<Vec<Fetched>> {
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .pool_max_idle_per_host(args.concurrency.max(1))
        .build()?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = key {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {k}"))
            .context("the API key is not a valid header value")?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    if let Some(v) = &args.api_version {
        headers.insert(
            "api-version",
            reqwest::header::HeaderValue::from_str(v).context("--api-version")?,
        );
    }
    let results = futures_util::stream::iter(paths.iter().map(|p| {
        let req = client.get(format!("{base}{p}")).headers(headers.clone());
        async move {
            match req.send().await {
                Ok(r) => {
                    let status = r.status();
                    let cache = r
                        .headers()
                        .get("x-cache")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("no X-Cache")
                        .to_string();
                    // Read the whole body: a miss is stored only once it was read to the end.
                    match r.bytes().await {
                        Ok(_) if status.is_success() => Fetched::Ok(cache),
                        Ok(b) => Fetched::Failed(format!(
                            "{status}: {}",
                            String::from_utf8_lossy(&b[..b.len().min(200)])
                        )),
                        Err(e) => Fetched::Failed(format!("{status}, body: {e}")),
                    }
                }
                Err(e) => Fetched::Failed(e.to_string()),
            }
        }
    }))
    .buffered(args.concurrency.max(1))
    .collect::<Vec<_>>()
    .await;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines_are_paths() {
        let l = parse_list("# top paths\n/me\n\n  /organizations/o/libraries?x=1  \n").unwrap();
        assert_eq!(l, vec!["/me", "/organizations/o/libraries?x=1"]);
        assert!(parse_list("me\n")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(parse_list("/a\nhttp://x/b\n")
            .unwrap_err()
            .to_string()
            .contains("line 2"));
        assert!(parse_list("//evil.example/x\n").is_err());
    }
}
