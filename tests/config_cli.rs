//! The command line and config validation, through the real binary: `check-config` accepts
//! every shipped config, names unknown keys and bad values, and a busy listen port makes
//! `raster-edge` fail fast with a clear message instead of hanging.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{edge_bin, free_addr, run_with_timeout};

fn check_config(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).expect("write");
    let mut cmd = Command::new(edge_bin());
    cmd.arg("check-config").arg(&path);
    run_with_timeout(cmd, Duration::from_secs(10))
}

#[test]
fn test_check_config_accepts_every_shipped_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = Vec::new();
    for dir in ["config", "config/examples"] {
        if let Ok(entries) = std::fs::read_dir(format!("{root}/{dir}")) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "toml") {
                    files.push(e.path());
                }
            }
        }
    }
    assert!(!files.is_empty(), "no config files found");
    for f in files {
        let mut cmd = Command::new(edge_bin());
        cmd.arg("check-config").arg(&f);
        let (code, out, err) = run_with_timeout(cmd, Duration::from_secs(10));
        assert_eq!(code, Some(0), "{}: {out}{err}", f.display());
    }
}

#[test]
fn test_check_config_names_unknown_keys() {
    let (code, _, err) = check_config("[cache]\nmax_memroy = \"1MiB\"\n\n[upstream]\nurl = \"http://127.0.0.1:1\"\ntimeout = \"1s\"\n");
    assert_ne!(code, Some(0));
    assert!(err.contains("cache.max_memroy"), "{err}");
    assert!(err.contains("upstream.timeout"), "{err}");
}

#[test]
fn test_check_config_rejects_bad_duration_by_key() {
    let (code, _, err) = check_config("[upstream]\nread_timeout = \"soon\"\n");
    assert_ne!(code, Some(0));
    assert!(err.contains("upstream.read_timeout"), "{err}");
}

#[test]
fn test_check_config_rejects_bad_toml_and_missing_file() {
    let (code, _, err) = check_config("[cache\nenabled = true\n");
    assert_ne!(code, Some(0));
    assert!(err.contains("TOML"), "{err}");
    let mut cmd = Command::new(edge_bin());
    cmd.arg("check-config").arg("/nonexistent/raster-edge.toml");
    let (code, _, err) = run_with_timeout(cmd, Duration::from_secs(10));
    assert_ne!(code, Some(0));
    assert!(err.contains("/nonexistent/raster-edge.toml"), "{err}");
}

#[test]
fn test_busy_listen_port_fails_fast_with_clear_error() {
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = holder.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(edge_bin());
    cmd.arg("--listen")
        .arg(busy.to_string())
        .arg("--admin-listen")
        .arg(free_addr().to_string())
        .arg("--upstream")
        .arg("http://127.0.0.1:9")
        .env("RASTER_EDGE_RUNTIME_DIR", dir.path());
    let started = Instant::now();
    let (code, _, err) = run_with_timeout(cmd, Duration::from_secs(10));
    assert!(code.is_some(), "raster-edge did not exit on a busy port");
    assert_ne!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        err.contains(&busy.to_string()) && err.contains("listen.proxy"),
        "{err}"
    );
}

#[test]
fn test_key_id_subcommand_uses_configured_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[edge]\nkey_id_secret = \"fleet-secret\"\n").expect("write");
    let run = |key: &str| {
        let mut cmd = Command::new(edge_bin());
        cmd.arg("--config").arg(&path).arg("key-id").arg(key);
        run_with_timeout(cmd, Duration::from_secs(10))
    };
    let (code, a, _) = run("demo-read");
    assert_eq!(code, Some(0));
    let (_, a2, _) = run("demo-read");
    let (_, b, _) = run("demo-write");
    let a = a.trim();
    assert_eq!(a.len(), 32, "{a}");
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(a, a2.trim());
    assert_ne!(a, b.trim());
    assert!(!a.contains("demo"));

    // Without a configured secret the ids would be random per process: refuse.
    let mut cmd = Command::new(edge_bin());
    cmd.arg("key-id").arg("demo-read");
    let (code, _, err) = run_with_timeout(cmd, Duration::from_secs(10));
    assert_ne!(code, Some(0));
    assert!(err.contains("key_id_secret"), "{err}");
}
