//! Binary upgrade under load: keep-alive clients send requests back to back; a new process is
//! started with `--upgrade`, the old one gets SIGQUIT and hands its listening sockets over.
//! Not one request fails and no connection is reset: a client told `Connection: close`
//! reconnects (that is the protocol working), and the listening sockets never close, so every
//! reconnect is accepted by one process or the other. Then the new process's cache is cold,
//! and `raster-edge warm` fills it.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::keepalive::{Conn, Failure};
use common::{auth, client, edge_bin, Edge, Mock, Proc};

const CLIENTS: usize = 8;
const KEY: &str = "demo-read";
const PATHS: &[&str] = &[
    "/me",
    "/organizations/monogram-labs/libraries",
    "/organizations/monogram-labs/libraries/barcelona/assets",
];
const HEADERS: &[(&str, &str)] = &[
    ("authorization", "Bearer demo-read"),
    ("api-version", "2026-05-20"),
];

#[derive(Debug, Default)]
struct Counts {
    ok: usize,
    /// Responses that said `Connection: close` (the client then opened a new connection).
    closed_by_server: usize,
    resets: Vec<String>,
    failed: Vec<String>,
}

fn client_loop(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, seed: usize) -> Counts {
    let mut n = Counts::default();
    let mut conn = None;
    let mut i = seed;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(addr) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    n.failed.push(format!("connect: {e}"));
                    break;
                }
            },
        };
        i += 1;
        match c.get(PATHS[i % PATHS.len()], HEADERS) {
            Ok(r) if r.status == 200 => {
                n.ok += 1;
                if r.close {
                    n.closed_by_server += 1;
                    conn = None;
                }
            }
            Ok(r) => {
                n.failed
                    .push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)));
                conn = None;
            }
            Err(Failure::ClosedBeforeResponse) => {
                n.resets.push("closed before any response".into());
                conn = None;
            }
            Err(Failure::Reset(e)) => {
                n.resets.push(e);
                conn = None;
            }
            Err(Failure::Broken(e)) => {
                n.failed.push(e);
                conn = None;
            }
        }
    }
    n
}

/// The new process: the old one's command line plus `--upgrade`, same runtime dir (where the
/// upgrade socket is).
fn start_upgrade(edge: &Edge, upstream: &str) -> Proc {
    let mut cmd = Command::new(edge_bin());
    cmd.arg("--config")
        .arg(edge.dir.path().join("raster-edge.toml"))
        .arg("--listen")
        .arg(edge.addr.to_string())
        .arg("--admin-listen")
        .arg(edge.admin.to_string())
        .arg("--upstream")
        .arg(upstream)
        .arg("--upgrade")
        .env("RASTER_EDGE_RUNTIME_DIR", edge.dir.path());
    Proc::spawn("raster-edge (new)", cmd)
}

async fn x_cache(edge: &Edge, path: &str) -> String {
    let r = client()
        .get(edge.url(path))
        .headers(auth(KEY))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    r.headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_binary_upgrade_under_keepalive_load_fails_and_resets_nothing() {
    let mock = Mock::start();
    let mut old = Edge::start(
        &mock.url(),
        &format!(
            "[rate_limit]\nenabled = false\n[server]\ngrace_period = \"10s\"\n[log]\naccess_log = false\n{}",
            common::RASTER_ROUTES_60S
        ),
    );
    // Stored only in the old process, never requested by the load.
    let only_old = "/organizations/monogram-labs/libraries/lisbon/assets";
    assert_eq!(x_cache(&old, only_old).await, "MISS");
    assert_eq!(x_cache(&old, only_old).await, "HIT");

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addr, stop) = (old.addr, stop.clone());
            std::thread::spawn(move || client_loop(addr, stop, i))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut new = start_upgrade(&old, &mock.url());
    // The new process waits (up to 5 s) on the upgrade socket; the old one sends on SIGQUIT.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    old.proc.signal(3);
    let code = tokio::task::spawn_blocking(move || {
        let code = old.proc.wait_exit(Duration::from_secs(20));
        (code, old)
    })
    .await
    .expect("join");
    let (code, old) = code;
    let handed_over = signalled.elapsed();
    // Load keeps flowing to the new process alone for a while.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Counts::default();
    for c in clients {
        let n = c.join().expect("client");
        total.ok += n.ok;
        total.closed_by_server += n.closed_by_server;
        total.resets.extend(n.resets);
        total.failed.extend(n.failed);
    }
    eprintln!(
        "upgrade under load: {} ok, {} reconnects after Connection: close, {} reset, {} failed; old exited {code:?} {handed_over:?} after SIGQUIT",
        total.ok,
        total.closed_by_server,
        total.resets.len(),
        total.failed.len()
    );
    assert_eq!(code, Some(0), "old process: {}", old.proc.output());
    assert!(new.exited().is_none(), "new process: {}", new.output());
    assert!(total.resets.is_empty(), "resets: {:?}", total.resets);
    assert!(total.failed.is_empty(), "failed: {:?}", total.failed);
    assert!(total.ok > 300, "load flowed: {total:?}");
    assert!(
        total.closed_by_server >= CLIENTS,
        "every client moved: {total:?}"
    );
    let log = old.proc.output();
    assert!(
        log.contains("SIGQUIT: handing the listeners") && log.contains("listener sockets sent"),
        "{log}"
    );

    // The new process serves on the same ports (admin too) and started with an empty cache.
    let admin = client()
        .get(format!("http://{}/readyz", old.admin))
        .send()
        .await
        .expect("new admin");
    assert_eq!(admin.status(), 200);
    assert_eq!(
        x_cache(&old, only_old).await,
        "MISS",
        "the new process starts cold"
    );

    // Warm it from a list: the entries are stored under demo-read's key id.
    let list = old.dir.path().join("warm.txt");
    std::fs::write(&list, "# paths to warm\n/organizations/monogram-labs/libraries/lisbon/assets?page=2\n/organizations/monogram-labs/libraries/barcelona/assets?page=2\n").unwrap();
    let out = Command::new(edge_bin())
        .arg("warm")
        .arg("--from")
        .arg(&list)
        .arg("--gateway")
        .arg(format!("http://{}", old.addr))
        .arg("--api-version")
        .arg("2026-05-20")
        .env("RASTER_API_KEY", KEY)
        .output()
        .expect("warm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 paths, 2 ok (2 MISS)"), "{stdout}");
    assert_eq!(
        x_cache(
            &old,
            "/organizations/monogram-labs/libraries/lisbon/assets?page=2"
        )
        .await,
        "HIT"
    );
    assert_eq!(
        x_cache(
            &old,
            "/organizations/monogram-labs/libraries/barcelona/assets?page=2"
        )
        .await,
        "HIT"
    );
    new.kill();
}

#[tokio::test]
async fn test_warm_reports_failures_and_exits_non_zero() {
    let mock = Mock::start();
    let edge = Edge::start(
        &mock.url(),
        &format!(
            "[rate_limit]\nenabled = false\n{}",
            common::RASTER_ROUTES_60S
        ),
    );
    let list = edge.dir.path().join("warm.txt");
    std::fs::write(&list, "/me\n/organizations/nobody/libraries\n").unwrap();
    let run = |key: Option<&str>| {
        let mut cmd = Command::new(edge_bin());
        cmd.arg("warm")
            .arg("--from")
            .arg(&list)
            .arg("--gateway")
            .arg(format!("http://{}", edge.addr))
            .arg("--api-version")
            .arg("2026-05-20")
            .env_remove("RASTER_API_KEY");
        if let Some(k) = key {
            cmd.env("RASTER_API_KEY", k);
        }
        cmd.output().expect("warm")
    };
    let out = run(Some(KEY));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success());
    assert!(
        stdout.contains("2 paths, 1 ok (1 MISS), 1 failed"),
        "{stdout}"
    );
    assert!(
        stderr.contains("/organizations/nobody/libraries: 404"),
        "{stderr}"
    );
    // Without a key the gateway refuses every path; the key never shows in the output.
    let out = run(None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = run(Some(KEY));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(KEY));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 HIT"));
    // A list that is not paths is refused before anything is sent.
    std::fs::write(&list, "me\n").unwrap();
    let out = run(Some(KEY));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}
