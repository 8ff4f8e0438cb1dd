//! Shared integration-test harness: a port registry, child processes that die with the test,
//! and one-call starters for the real binaries (`raster-mock`, `raster-edge`) and a private
//! `redis-server`. Every server binds an ephemeral loopback port; nothing uses well-known ports.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that was free a moment ago and that this test process has not handed out
/// before (two tests running in parallel must not be given the same port).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A child process that is killed when the test lets go of it (also when the test panics).
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let quiet = std::env::var_os("RASTER_TEST_VERBOSE").is_none();
        if quiet {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal by number (15 = SIGTERM, 19 = SIGSTOP, 18 = SIGCONT, 9 = SIGKILL).
    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.name);
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn mock_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_raster-mock"))
}

/// The gateway binary; `RASTER_TEST_EDGE_BIN` points the tests at another build (to show a test
/// fails on the code before a fix).
pub fn edge_bin() -> PathBuf {
    std::env::var_os("RASTER_TEST_EDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_raster-edge")))
}

/// A running `raster-mock` on an ephemeral port.
pub struct Mock {
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl Mock {
    pub fn start() -> Mock {
        Mock::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Mock {
        let addr = free_addr();
        let mut cmd = Command::new(mock_bin());
        cmd.arg("--listen").arg(addr.to_string()).args(args);
        let proc = Proc::spawn("raster-mock", cmd);
        assert!(
            wait_for_port(addr, Duration::from_secs(15)),
            "raster-mock did not listen on {addr}"
        );
        Mock { addr, proc }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Number of API requests the mock has received (control calls excluded).
    pub async fn requests(&self) -> u64 {
        let v: serde_json::Value = client()
            .get(format!("{}/__mock/stats", self.url()))
            .send()
            .await
            .expect("mock stats")
            .json()
            .await
            .expect("mock stats json");
        v["data"]["requests"].as_u64().expect("data.requests")
    }

    pub async fn reset(&self) {
        let r = client()
            .post(format!("{}/__mock/reset", self.url()))
            .send()
            .await
            .expect("mock reset");
        assert!(r.status().is_success());
    }

    pub async fn configure(&self, json: serde_json::Value) {
        let r = client()
            .put(format!("{}/__mock/config", self.url()))
            .json(&json)
            .send()
            .await
            .expect("mock config");
        assert!(r.status().is_success(), "mock config: {}", r.status());
    }
}

/// A running `raster-edge` with its own config file, proxy and admin ports.
pub struct Edge {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub proc: Proc,
    pub dir: tempfile::TempDir,
}

impl Edge {
    /// Starts the gateway in front of `upstream` with `toml` as its config file (the listen
    /// addresses and upstream come from the CLI flags, which override the file).
    pub fn start(upstream: &str, toml: &str) -> Edge {
        Edge::try_start(upstream, toml).expect("raster-edge did not become ready")
    }

    pub fn try_start(upstream: &str, toml: &str) -> Option<Edge> {
        Edge::try_start_until(upstream, toml, "/readyz")
    }

    /// Starts the gateway and waits only for its admin listener (`/healthz`), for tests of a
    /// gateway that is up but not ready.
    pub fn start_unready(upstream: &str, toml: &str) -> Edge {
        let edge =
            Edge::try_start_until(upstream, toml, "/healthz").expect("raster-edge did not start");
        // The admin listener can be up before the proxy listener.
        assert!(
            wait_for_port(edge.addr, Duration::from_secs(15)),
            "proxy listener"
        );
        edge
    }

    fn try_start_until(upstream: &str, toml: &str, probe: &str) -> Option<Edge> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("raster-edge.toml");
        std::fs::File::create(&config)
            .and_then(|mut f| f.write_all(toml.as_bytes()))
            .expect("write config");
        let addr = free_addr();
        let admin = free_addr();
        let mut cmd = Command::new(edge_bin());
        cmd.arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--upstream")
            .arg(upstream)
            .env("RASTER_EDGE_RUNTIME_DIR", dir.path());
        let mut proc = Proc::spawn("raster-edge", cmd);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_millis(100)) {
                use std::io::Read;
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(
                    format!("GET {probe} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                if buf.starts_with(b"HTTP/1.1 200") {
                    return Some(Edge {
                        addr,
                        admin,
                        proc,
                        dir,
                    });
                }
            }
            if proc.wait_exit(Duration::from_millis(50)).is_some() {
                return None;
            }
        }
        None
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The Prometheus exposition from the admin listener.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` pairs).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }
}

pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            if all {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// A private `redis-server` on an ephemeral port, killed with the test.
pub struct Redis {
    pub port: u16,
    pub proc: Proc,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        let proc = Proc::spawn("redis-server", cmd);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            wait_for_port(addr, Duration::from_secs(10)),
            "redis-server did not listen on {port}"
        );
        Redis { port, proc }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// `[[cache.routes]]` for every Raster read, with TTLs long enough not to expire mid-test.
pub const RASTER_ROUTES_60S: &str = r#"
[[cache.routes]]
name = "me"
path = "/me"
ttl = "60s"
[[cache.routes]]
name = "libraries"
path = "/organizations/{org}/libraries"
ttl = "60s"
[[cache.routes]]
name = "assets"
path = "/organizations/{org}/libraries/{library}/assets"
ttl = "60s"
[[cache.routes]]
name = "asset"
path = "/organizations/{org}/libraries/{library}/assets/{asset}"
ttl = "60s"
[[cache.routes]]
name = "tags"
path = "/organizations/{org}/libraries/{library}/tags"
ttl = "60s"
[[cache.routes]]
name = "search"
path = "/organizations/{org}/search/assets"
ttl = "60s"
"#;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .expect("reqwest client")
}

/// Standard headers of a Raster read with the `demo-read` key.
pub fn auth(key: &str) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    h.insert("api-version", "2026-05-20".parse().expect("header"));
    h
}

/// A tiny HTTP/1.1 origin for what raster-mock cannot do on purpose: echo the request head it
/// received (to see what the gateway forwarded), stall, or cut a body short. Each connection
/// handles one request; `respond` gets the raw request head and returns the raw bytes to send
/// (or `None` to close without answering).
pub struct RawOrigin {
    pub addr: SocketAddr,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RawOrigin {
    pub fn start<F>(respond: F) -> RawOrigin
    where
        F: Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
        use std::io::Read;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw origin");
        let addr = listener.local_addr().expect("addr");
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let respond = std::sync::Arc::new(respond);
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let respond = respond.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&buf).to_string();
                    if let Some(out) = respond(&head) {
                        let _ = stream.write_all(&out);
                        let _ = stream.flush();
                    }
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        RawOrigin { addr, hits }
    }

    /// An origin that answers 200 with the request head it received as a JSON string.
    pub fn echo() -> RawOrigin {
        RawOrigin::start(|head| {
            let body = serde_json::json!({ "data": { "head": head } }).to_string();
            Some(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nkeep-alive: timeout=5\r\nx-hop: 1\r\n\r\n{}",
                    body.len(),
                    body
                )
                .into_bytes(),
            )
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Runs a command to completion with a deadline and returns (exit code, stdout, stderr).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (code, out, err)
}
