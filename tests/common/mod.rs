//! Shared integration-test harness: a port registry, child processes that die with the test,
//! and one-call starters for the real binaries (`raster-mock`, `raster-edge`) and a private
//! `redis-server`. Every server binds an ephemeral loopback port; nothing uses well-known ports.
//!
//! Ports, without races:
//! - `raster-mock` binds `127.0.0.1:0` itself and names the port it got on its first stdout
//!   line, so no port is ever chosen for it: nothing to race for.
//! - `raster-edge` (Pingora binds its listeners) and `redis-server` must be given a port. The
//!   registry ([`reserve`]) hands out a port together with the bound listener that holds it,
//!   and that listener is closed only just before the child is spawned ([`Reserved::release`]).
//!   Another process can still take the port in that instant; the child then exits at once
//!   naming the address, and the starters retry on fresh ports ([`SPAWN_ATTEMPTS`]), so a lost
//!   race costs a retry, never a flaky test.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub mod inproc;
pub mod keepalive;
pub mod transport;

use transport::Transport;

/// A gateway a test talks to: the real binary ([`Edge`]) or the server inside the test process
/// ([`inproc::InProcess`]).
pub trait Target {
    fn url(&self, path: &str) -> String;
    fn admin_url(&self, path: &str) -> String;
    /// A client speaking the gateway's transport (HTTP/1.1, h2c or h2 over TLS).
    fn client(&self) -> reqwest::Client {
        client()
    }
    fn transport(&self) -> Transport {
        Transport::Http1
    }
}

impl Target for Edge {
    fn url(&self, path: &str) -> String {
        Edge::url(self, path)
    }

    fn admin_url(&self, path: &str) -> String {
        Edge::admin_url(self, path)
    }

    fn client(&self) -> reqwest::Client {
        Edge::client(self)
    }

    fn transport(&self) -> Transport {
        self.transport
    }
}

/// Start attempts for a child given reserved ports before giving up on losing port races.
pub const SPAWN_ATTEMPTS: usize = 5;
/// How much of a child's output is kept for failure messages (the tail).
const LOG_TAIL_BYTES: usize = 64 * 1024;

/// Every port this test process has handed out: a port is handed out once, so two tests
/// running in parallel are never given the same one even after the first has released it.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port held by a bound listener of this test process until [`Reserved::release`].
/// Holding it keeps every other process (and every other test) off the port meanwhile.
#[derive(Debug)]
pub struct Reserved {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Reserved {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes the holding listener so a child can bind the port. Call it immediately before
    /// spawning the child, never earlier: the port is up for grabs from here on.
    pub fn release(self) -> SocketAddr {
        drop(self.listener);
        self.addr
    }
}

/// A fresh loopback port, still bound (and listening) by the returned [`Reserved`].
pub fn reserve() -> Reserved {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let addr = listener
            .local_addr()
            .expect("local address of a bound listener");
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(addr.port()) {
            return Reserved { listener, addr };
        }
    }
}

/// A loopback port nothing listens on (reserved, then released at once): for "nobody is
/// there" tests. To start a server on it, use [`reserve`] and release just before the spawn.
pub fn free_port() -> u16 {
    reserve().release().port()
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
/// Its stderr (and its stdout, when read) is kept for failure messages, and also shown when
/// `RASTER_TEST_VERBOSE` is set.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    lines: Option<mpsc::Receiver<String>>,
    drains: Vec<std::thread::JoinHandle<()>>,
}

fn verbose() -> bool {
    std::env::var_os("RASTER_TEST_VERBOSE").is_some()
}

/// Copies `from` line by line into `log` (bounded), echoing when verbose and handing each line
/// to `lines` if given. Reads to EOF so the child never blocks on a full pipe.
fn drain(
    from: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let echo = verbose();
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if echo {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            {
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
                if l.len() > LOG_TAIL_BYTES {
                    let mut cut = l.len() - LOG_TAIL_BYTES;
                    while !l.is_char_boundary(cut) {
                        cut += 1;
                    }
                    l.drain(..cut);
                }
            }
            if let Some(tx) = &lines {
                let _ = tx.send(line);
            }
        }
    })
}

/// Why [`Proc::wait_line`] gave up.
#[derive(Debug)]
pub enum NoLine {
    /// The child exited (with this code, if any).
    Exited(Option<i32>),
    TimedOut,
}

impl Proc {
    /// Spawns `cmd` with its stderr kept (stdout discarded unless verbose).
    pub fn spawn(name: &str, cmd: Command) -> Proc {
        Proc::start(name, cmd, false)
    }

    /// Spawns `cmd` with its stdout lines readable through [`Proc::wait_line`].
    pub fn spawn_reading_stdout(name: &str, cmd: Command) -> Proc {
        Proc::start(name, cmd, true)
    }

    fn start(name: &str, mut cmd: Command, read_stdout: bool) -> Proc {
        let stdout = if read_stdout {
            Stdio::piped()
        } else if verbose() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        cmd.stdout(stdout).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let mut drains = Vec::new();
        if let Some(err) = child.stderr.take() {
            drains.push(drain(err, log.clone(), None));
        }
        let lines = child.stdout.take().map(|out| {
            let (tx, rx) = mpsc::channel();
            drains.push(drain(out, log.clone(), Some(tx)));
            rx
        });
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
            lines,
            drains,
        }
    }

    /// After the child exited: lets the readers take in its last output (bounded, in case a
    /// grandchild still holds a pipe).
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !self.drains.iter().all(|d| d.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The tail of what the child has written so far (stderr, and stdout when read).
    pub fn output(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The exit code if the child has exited (`Some(None)`: killed by a signal); its whole
    /// output is in [`Proc::output`] by then.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.settle();
                Some(status.code())
            }
            _ => None,
        }
    }

    /// The first stdout line (from here on) that satisfies `want`, waiting at most `timeout`.
    /// Only for a child started with [`Proc::spawn_reading_stdout`].
    pub fn wait_line(
        &mut self,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Result<String, NoLine> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(NoLine::TimedOut);
            }
            let rx = self.lines.as_ref().expect("stdout is read");
            match rx.recv_timeout((deadline - now).min(Duration::from_millis(50))) {
                Ok(line) if want(&line) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(code) = self.exited() {
                        return Err(NoLine::Exited(code));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the child is exiting.
                    let code = self.wait_exit(Duration::from_secs(5)).map(Some);
                    return Err(NoLine::Exited(code.unwrap_or(None)));
                }
            }
        }
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

    /// Waits for the process to exit by itself and returns its exit code; its whole output is
    /// in [`Proc::output`] by then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.settle();
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

/// One start attempt of a child given reserved ports.
pub enum Attempt<T> {
    Up(T),
    /// The child lost a port to another process (it exited naming the address): try again on
    /// fresh ports.
    PortTaken,
    /// Any other failure: not retried. The message says what happened.
    Failed(String),
}

/// Runs `attempt` until it is up, retrying on fresh ports while it only loses port races.
pub fn retry_on_port_race<T>(
    name: &str,
    mut attempt: impl FnMut() -> Attempt<T>,
) -> Result<T, String> {
    for _ in 0..SPAWN_ATTEMPTS {
        match attempt() {
            Attempt::Up(t) => return Ok(t),
            Attempt::PortTaken => continue,
            Attempt::Failed(why) => return Err(why),
        }
    }
    Err(format!(
        "{name}: another process took its port {SPAWN_ATTEMPTS} times in a row"
    ))
}

/// Whether the output of a child that exited early says it could not bind one of `addrs`:
/// our servers and Redis name the address; others (`openssl s_server`) only say the OS's
/// "Address already in use".
pub fn lost_port(output: &str, addrs: &[SocketAddr]) -> bool {
    addrs.iter().any(|a| output.contains(&a.to_string()))
        || output
            .to_ascii_lowercase()
            .contains("address already in use")
}

/// Starts a server that takes its port on the command line (`make(port)`), on a reserved port
/// released just before the spawn, and waits until the port accepts connections while the
/// child is alive. A child that exits early naming its address lost the port: retried.
pub fn spawn_on_fresh_port(
    name: &str,
    timeout: Duration,
    make: impl Fn(u16) -> Command,
) -> (u16, Proc) {
    let started = retry_on_port_race(name, || {
        let reserved = reserve();
        let cmd = make(reserved.port());
        let addr = reserved.release();
        let mut proc = Proc::spawn(name, cmd);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(code) = proc.exited() {
                return if lost_port(&proc.output(), &[addr]) {
                    Attempt::PortTaken
                } else {
                    Attempt::Failed(format!("{name} exited ({code:?}):\n{}", proc.output()))
                };
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
                && proc.exited().is_none()
            {
                return Attempt::Up((addr.port(), proc));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Attempt::Failed(format!(
            "{name} did not listen on {addr}:\n{}",
            proc.output()
        ))
    });
    started.unwrap_or_else(|why| panic!("{why}"))
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

/// The address in `raster-mock`'s first stdout line (`listening on HOST:PORT`).
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("listening on ")?.trim().parse().ok()
}

/// A running `raster-mock` on a port it chose itself.
pub struct Mock {
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl Mock {
    pub fn start() -> Mock {
        Mock::start_with(&[])
    }

    /// Starts the mock with extra flags. It binds `127.0.0.1:0` and announces the port it got,
    /// so there is no port to race for and nothing to retry.
    pub fn start_with(args: &[&str]) -> Mock {
        let mut cmd = Command::new(mock_bin());
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        let mut proc = Proc::spawn_reading_stdout("raster-mock", cmd);
        let line = proc
            .wait_line(Duration::from_secs(15), |_| true)
            .unwrap_or_else(|why| {
                panic!("raster-mock did not start ({why:?}):\n{}", proc.output())
            });
        let addr = parse_listening(&line).unwrap_or_else(|| {
            panic!("raster-mock's first line is not `listening on ADDR`: {line:?}")
        });
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
    /// How [`Edge::url`] and [`Edge::client`] reach the proxy listener.
    pub transport: Transport,
}

/// `GET probe` on `admin` answered 200.
fn answers_200(admin: SocketAddr, probe: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_millis(100)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(
        format!("GET {probe} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

impl Edge {
    /// Starts the gateway in front of `upstream` with `toml` as its config file (the listen
    /// addresses and upstream come from the CLI flags, which override the file).
    pub fn start(upstream: &str, toml: &str) -> Edge {
        Edge::start_checked(upstream, toml).unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Edge::start`] speaking `transport` (its config lines go before `toml`).
    pub fn start_over(transport: Transport, upstream: &str, toml: &str) -> Edge {
        let toml = format!("{}{toml}", transport.toml());
        let mut edge = Edge::start(upstream, &toml);
        edge.transport = transport;
        edge
    }

    /// Like [`Edge::start`], `None` when the gateway does not become ready.
    pub fn try_start(upstream: &str, toml: &str) -> Option<Edge> {
        Edge::start_checked(upstream, toml).ok()
    }

    /// Starts the gateway and waits only for its admin listener (`/healthz`), for tests of a
    /// gateway that is up but not ready.
    pub fn start_unready(upstream: &str, toml: &str) -> Edge {
        let edge =
            Edge::start_until(upstream, toml, "/healthz").unwrap_or_else(|why| panic!("{why}"));
        // The admin listener can be up before the proxy listener.
        assert!(
            wait_for_port(edge.addr, Duration::from_secs(15)),
            "proxy listener"
        );
        edge
    }

    /// Starts the gateway, retrying on fresh ports when it loses one to another process; the
    /// error carries the gateway's output.
    pub fn start_checked(upstream: &str, toml: &str) -> Result<Edge, String> {
        Edge::start_until(upstream, toml, "/readyz")
    }

    /// Starts the gateway and waits until `GET probe` on its admin listener answers 200.
    fn start_until(upstream: &str, toml: &str, probe: &str) -> Result<Edge, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("raster-edge.toml");
        std::fs::File::create(&config)
            .and_then(|mut f| f.write_all(toml.as_bytes()))
            .expect("write config");
        let runtime = dir.path().to_path_buf();
        let up = retry_on_port_race("raster-edge", || {
            let (proxy, admin) = (reserve(), reserve());
            let mut cmd = Command::new(edge_bin());
            cmd.arg("--config")
                .arg(&config)
                .arg("--listen")
                .arg(proxy.addr().to_string())
                .arg("--admin-listen")
                .arg(admin.addr().to_string())
                .arg("--upstream")
                .arg(upstream)
                .env("RASTER_EDGE_RUNTIME_DIR", &runtime);
            let (addr, admin) = (proxy.release(), admin.release());
            let mut proc = Proc::spawn("raster-edge", cmd);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Some(code) = proc.exited() {
                    let out = proc.output();
                    return if lost_port(&out, &[addr, admin]) {
                        Attempt::PortTaken
                    } else {
                        Attempt::Failed(format!("raster-edge exited ({code:?}):\n{out}"))
                    };
                }
                // Alive after the probe too: a child that lost its admin port to another
                // process exits, whoever answered the probe.
                if answers_200(admin, probe) && proc.exited().is_none() {
                    return Attempt::Up((addr, admin, proc));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Attempt::Failed(format!(
                "raster-edge did not become ready on {admin}:\n{}",
                proc.output()
            ))
        })?;
        let (addr, admin, proc) = up;
        Ok(Edge {
            addr,
            admin,
            proc,
            dir,
            transport: Transport::Http1,
        })
    }

    pub fn url(&self, path: &str) -> String {
        self.transport.url(self.addr, path)
    }

    /// A client for the proxy listener over this gateway's transport.
    pub fn client(&self) -> reqwest::Client {
        self.transport.client(self.addr)
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

/// What `redis-server` logs (to stdout) once it accepts connections.
const REDIS_READY: &str = "Ready to accept connections";

fn redis_command(port: u16) -> Command {
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
    cmd
}

impl Redis {
    /// Starts Redis on a reserved port, retrying on a fresh one if another process takes the
    /// port between its release and Redis's bind (Redis then exits naming the address).
    pub fn start() -> Redis {
        retry_on_port_race("redis-server", || {
            let reserved = reserve();
            let cmd = redis_command(reserved.port());
            let addr = reserved.release();
            match Redis::spawn(addr.port(), cmd) {
                Ok(r) => Attempt::Up(r),
                Err(out) if lost_port(&out, &[addr]) => Attempt::PortTaken,
                Err(out) => Attempt::Failed(out),
            }
        })
        .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Starts Redis again on a port a test used before (to bring a stopped Redis back). No
    /// retry is possible on a fixed port: if another process took it meanwhile, this fails
    /// and says so.
    pub fn start_on(port: u16) -> Redis {
        Redis::spawn(port, redis_command(port)).unwrap_or_else(|out| panic!("{out}"))
    }

    /// Spawns Redis and waits for its ready line; the error is its output.
    fn spawn(port: u16, cmd: Command) -> Result<Redis, String> {
        let mut proc = Proc::spawn_reading_stdout("redis-server", cmd);
        match proc.wait_line(Duration::from_secs(10), |l| l.contains(REDIS_READY)) {
            Ok(_) => Ok(Redis { port, proc }),
            Err(why) => Err(format!(
                "redis-server did not start on port {port} ({why:?}):\n{}",
                proc.output()
            )),
        }
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

/// A TCP proxy between one client and a server (here: one gateway and its Redis) that the test
/// can cut and restore. Cut: every open connection is shut down and new ones are closed as soon
/// as they are accepted, so the client sees exactly what a network partition with resets looks
/// like while everyone else still reaches the server directly.
pub struct CutProxy {
    pub addr: SocketAddr,
    state: Arc<CutState>,
}

#[derive(Default)]
struct CutState {
    cut: std::sync::atomic::AtomicBool,
    open: Mutex<Vec<TcpStream>>,
    stop: std::sync::atomic::AtomicBool,
}

impl CutProxy {
    pub fn start(to: SocketAddr) -> CutProxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(CutState::default());
        let st = state.clone();
        std::thread::Builder::new()
            .name("cut-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(down) = conn else { continue };
                    if st.cut.load(Ordering::Acquire) {
                        let _ = down.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    let Ok(up) = TcpStream::connect(to) else {
                        continue;
                    };
                    let (Ok(d2), Ok(u2)) = (down.try_clone(), up.try_clone()) else {
                        continue;
                    };
                    {
                        let mut open = st.open.lock().unwrap_or_else(|e| e.into_inner());
                        open.extend([d2, u2]);
                    }
                    let pipe = |mut from: TcpStream, mut to: TcpStream| {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                            let _ = from.shutdown(std::net::Shutdown::Both);
                        });
                    };
                    let (Ok(d3), Ok(u3)) = (down.try_clone(), up.try_clone()) else {
                        continue;
                    };
                    pipe(down, u3);
                    pipe(up, d3);
                }
            })
            .expect("spawn the proxy");
        CutProxy { addr, state }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Cuts every connection through the proxy, and every new one until [`Self::restore`].
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.state.cut.store(true, Ordering::Release);
        let mut open = self.state.open.lock().unwrap_or_else(|e| e.into_inner());
        for s in open.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.state
            .cut
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.state.stop.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}
