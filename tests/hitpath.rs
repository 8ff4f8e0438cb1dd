//! The hit path below pingora-proxy (`src/hitpath/`), over raw sockets against the real
//! `raster-edge` binary: its answers are the proxy's byte for byte (but the origin's `Date`),
//! pipelined requests are answered in order across the hand-offs to the proxy, a head that
//! trickles in is cut off after `server.header_timeout`, and hits served there are rate-limited,
//! counted and logged as everywhere else.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Edge, Mock, RawOrigin, RASTER_ROUTES_60S};

const BCN: &str = "/organizations/monogram-labs/libraries/barcelona/assets";
const READ: &str = "Authorization: Bearer demo-read\r\nApi-Version: 2026-05-20\r\n";
/// Longest any one exchange may take: a hang is a failure, not a slow test.
const DEADLINE: Duration = Duration::from_secs(8);

fn config(extra: &str) -> String {
    format!("[rate_limit]\nenabled = false\n{extra}\n{RASTER_ROUTES_60S}")
}

#[derive(Debug)]
struct Resp {
    status: u16,
    /// The header lines in wire order, as sent.
    lines: Vec<String>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn x_cache(&self) -> &str {
        self.header("x-cache").unwrap_or("")
    }
}

/// A raw HTTP/1.1 connection: writes bytes, reads whole responses in order.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response (`head_only`: the request was HEAD, no body follows).
    fn response(&mut self, head_only: bool) -> Resp {
        let started = Instant::now();
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(started.elapsed() < DEADLINE, "no response head in time");
            assert!(self.fill(), "closed before a response: {:?}", self.buf);
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).expect("ascii head");
        let mut lines = head.split("\r\n").map(str::to_string);
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let lines: Vec<String> = lines.collect();
        let mut r = Resp {
            status,
            lines,
            body: Vec::new(),
        };
        let len: usize = if head_only || status == 304 {
            0
        } else {
            r.header("content-length")
                .expect("content-length")
                .parse()
                .unwrap()
        };
        self.buf.drain(..end + 4);
        while self.buf.len() < len {
            assert!(self.fill(), "closed inside a body");
        }
        r.body = self.buf.drain(..len).collect();
        r
    }

    fn get(&mut self, path: &str) -> Resp {
        self.send(get(path).as_bytes());
        self.response(false)
    }

    /// Whether the server closed the connection (within `wait`) with nothing more to read.
    fn closed_within(&mut self, wait: Duration) -> bool {
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 64];
        let closed = matches!(self.s.read(&mut b), Ok(0));
        self.s.set_read_timeout(Some(DEADLINE)).unwrap();
        closed
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: edge\r\n{READ}\r\n")
}

fn page(n: u32) -> String {
    format!("{BCN}?pageSize={n}")
}

/// Every header line of `r` with the values that move with the clock replaced.
fn normalised(r: &Resp) -> Vec<String> {
    r.lines
        .iter()
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            let v = v.trim();
            match k.to_ascii_lowercase().as_str() {
                "date" => format!("{k}: <date>"),
                "age" => format!("{k}: <age>"),
                "cache-status" => format!("{k}: {}", &v[..v.find("ttl=").unwrap_or(v.len())]),
                "x-ratelimit-reset" | "ratelimit" => format!("{k}: <reset>"),
                _ => l.clone(),
            }
        })
        .collect()
}

/// An origin that dates its responses in the past: a hit that keeps the origin's `Date` shows
/// it; one stamped by Pingora's writer shows the current time.
fn dated_origin() -> RawOrigin {
    RawOrigin::start(|head| {
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let body = serde_json::json!({ "data": { "path": path } }).to_string();
        Some(
            format!(
                "HTTP/1.1 200 OK\r\ndate: Tue, 01 Dec 2026 10:00:00 GMT\r\ncontent-type: application/json\r\netag: \"v1\"\r\nvary: Api-Version\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    })
}

#[test]
fn hits_are_the_proxys_byte_for_byte_but_keep_the_origins_date() {
    let origin = dated_origin();
    let hit = Edge::start(&origin.url(), &config(""));
    let proxy = Edge::start(&origin.url(), &config("[server]\nhit_path = false"));
    let path = page(3);
    let mut a = Conn::open(hit.addr);
    let mut b = Conn::open(proxy.addr);
    assert_eq!(a.get(&path).x_cache(), "MISS");
    assert_eq!(b.get(&path).x_cache(), "MISS");
    let head = format!("HEAD {path} HTTP/1.1\r\nHost: edge\r\n{READ}\r\n");
    let cond = format!("GET {path} HTTP/1.1\r\nHost: edge\r\n{READ}If-None-Match: \"v1\"\r\n\r\n");
    for (req, head_only) in [(get(&path), false), (head, true), (cond, false)] {
        a.send(req.as_bytes());
        b.send(req.as_bytes());
        let (x, y) = (a.response(head_only), b.response(head_only));
        assert_eq!(x.status, y.status, "{req}");
        assert_eq!(x.x_cache(), "HIT", "{req}");
        assert_eq!(normalised(&x), normalised(&y), "{req}");
        assert_eq!(x.body, y.body, "{req}");
        // The hit path keeps the origin's Date (RFC 9111 §4.2.3); Pingora's writer stamps now.
        assert_eq!(
            x.header("date"),
            Some("Tue, 01 Dec 2026 10:00:00 GMT"),
            "{req}"
        );
        assert_ne!(
            y.header("date"),
            Some("Tue, 01 Dec 2026 10:00:00 GMT"),
            "{req}"
        );
    }
    assert_eq!(origin.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn pipelined_requests_are_answered_in_order_across_hand_offs() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(""));
    let mut c = Conn::open(edge.addr);
    for n in [1, 2, 3] {
        assert_eq!(c.get(&page(n)).status, 200);
    }
    // Three hits written at once.
    c.send(format!("{}{}{}", get(&page(1)), get(&page(2)), get(&page(3))).as_bytes());
    let mut bodies = Vec::new();
    for n in [1, 2, 3] {
        let r = c.response(false);
        assert_eq!((r.status, r.x_cache()), (200, "HIT"), "page {n}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), n, "page {n} in order");
        bodies.push(r.body);
    }
    // A hit, then a miss (to the proxy with the bytes already read), then a hit again, then a
    // miss followed by a hit in one write (the proxy reads the hit behind its miss).
    c.send(format!("{}{}", get(&page(1)), get(&page(4))).as_bytes());
    let (h, m) = (c.response(false), c.response(false));
    assert_eq!((h.x_cache(), h.body.clone()), ("HIT", bodies[0].clone()));
    assert_eq!((m.status, m.x_cache()), (200, "MISS"));
    assert_eq!(c.get(&page(2)).x_cache(), "HIT");
    c.send(format!("{}{}{}", get(&page(5)), get(&page(3)), get(&page(4))).as_bytes());
    let r: Vec<Resp> = (0..3).map(|_| c.response(false)).collect();
    assert_eq!(
        r.iter().map(|r| r.x_cache()).collect::<Vec<_>>(),
        ["MISS", "HIT", "HIT"]
    );
    assert_eq!(r[1].body, bodies[2]);
    // And the connection goes on.
    assert_eq!(c.get(&page(1)).body, bodies[0]);
}

#[test]
fn a_trickled_head_is_cut_off_after_the_header_timeout() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config("[server]\nheader_timeout = \"1s\""));
    // Warm a hit and keep a normal connection open next to the slow one.
    let mut ok = Conn::open(edge.addr);
    assert_eq!(ok.get(&page(2)).status, 200);

    let mut slow = Conn::open(edge.addr);
    let started = Instant::now();
    slow.send(b"GET / HTTP/1.1\r\nHost: edge\r\n");
    let mut answer = None;
    for i in 0.. {
        if started.elapsed() > DEADLINE {
            break;
        }
        // One byte every 100 ms: each read is quick, the head never ends.
        if slow
            .s
            .write_all(format!("X-{i}: y\r\n").as_bytes())
            .is_err()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        slow.s.set_nonblocking(true).unwrap();
        let got = slow.fill();
        slow.s.set_nonblocking(false).unwrap();
        if got && slow.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            answer = Some(slow.response(false));
            break;
        }
    }
    let took = started.elapsed();
    let r = answer.expect("an answer to the slow head");
    assert_eq!(r.status, 408);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "REQUEST_TIMEOUT");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(slow.closed_within(Duration::from_secs(2)));

    // A connection that never sends anything is closed without an answer.
    let mut silent = Conn::open(edge.addr);
    assert!(silent.closed_within(Duration::from_secs(3)));
    assert!(silent.buf.is_empty());

    // The others were not affected.
    assert_eq!(ok.get(&page(2)).x_cache(), "HIT");
    assert_eq!(Conn::open(edge.addr).get(&page(2)).x_cache(), "HIT");
}

#[test]
fn a_head_that_never_ends_is_refused_at_pingoras_bound() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(""));
    let mut c = Conn::open(edge.addr);
    // Over max_header_size (32 KiB) but unfinished: read on; past 1 MiB: refused, closed.
    let mut big = b"GET / HTTP/1.1\r\nHost: edge\r\nX-Big: ".to_vec();
    big.resize((1 << 20) + 100, b'a');
    c.send(&big);
    let r = c.response(false);
    assert_eq!(r.status, 400);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "BAD_REQUEST");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(3)));
    assert_eq!(Conn::open(edge.addr).get(&page(2)).status, 200);
}

#[tokio::test]
async fn hits_served_below_the_proxy_are_rate_limited_counted_and_logged() {
    let mock = Mock::start();
    let edge = Edge::start(
        &mock.url(),
        &format!(
            "[rate_limit]\nenabled = true\nrate = 1\nburst = 3\ncount = \"all\"\n[log]\naccess_log = true\n{RASTER_ROUTES_60S}"
        ),
    );
    let path = page(2);
    let mut c = Conn::open(edge.addr);
    let statuses: Vec<(u16, String)> = (0..6)
        .map(|_| {
            let r = c.get(&path);
            (r.status, r.x_cache().to_string())
        })
        .collect();
    // 1 miss + 2 hits within the burst of 3, then refusals (on the same connection).
    assert_eq!(statuses[0], (200, "MISS".to_string()));
    assert_eq!(&statuses[1..3], &[(200, "HIT".into()), (200, "HIT".into())]);
    assert!(statuses[3..].iter().all(|(s, _)| *s == 429), "{statuses:?}");
    let r = c.get(&path);
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some(), "{:?}", r.lines);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "RATE_LIMITED");

    let hits = edge
        .metric(
            "raster_edge_requests_total",
            &[("cache", "HIT"), ("route", "assets")],
        )
        .await;
    assert_eq!(hits, 2.0);
    let refused = edge
        .metric(
            "raster_edge_edge_rejections_total",
            &[("code", "RATE_LIMITED")],
        )
        .await;
    assert_eq!(refused, 4.0);
    // One access-log line per request, hits included.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = edge.proc.output();
        let lines = log.matches("raster_edge::access").count();
        if lines >= 7 {
            assert!(log.contains("HIT"), "{log}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{lines} access-log lines:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
