//! Configuration hot reload: SIGHUP and `POST /admin/reload` read the `--config` file again and
//! apply what can change live to the next requests, keeping connections, the cache and the
//! rate-limit state; a file that does not validate, or that changes a key needing a restart, is
//! refused by name and the previous configuration keeps running. Real binary (or the real
//! server in process, where the test ages the cache instead of sleeping through a TTL), on
//! ephemeral ports.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::inproc::InProcess;
use common::keepalive::{Conn, Failure};
use common::{auth, client, Edge, Mock};
use raster_edge::metrics::{ReloadResult, CONFIG_INFO, CONFIG_RELOAD_TOTAL};
use serde_json::Value;

const TOKEN: &str = "reload-admin-token";
const ME: &str = "/me";
const LIBS: &str = "/organizations/monogram-labs/libraries";

fn config(extra: &str) -> String {
    format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[rate_limit]\nenabled = false\n[cache]\nenabled = true\n{extra}\n{}",
        common::RASTER_ROUTES_60S
    )
}

/// Replaces the config file whole (write, then rename), as an operator's deploy tool should:
/// a reload never reads a half-written file.
fn rewrite(edge: &Edge, toml: &str) {
    let tmp = edge.dir.path().join("raster-edge.toml.new");
    std::fs::write(&tmp, toml).expect("write config");
    std::fs::rename(&tmp, edge.dir.path().join("raster-edge.toml")).expect("rename config");
}

async fn reload(edge: &Edge, token: &str) -> (u16, Value) {
    let r = client()
        .post(edge.admin_url("/admin/reload"))
        .bearer_auth(token)
        .send()
        .await
        .expect("reload");
    let status = r.status().as_u16();
    (status, r.json().await.expect("reload json"))
}

async fn reloads(edge: &Edge, result: ReloadResult) -> f64 {
    edge.metric(CONFIG_RELOAD_TOTAL, &[("result", result.as_str())])
        .await
}

async fn stats(edge: &Edge) -> Value {
    client()
        .get(edge.admin_url("/admin/stats"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("stats")
        .json::<Value>()
        .await
        .expect("stats json")["data"]
        .clone()
}

/// The `hash` label of the one `raster_edge_config_info` series.
async fn config_info_hashes(edge: &Edge) -> Vec<String> {
    edge.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{CONFIG_INFO}{{")))
        .filter_map(|l| {
            l.split("hash=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(String::from)
        })
        .collect()
}

async fn get_status(edge: &Edge, path: &str) -> (u16, String) {
    let r = client()
        .get(edge.url(path))
        .headers(auth("demo-read"))
        .send()
        .await
        .expect("get");
    let x = r
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (r.status().as_u16(), x)
}

/// Waits until `f` holds (a signal is handled asynchronously), at most 10 s.
async fn eventually<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test]
async fn test_sighup_reloads_and_the_gateway_keeps_running() {
    let mock = Mock::start();
    let mut edge = Edge::start(&mock.url(), &config(""));
    assert_eq!(get_status(&edge, ME).await.0, 200);
    let before = stats(&edge).await["config"]["hash"].clone();
    assert_eq!(
        config_info_hashes(&edge).await,
        vec![before.as_str().unwrap().to_string()]
    );

    rewrite(&edge, &config("default_ttl = \"7s\""));
    edge.proc.signal(1);
    assert!(
        eventually(|| async { reloads(&edge, ReloadResult::Ok).await == 1.0 }).await,
        "SIGHUP reload counted: {}",
        edge.proc.output()
    );
    assert!(edge.proc.exited().is_none(), "SIGHUP ended the gateway");
    assert_eq!(get_status(&edge, ME).await.0, 200);
    let s = stats(&edge).await;
    assert_ne!(s["config"]["hash"], before, "{s}");
    assert_eq!(s["config"]["last_reload"]["result"], "ok");
    assert_eq!(s["config"]["last_reload"]["trigger"], "sighup");
    assert_eq!(
        s["config"]["last_reload"]["changed"],
        serde_json::json!(["cache.default_ttl"])
    );
    // The gauge names the new configuration only.
    assert_eq!(
        config_info_hashes(&edge).await,
        vec![s["config"]["hash"].as_str().unwrap().to_string()]
    );
    assert_eq!(reloads(&edge, ReloadResult::Error).await, 0.0);
}

#[tokio::test]
async fn test_sighup_without_a_config_file_is_refused_counted_and_survived() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (proxy, admin) = (common::reserve(), common::reserve());
    let mut cmd = std::process::Command::new(common::edge_bin());
    cmd.arg("--listen")
        .arg(proxy.addr().to_string())
        .arg("--admin-listen")
        .arg(admin.addr().to_string())
        .arg("--upstream")
        .arg(mock.url())
        .env("RASTER_EDGE_RUNTIME_DIR", dir.path());
    let (proxy, admin) = (proxy.release(), admin.release());
    let mut proc = common::Proc::spawn("raster-edge", cmd);
    assert!(
        common::wait_for_port(admin, Duration::from_secs(15))
            && common::wait_for_port(proxy, Duration::from_secs(15)),
        "{}",
        proc.output()
    );
    proc.signal(1);
    let url = format!("http://{admin}/metrics");
    let counted = eventually(|| async {
        let text = client()
            .get(&url)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap();
        common::metric_sum(&text, CONFIG_RELOAD_TOTAL, &[("result", "error")]) == 1.0
    })
    .await;
    assert!(counted, "{}", proc.output());
    assert!(proc.exited().is_none(), "SIGHUP ended the gateway");
    let r = client()
        .get(format!("http://{proxy}/me"))
        .headers(auth("demo-read"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert!(
        proc.output().contains("no --config file"),
        "{}",
        proc.output()
    );
}

#[tokio::test]
async fn test_an_invalid_file_is_refused_by_key_and_the_old_config_keeps_running() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(""));
    let hash = stats(&edge).await["config"]["hash"].clone();
    get_status(&edge, ME).await;
    assert_eq!(get_status(&edge, ME).await, (200, "HIT".into()));

    // A bad value, named by its key.
    rewrite(&edge, &config("default_ttl = \"forever\""));
    let (status, body) = reload(&edge, TOKEN).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "RELOAD_REFUSED");
    assert_eq!(
        body["error"]["keys"],
        serde_json::json!(["cache.default_ttl"])
    );
    // An unknown key and a TOML syntax error are refused too.
    rewrite(&edge, &config("defualt_ttl = \"5s\""));
    let (status, body) = reload(&edge, TOKEN).await;
    assert_eq!(
        (status, body["error"]["keys"].clone()),
        (409, serde_json::json!(["cache.defualt_ttl"]))
    );
    rewrite(&edge, "[cache\n");
    assert_eq!(reload(&edge, TOKEN).await.0, 409);

    assert_eq!(reloads(&edge, ReloadResult::Error).await, 3.0);
    assert_eq!(reloads(&edge, ReloadResult::Ok).await, 0.0);
    let s = stats(&edge).await;
    assert_eq!(s["config"]["hash"], hash);
    assert_eq!(s["config"]["last_reload"]["result"], "error");
    assert!(
        edge.proc.output().contains("cache.defualt_ttl"),
        "{}",
        edge.proc.output()
    );
    // The old configuration still serves, and the cache is still there.
    assert_eq!(get_status(&edge, ME).await, (200, "HIT".into()));
}

#[tokio::test]
async fn test_keys_that_cannot_change_live_are_named_in_the_refusal() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(""));
    rewrite(
        &edge,
        &format!(
            "[server]\nthreads = 3\n{}",
            config("max_memory = \"1MiB\"\ndefault_ttl = \"9s\"")
        ),
    );
    let (status, body) = reload(&edge, TOKEN).await;
    assert_eq!(status, 409, "{body}");
    // Only the fixed ones are named; the live one (default_ttl) would have been fine.
    assert_eq!(
        body["error"]["keys"],
        serde_json::json!(["cache.max_memory", "server.threads"])
    );
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("restart") && msg.contains("upgrade"), "{msg}");
    // A listen address in the file changes nothing here: the command line's wins, on every
    // reload as at start.
    rewrite(
        &edge,
        &format!("[listen]\nadmin = \"127.0.0.1:1\"\n{}", config("")),
    );
    let (status, body) = reload(&edge, TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["changed"], serde_json::json!([]), "{body}");
}

#[tokio::test]
async fn test_the_admin_token_changes_live() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(""));
    let rotated = config("").replace(TOKEN, "rotated-token");
    rewrite(&edge, &rotated);
    let (status, body) = reload(&edge, "wrong-token").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = reload(&edge, TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["changed"], serde_json::json!(["admin.token"]));
    // The secret is never in the report, the log or the stats.
    assert!(!body.to_string().contains("rotated-token"));
    assert!(!edge.proc.output().contains("rotated-token"));
    assert_eq!(reload(&edge, TOKEN).await.0, 401);
    assert_eq!(reload(&edge, "rotated-token").await.0, 200);
}

#[tokio::test]
async fn test_log_level_changes_live() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config("[log]\nlevel = \"warn\""));
    // Still warn: the reload's own info line is filtered out.
    rewrite(
        &edge,
        &config("default_ttl = \"5s\"\n[log]\nlevel = \"warn\""),
    );
    assert_eq!(reload(&edge, TOKEN).await.0, 200);
    // Now info: the reload says so in the log.
    rewrite(&edge, &config("[log]\nlevel = \"info\""));
    assert_eq!(reload(&edge, TOKEN).await.0, 200);
    let seen = eventually(|| async { edge.proc.output().contains("configuration reloaded") }).await;
    assert!(seen, "{}", edge.proc.output());
    assert_eq!(
        edge.proc.output().matches("configuration reloaded").count(),
        1
    );
    // A bad filter is refused like any bad value.
    rewrite(&edge, &config("[log]\nlevel = \"raster_edge=loud\""));
    let (status, body) = reload(&edge, TOKEN).await;
    assert_eq!(
        (status, body["error"]["keys"].clone()),
        (409, serde_json::json!(["log.level"]))
    );
}

#[tokio::test]
async fn test_rate_limit_tiers_change_live_and_keep_each_keys_state() {
    let mock = Mock::start();
    let limits = |burst: u32| {
        format!(
            "[admin]\ntoken = \"{TOKEN}\"\n[cache]\nenabled = false\n[edge]\nkey_id_secret = \"s\"\n[rate_limit]\nenabled = true\nrate = 0.001\nburst = {burst}\n"
        )
    };
    let edge = Edge::start(&mock.url(), &limits(5));
    let mut allowed = 0;
    for _ in 0..8 {
        if get_status(&edge, ME).await.0 == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5);
    // One more request of burst: a key that used 5 gets exactly one more, not a fresh six
    // (the state survived the reload).
    rewrite(&edge, &limits(6));
    let (status, body) = reload(&edge, TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["changed"],
        serde_json::json!(["rate_limit.burst"])
    );
    let mut allowed = 0;
    for _ in 0..8 {
        if get_status(&edge, ME).await.0 == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_ttl_change_takes_effect_on_the_next_miss_and_the_cache_stays() {
    let mock = Mock::start();
    let toml = |ttl: &str| config("").replace("ttl = \"60s\"", &format!("ttl = \"{ttl}\""));
    let edge = InProcess::start_reloadable(&mock.url(), &toml("60s"));
    let get = |path: &'static str| {
        let url = format!("http://{}{path}", edge.addr);
        async move {
            let r = client()
                .get(url)
                .headers(auth("demo-read"))
                .send()
                .await
                .expect("get");
            r.headers()
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        }
    };
    assert_eq!(get(ME).await, "MISS");
    assert_eq!(get(ME).await, "HIT");

    std::fs::write(&edge.config, toml("2s")).expect("rewrite");
    let report = edge.reload();
    assert!(report.applied(), "{report:?}");
    assert_eq!(report.changed, vec!["cache.routes"]);
    // The next miss is stored with the new TTL; what was stored keeps its own.
    assert_eq!(get(LIBS).await, "MISS");
    assert_eq!(get(LIBS).await, "HIT");
    edge.age(Duration::from_secs(5));
    assert_ne!(get(LIBS).await, "HIT", "stored under the 2 s TTL");
    assert_eq!(
        get(ME).await,
        "HIT",
        "stored under 60 s, kept across the reload"
    );
}

/// Eight keep-alive connections send requests back to back while the configuration is
/// reloaded twenty times (TTLs, tiers, invalidation rules, timeouts, the admin token...):
/// every request is answered 200 on the connection it started on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_reloads_under_keepalive_load_fail_nothing_and_drop_no_connection() {
    const CLIENTS: usize = 8;
    let mock = Mock::start();
    let a = config("");
    let b = config("default_ttl = \"3s\"\nstale_if_error = \"1m\"\ninvalidation = []\n")
        .replace("ttl = \"60s\"", "ttl = \"30s\"")
        + "\n[upstream]\nread_timeout = \"20s\"\nretries = 2\n[edge]\nrequire_api_version = false\n";
    let edge = Edge::start(&mock.url(), &a);
    let stop = Arc::new(AtomicBool::new(false));
    let addr = edge.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr).expect("connect");
                let (mut ok, mut failed) = (0usize, Vec::new());
                let paths = [
                    ME,
                    LIBS,
                    "/organizations/monogram-labs/libraries/barcelona/assets",
                ];
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match conn.get(
                        paths[n % paths.len()],
                        &[
                            ("authorization", "Bearer demo-read"),
                            ("api-version", "2026-05-20"),
                        ],
                    ) {
                        Ok(r) if r.status == 200 && !r.close => ok += 1,
                        Ok(r) => failed.push(format!(
                            "{} close={} {:?}",
                            r.status,
                            r.close,
                            String::from_utf8_lossy(&r.body)
                        )),
                        Err(Failure::ClosedBeforeResponse) => failed.push("closed".into()),
                        Err(e) => failed.push(format!("{e:?}")),
                    }
                    if !failed.is_empty() {
                        break;
                    }
                }
                (ok, failed, conn.requests)
            })
        })
        .collect();
    let mut applied = 0;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        rewrite(&edge, if i % 2 == 0 { &b } else { &a });
        if i % 4 == 3 {
            edge.proc.signal(1);
        } else {
            let (status, body) = reload(&edge, TOKEN).await;
            assert_eq!(status, 200, "{body}");
            applied += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f, _) = c.join().expect("client");
        ok += o;
        failed.extend(f);
    }
    let counted = eventually(|| async { reloads(&edge, ReloadResult::Ok).await == 20.0 }).await;
    eprintln!("{ok} requests on {CLIENTS} connections across 20 reloads ({applied} by POST), failed: {failed:?}");
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 200, "load flowed: {ok}");
    assert!(counted, "{}", edge.metrics().await);
    assert_eq!(reloads(&edge, ReloadResult::Error).await, 0.0);
}
