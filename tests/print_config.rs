//! `raster-edge print-config` (the effective configuration, layers applied, secrets redacted),
//! `--version` and `raster_edge_build_info{version,commit}`: the real binary.

mod common;

use std::process::Command;

use common::{edge_bin, Edge, Mock};
use raster_edge::metrics::{BUILD_COMMIT, BUILD_INFO, CONFIG_INFO};

fn print_config(config: Option<&std::path::Path>, env: &[(&str, &str)], flags: &[&str]) -> String {
    let mut cmd = Command::new(edge_bin());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(flags).arg("print-config");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("print-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn test_print_config_applies_every_layer_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(
        &file,
        "[cache]\ndefault_ttl = \"7s\"\n[admin]\ntoken = \"hunter2-admin\"\n[edge]\nkey_id_secret = \"hush-hush\"\napi_key = \"sk-live-secret\"\n",
    )
    .unwrap();
    let out = print_config(
        Some(&file),
        &[("RASTER_EDGE_RATE_LIMIT_BURST", "77")],
        &["--upstream", "http://127.0.0.1:9"],
    );
    for secret in ["hunter2-admin", "hush-hush", "sk-live-secret"] {
        assert!(!out.contains(secret), "{secret} leaked:\n{out}");
    }
    assert_eq!(out.matches("\"<redacted>\"").count(), 3, "{out}");
    // The file, the environment and the flag, over every default key.
    let body: String = out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let t: toml::Table = body.parse().expect("print-config is TOML");
    assert_eq!(t["cache"]["default_ttl"].as_str(), Some("7s"));
    assert_eq!(t["rate_limit"]["burst"].as_integer(), Some(77));
    assert_eq!(t["upstream"]["url"].as_str(), Some("http://127.0.0.1:9"));
    assert!(t["cache"]["routes"]
        .as_array()
        .is_some_and(|r| !r.is_empty()));
    assert!(t["server"].get("max_header_count").is_some());
    // Headed by the hash, which changes with a secret (not shown) and nothing else moving.
    let hash = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("# hash "))
            .expect("hash line")
            .to_string()
    };
    let h1 = hash(&out);
    assert_eq!(h1.len(), 16);
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("hunter2-admin", "rotated-admin"),
    )
    .unwrap();
    let out2 = print_config(
        Some(&file),
        &[("RASTER_EDGE_RATE_LIMIT_BURST", "77")],
        &["--upstream", "http://127.0.0.1:9"],
    );
    assert_ne!(hash(&out2), h1);
    assert_eq!(
        body,
        out2.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // What it prints is a config file check-config accepts.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &out).unwrap();
    let check = Command::new(edge_bin())
        .arg("check-config")
        .arg(&printed)
        .output()
        .expect("check-config");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Without --config: the embedded default.
    assert!(print_config(None, &[], &[]).contains("the embedded default"));
}

#[test]
fn test_print_config_refuses_an_invalid_file_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, "[cache]\ndefault_ttl = \"forever\"\n").unwrap();
    let out = Command::new(edge_bin())
        .arg("--config")
        .arg(&file)
        .arg("print-config")
        .output()
        .expect("print-config");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cache.default_ttl"));
}

#[tokio::test]
async fn test_version_and_build_info_name_the_commit() {
    let out = Command::new(edge_bin()).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        version,
        format!(
            "raster-edge {} (commit {BUILD_COMMIT})",
            env!("CARGO_PKG_VERSION")
        )
    );
    // Built from this checkout: the commit is git's (12 hex digits), not the fallback.
    if std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".git")
        .exists()
    {
        assert!(
            BUILD_COMMIT.len() == 12 && BUILD_COMMIT.chars().all(|c| c.is_ascii_hexdigit()),
            "{BUILD_COMMIT}"
        );
    }
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), "");
    let labels = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", BUILD_COMMIT),
    ];
    assert_eq!(edge.metric(BUILD_INFO, &labels).await, 1.0);
    assert_eq!(edge.metric(CONFIG_INFO, &[]).await, 1.0);
}
