//! Hostile and malformed input, as raw bytes over a TCP socket to the real `raster-edge` in front
//! of `raster-mock`. One table ([`corpus`]) names, for every case, the answers it must get (the
//! gateway's envelope with a precise code, Pingora's own parser refusal where our code never
//! runs, or the origin's own answer), whether the connection must close, and follow-up requests
//! that prove nothing was stored under another key, version or scope. After every case a normal
//! request on a fresh connection must be served, and the gateway must still be running.
//!
//! The five defects of the hardening issue each have their own test below the corpus.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Edge, Mock, RASTER_ROUTES_60S};
use serde_json::Value;

const ORG: &str = "/organizations/monogram-labs";
const BCN: &str = "/organizations/monogram-labs/libraries/barcelona/assets";
const LIS: &str = "/organizations/monogram-labs/libraries/lisbon/assets";
const READ: &str = "Authorization: Bearer demo-read\r\nApi-Version: 2026-05-20\r\n";
const WRITE: &str = "Authorization: Bearer demo-write\r\nApi-Version: 2026-05-20\r\n";

/// Longest the test waits for any one exchange: well under every configured timeout, so a hang
/// is a failure, not a slow test.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(8);
/// How long a connection that should stay open is watched for a close.
const OPEN_GRACE: Duration = Duration::from_millis(300);

fn config() -> String {
    format!("[rate_limit]\nenabled = false\n{RASTER_ROUTES_60S}")
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: writes bytes, parses every response that comes back.

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The gateway's own envelope: JSON `error.code`, `no-store`, and no `Vary` (every
    /// raster-mock answer varies on Api-Version).
    fn envelope_code(&self) -> Option<String> {
        if self.header("vary").is_some() || self.header("cache-control") != Some("no-store") {
            return None;
        }
        Some(self.json()?["error"]["code"].as_str()?.to_string())
    }

    fn is_from_origin(&self) -> bool {
        self.header("vary")
            .is_some_and(|v| v.to_ascii_lowercase().contains("api-version"))
    }

    fn cache(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    fn page_len(&self) -> Option<usize> {
        self.json()?["data"].as_array().map(Vec::len)
    }
}

#[derive(Debug)]
struct Exchange {
    responses: Vec<Resp>,
    /// Interim 1xx responses seen (not in `responses`).
    interim: usize,
    closed: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One response from the front of `buf`: `Some((resp, consumed))` when complete.
fn parse_one(buf: &[u8], head_request: bool) -> Option<(Resp, usize)> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end - 4]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut resp = Resp {
        status,
        headers: headers.clone(),
        body: Vec::new(),
    };
    if head_request || status < 200 || status == 204 || status == 304 {
        return Some((resp, end));
    }
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut at = end;
        loop {
            let line_end = at + find(&buf[at..], b"\r\n")?;
            let size_str = String::from_utf8_lossy(&buf[at..line_end]).to_string();
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                let trailer_end = at + find(&buf[at..], b"\r\n")?;
                // Trailers end with an empty line; without trailers that is right here.
                if trailer_end == at {
                    return Some((resp, at + 2));
                }
                let all = at + find(&buf[at..], b"\r\n\r\n")? + 4;
                return Some((resp, all));
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            resp.body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    let len: usize = get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if buf.len() < end + len {
        return None;
    }
    resp.body = buf[end..end + len].to_vec();
    Some((resp, end + len))
}

/// Writes `req` in one go and reads until `want` final responses arrived (then watches the
/// connection for [`OPEN_GRACE`] to see whether it closes), until the peer closes, or until the
/// deadline. `head_first`: the first response answers a HEAD (no body).
fn exchange(addr: SocketAddr, req: &[u8], want: usize, head_first: bool) -> Exchange {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // The gateway may refuse and close before reading everything: a failed write is an answer
    // like any other, what counts is what comes back.
    let _ = s.write_all(req);
    let mut buf = Vec::new();
    let mut out = Exchange {
        responses: Vec::new(),
        interim: 0,
        closed: false,
    };
    let deadline = Instant::now() + EXCHANGE_DEADLINE;
    let mut grace_until: Option<Instant> = None;
    let mut chunk = [0u8; 65536];
    loop {
        // Parse everything complete so far.
        loop {
            let head = head_first && out.responses.is_empty();
            match parse_one(&buf, head) {
                Some((r, used)) => {
                    buf.drain(..used);
                    if r.status < 200 {
                        out.interim += 1;
                    } else {
                        out.responses.push(r);
                    }
                }
                None => break,
            }
        }
        if out.responses.len() >= want && grace_until.is_none() {
            grace_until = Some(Instant::now() + OPEN_GRACE);
        }
        let now = Instant::now();
        if grace_until.is_some_and(|g| now >= g) || now >= deadline {
            return out;
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                out.closed = true;
                return out;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                out.closed = true;
                return out;
            }
        }
    }
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: edge\r\n{READ}{extra}\r\n").into_bytes()
}

fn line(request_line: &str, headers: &str) -> Vec<u8> {
    format!("{request_line}\r\nHost: edge\r\n{headers}\r\n").into_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------------
// The table.

/// One expected response.
#[derive(Debug, Clone)]
enum Want {
    /// The gateway's envelope with this status and code.
    Env(u16, &'static str),
    /// Pingora's own parser refusal (no hook of ours runs first, so no envelope; see
    /// docs/SECURITY.md).
    Pingora(u16),
    /// The origin's own answer with this status.
    Origin(u16),
    /// The origin's answer, whatever its status (the case is about what the gateway forwards).
    OriginAny,
    /// A 200 page of `n` assets from the origin or the cache, with this cache outcome.
    Page(usize, Cache),
    /// 200 from the origin whose body contains this text.
    Body(&'static str),
    /// Served from the cache, whatever it is (a probe of what a case stored).
    Cached,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cache {
    Hit,
    Miss,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Conn {
    Close,
    Open,
    Either,
}

/// A request on a fresh connection after the case and what it must get: proves where (under
/// which key, path and version) the case's response was stored, or that it was not.
#[derive(Debug, Clone)]
struct Probe {
    req: Vec<u8>,
    want: Want,
}

struct Case {
    name: &'static str,
    req: Vec<u8>,
    want: Vec<Want>,
    conn: Conn,
    head_first: bool,
    /// Requests made before the case (to warm the cache).
    warm: Vec<Vec<u8>>,
    probes: Vec<Probe>,
}

fn case(name: &'static str, req: Vec<u8>, want: Want, conn: Conn) -> Case {
    Case {
        name,
        req,
        want: vec![want],
        conn,
        head_first: false,
        warm: Vec::new(),
        probes: Vec::new(),
    }
}

impl Case {
    fn probe(mut self, req: Vec<u8>, want: Want) -> Self {
        self.probes.push(Probe { req, want });
        self
    }

    fn warm(mut self, req: Vec<u8>) -> Self {
        self.warm.push(req);
        self
    }

    fn then(mut self, want: Want) -> Self {
        self.want.push(want);
        self
    }

    fn head_first(mut self) -> Self {
        self.head_first = true;
        self
    }
}

/// `{BCN}?pageSize={n}`: each case that touches the cache uses its own page size, so cases
/// never see each other's entries.
fn page(n: usize) -> String {
    format!("{BCN}?pageSize={n}")
}

#[rustfmt::skip]
fn corpus() -> Vec<Case> {
    use Cache::*;
    use Conn::*;
    use Want::*;
    let big = |n: usize| "a".repeat(n);
    let post = |path: &str, headers: &str, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: edge\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    };
    let tag_lisbon = r#"{"assetIds":["lis-0001"],"tags":["corpus"]}"#;
    vec![
        // --- Request smuggling and framing -------------------------------------------------
        case("cl_and_te", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(), Env(400, "BAD_REQUEST"), Close),
        case("te_and_cl", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n").into_bytes(), Env(400, "BAD_REQUEST"), Close),
        case("two_different_content_lengths", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd").into_bytes(), Pingora(400), Close),
        case("two_equal_content_lengths", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Content-Length: 2\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes(), Env(400, "BAD_REQUEST"), Close),
        case("content_length_list", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Content-Length: 2, 2\r\n\r\n{{}}").into_bytes(), Env(400, "BAD_REQUEST"), Close),
        case("content_length_negative", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Content-Length: -1\r\n\r\n").into_bytes(), Pingora(400), Close),
        case("content_length_plus_sign", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Content-Length: +2\r\n\r\n{{}}").into_bytes(), Pingora(400), Close),
        case("te_chunked_then_identity", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n").into_bytes(), Pingora(400), Close),
        case("te_identity_then_chunked", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n").into_bytes(), Env(400, "BAD_REQUEST"), Close),
        case("te_two_lines", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(), Env(400, "BAD_REQUEST"), Close),
        case("te_xchunked", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n").into_bytes(), Pingora(400), Close),
        case("te_on_http10", format!("POST {LIS}/tag HTTP/1.0\r\nHost: edge\r\n{WRITE}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(), Pingora(400), Close),
        case("obs_fold", get(&page(13), "X-Note: first\r\n  folded\r\n"), Pingora(400), Close),
        case("bare_lf_everywhere", format!("GET {} HTTP/1.1\nHost: edge\nAuthorization: Bearer demo-read\nApi-Version: 2026-05-20\n\n", page(14)).into_bytes(), Env(400, "BAD_REQUEST"), Close),
        case("bare_lf_one_line", format!("GET {} HTTP/1.1\r\nHost: edge\r\nX-Note: 1\n{READ}\r\n", page(15)).into_bytes(), Env(400, "BAD_REQUEST"), Close),
        case("space_before_colon", format!("GET {} HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer demo-read\r\nApi-Version : 2026-05-20\r\n\r\n", page(16)).into_bytes(), Pingora(400), Close),
        case("tab_before_colon", format!("GET {} HTTP/1.1\r\nHost: edge\r\nAuthorization\t: Bearer demo-read\r\nApi-Version: 2026-05-20\r\n\r\n", page(17)).into_bytes(), Pingora(400), Close),
        case("space_in_header_name", get(&page(18), "X Note: 1\r\n"), Pingora(400), Close),
        case("chunked_body_smuggles_reserved_path", cat(&[format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{tag_lisbon}\r\n0\r\n\r\n", tag_lisbon.len()).as_bytes(), b"GET /metrics HTTP/1.1\r\nHost: edge\r\n\r\n"]), Origin(200), Open).then(Env(404, "ENDPOINT_NOT_FOUND")),
        case("chunk_size_not_hex", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n").into_bytes(), Env(400, "BAD_REQUEST"), Close),
        case("content_length_over_max_body", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Content-Length: 999999999999\r\n\r\n").into_bytes(), Env(413, "PAYLOAD_TOO_LARGE"), Either),

        // --- Duplicate or conflicting credentials, version, host -----------------------------
        case("two_authorization_headers", get(&page(22), "Authorization: Bearer demo-write\r\n"), Env(400, "BAD_REQUEST"), Close)
            .probe(format!("GET {} HTTP/1.1\r\nHost: edge\r\n{WRITE}\r\n", page(22)).into_bytes(), Page(22, Miss)),
        case("two_equal_authorization_headers", get(&page(23), "Authorization: Bearer demo-read\r\n"), Env(400, "BAD_REQUEST"), Close),
        case("two_api_versions", get(&page(24), "Api-Version: 2020-01-01\r\n"), Env(400, "BAD_REQUEST"), Close)
            .probe(get(&page(24), ""), Page(24, Miss)),
        case("two_hosts", format!("GET {} HTTP/1.1\r\nHost: edge\r\nHost: other.example\r\n{READ}\r\n", page(25)).into_bytes(), Pingora(400), Close),
        case("host_differs_from_absolute_target", format!("GET http://other.example{} HTTP/1.1\r\nHost: edge\r\n{READ}\r\n", page(26)).into_bytes(), Pingora(400), Close),
        case("host_with_userinfo", format!("GET {} HTTP/1.1\r\nHost: user@edge\r\n{READ}\r\n", page(27)).into_bytes(), Pingora(400), Close),
        case("authorization_list_in_one_line", line(&format!("GET {} HTTP/1.1", page(28)), "Authorization: Bearer demo-read, Bearer demo-write\r\nApi-Version: 2026-05-20\r\n"), Env(401, "UNAUTHENTICATED"), Open),

        // --- Bearer tokens --------------------------------------------------------------------
        case("bearer_empty", line(&format!("GET {} HTTP/1.1", page(29)), "Authorization: Bearer\r\nApi-Version: 2026-05-20\r\n"), Env(401, "UNAUTHENTICATED"), Open),
        case("bearer_only_spaces", line(&format!("GET {} HTTP/1.1", page(30)), "Authorization: Bearer    \r\nApi-Version: 2026-05-20\r\n"), Env(401, "UNAUTHENTICATED"), Open),
        case("basic_scheme", line(&format!("GET {} HTTP/1.1", page(31)), "Authorization: Basic ZGVtbzpyZWFk\r\nApi-Version: 2026-05-20\r\n"), Env(401, "UNAUTHENTICATED"), Open),
        case("bearer_two_tokens", line(&format!("GET {} HTTP/1.1", page(32)), "Authorization: Bearer demo-read extra\r\nApi-Version: 2026-05-20\r\n"), Env(401, "UNAUTHENTICATED"), Open),
        case("bearer_20k_token", line(&format!("GET {} HTTP/1.1", page(33)), &format!("Authorization: Bearer {}\r\nApi-Version: 2026-05-20\r\n", big(20_000))), Origin(401), Open),
        case("bearer_40k_token", line(&format!("GET {} HTTP/1.1", page(34)), &format!("Authorization: Bearer {}\r\nApi-Version: 2026-05-20\r\n", big(40_000))), Env(431, "REQUEST_HEADER_FIELDS_TOO_LARGE"), Close),
        case("no_authorization", line(&format!("GET {} HTTP/1.1", page(35)), "Api-Version: 2026-05-20\r\n"), Env(401, "UNAUTHENTICATED"), Open),
        case("bearer_lowercase_scheme", line(&format!("GET {} HTTP/1.1", page(36)), "Authorization: bearer demo-read\r\nApi-Version: 2026-05-20\r\n"), Page(36, Miss), Open),
        case("bearer_non_ascii", cat(&[format!("GET {} HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer d", page(37)).as_bytes(), b"\xc3\xa9mo\r\nApi-Version: 2026-05-20\r\n\r\n"]), Env(401, "UNAUTHENTICATED"), Open),
        case("no_api_version", line(&format!("GET {} HTTP/1.1", page(38)), "Authorization: Bearer demo-read\r\n"), Env(400, "API_VERSION_REQUIRED"), Open),

        // --- Control and non-ASCII bytes ------------------------------------------------------
        case("nul_in_header_value", cat(&[format!("GET {} HTTP/1.1\r\nHost: edge\r\n{READ}X-Note: a", page(39)).as_bytes(), b"\x00b\r\n\r\n"]), Pingora(400), Close),
        case("ctl_in_header_value", cat(&[format!("GET {} HTTP/1.1\r\nHost: edge\r\n{READ}X-Note: a", page(40)).as_bytes(), b"\x01b\r\n\r\n"]), Pingora(400), Close),
        case("del_in_header_value", cat(&[format!("GET {} HTTP/1.1\r\nHost: edge\r\n{READ}X-Note: a", page(41)).as_bytes(), b"\x7fb\r\n\r\n"]), Pingora(400), Close),
        case("cr_in_header_value", cat(&[format!("GET {} HTTP/1.1\r\nHost: edge\r\n{READ}X-Note: a", page(42)).as_bytes(), b"\rb\r\n\r\n"]), Pingora(400), Close),
        case("utf8_in_header_value", cat(&[format!("GET {} HTTP/1.1\r\nHost: edge\r\n{READ}X-Note: caf", page(43)).as_bytes(), b"\xc3\xa9\r\n\r\n"]), Page(43, Miss), Open),
        case("latin1_in_api_version", cat(&[format!("GET {} HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer demo-read\r\nApi-Version: 2026-05-20", page(44)).as_bytes(), b"\xe9\r\n\r\n"]), OriginAny, Open)
            .probe(get(&page(44), ""), Page(44, Miss)),
        case("non_ascii_in_path", cat(&[b"GET /organizations/monogram-labs/libraries/barcel\xc3\xb3na/assets HTTP/1.1\r\nHost: edge\r\n", READ.as_bytes(), b"\r\n"]), Env(400, "BAD_REQUEST"), Close),
        case("ctl_in_path", cat(&[b"GET /me\x01 HTTP/1.1\r\nHost: edge\r\n", READ.as_bytes(), b"\r\n"]), Env(400, "BAD_REQUEST"), Close),
        case("encoded_nul_in_path", get("/me%00", ""), Env(400, "BAD_REQUEST"), Close),
        case("space_in_path_is_escaped_by_pingora", get("/organizations/monogram labs/libraries", ""), Origin(404), Open),

        // --- Sizes --------------------------------------------------------------------------
        case("header_70k", get(&page(46), &format!("X-Big: {}\r\n", big(70_000))), Env(431, "REQUEST_HEADER_FIELDS_TOO_LARGE"), Close),
        case("headers_40_times_1k", get(&page(47), &(0..40).map(|i| format!("X-H{i}: {}\r\n", big(1000))).collect::<String>()), Env(431, "REQUEST_HEADER_FIELDS_TOO_LARGE"), Close),
        case("header_30k_under_limit", get(&page(48), &format!("X-Big: {}\r\n", big(30_000))), Page(48, Miss), Open),
        case("headers_100", get(&page(49), &(0..100).map(|i| format!("X-H{i}: {i}\r\n")).collect::<String>()), Env(431, "REQUEST_HEADER_FIELDS_TOO_LARGE"), Close),
        case("headers_300_past_pingora", get(&page(50), &(0..300).map(|i| format!("X-H{i}: {i}\r\n")).collect::<String>()), Pingora(400), Close),
        case("headers_60_under_limit", get(&page(51), &(0..55).map(|i| format!("X-H{i}: {i}\r\n")).collect::<String>()), Page(51, Miss), Open),
        case("uri_9k", get(&format!("{}&x={}", page(52), big(9_000)), ""), Env(414, "URI_TOO_LONG"), Close),
        case("uri_7k_under_limit", get(&format!("/me?x={}", big(7_000)), ""), Body("organizationId"), Open),
        case("header_2mib_past_pingora", get(&page(54), &format!("X-Big: {}\r\n", big(2 << 20))), Pingora(400), Close),

        // --- Targets and methods --------------------------------------------------------------
        case("absolute_form_same_host", format!("GET http://edge{} HTTP/1.1\r\nHost: edge\r\n{READ}\r\n", page(55)).into_bytes(), Page(55, Miss), Open)
            .probe(get(&page(55), ""), Page(55, Hit)),
        case("asterisk_options", line("OPTIONS * HTTP/1.1", READ), Env(400, "BAD_REQUEST"), Close),
        case("asterisk_get", line("GET * HTTP/1.1", READ), Env(400, "BAD_REQUEST"), Close),
        case("authority_form_get", line("GET edge:80 HTTP/1.1", READ), Env(400, "BAD_REQUEST"), Close),
        case("connect", line("CONNECT edge:443 HTTP/1.1", READ), Pingora(405), Close),
        case("trace", line("TRACE /me HTTP/1.1", READ), Env(405, "METHOD_NOT_ALLOWED"), Open),
        case("unknown_method", line("FROB /me HTTP/1.1", READ), Env(405, "METHOD_NOT_ALLOWED"), Open),
        case("lowercase_method", line("get /me HTTP/1.1", READ), Env(405, "METHOD_NOT_ALLOWED"), Open),
        case("http10_without_host", format!("GET {} HTTP/1.0\r\n{READ}\r\n", page(63)).into_bytes(), Page(63, Miss), Close),
        case("http11_without_host", format!("GET {} HTTP/1.1\r\n{READ}\r\n", page(64)).into_bytes(), Env(400, "BAD_REQUEST"), Close),
        case("expect_100_continue", format!("POST {LIS}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{tag_lisbon}", tag_lisbon.len()).into_bytes(), Origin(200), Open),
        case("upgrade_websocket", get(&page(66), "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"), Page(66, Miss), Either),
        case("upgrade_h2c", get(&page(67), "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"), Page(67, Miss), Either),
        case("h2_prior_knowledge_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), Pingora(400), Close),
        case("http2_in_request_line", line("GET /me HTTP/2.0", READ), Pingora(400), Close),
        case("connection_close", get(&page(70), "Connection: close\r\n"), Page(70, Miss), Close),
        case("reserved_path", get("/metrics", ""), Env(404, "ENDPOINT_NOT_FOUND"), Open),

        // --- Pipelining -----------------------------------------------------------------------
        case("pipelined_three_gets", cat(&[&get(&page(72), ""), &get(&page(73), ""), &get(&page(74), "")]), Page(72, Miss), Open)
            .then(Page(73, Miss)).then(Page(74, Miss)),
        case("pipelined_hit_then_miss", cat(&[&get(&page(75), ""), &get(&page(76), "")]), Page(75, Hit), Open)
            .warm(get(&page(75), "")).then(Page(76, Miss)),
        case("pipelined_refused_then_served", cat(&[&line(&format!("GET {} HTTP/1.1", page(77)), "Api-Version: 2026-05-20\r\n"), &get(&page(77), "")]), Env(401, "UNAUTHENTICATED"), Open)
            .then(Page(77, Miss)),
        case("pipelined_malformed_first_closes", cat(&[&get(&page(78), "Authorization: Bearer demo-write\r\n"), &get(&page(79), "")]), Env(400, "BAD_REQUEST"), Close)
            .probe(get(&page(79), ""), Page(79, Miss)),
        case("pipelined_head_then_get", cat(&[&format!("HEAD {} HTTP/1.1\r\nHost: edge\r\n{READ}\r\n", page(80)).into_bytes(), &get(&page(80), "")]), OriginAny, Open)
            .warm(get(&page(80), "")).head_first().then(Page(80, Hit)),
        case("pipelined_head_miss_then_get", cat(&[&format!("HEAD {} HTTP/1.1\r\nHost: edge\r\n{READ}\r\n", page(84)).into_bytes(), &get(&page(84), "")]), OriginAny, Open)
            .head_first().then(Page(84, Any)),
        case("pipelined_post_then_get", cat(&[&post(&format!("{LIS}/tag"), WRITE, tag_lisbon), &get(&page(81), "")]), Origin(200), Open)
            .then(Page(81, Miss)),

        // --- Paths: encoding, dot-segments, slashes, fragments, queries -----------------------
        case("pct_encoded_unreserved_library", get(&format!("{ORG}/libraries/%62arcelona/assets?pageSize=82"), ""), Page(82, Miss), Open)
            .probe(get(&page(82), ""), Page(82, Hit)),
        case("pct_encoded_hyphen_lowercase_hex", get("/organizations/monogram%2dlabs/libraries/barcelona/assets?pageSize=83", ""), Page(83, Miss), Open)
            .probe(get(&page(83), ""), Page(83, Hit)),
        case("pct_reserved_lowercase_hex", get(&format!("{BCN}/bcn%2c0001"), ""), Origin(404), Open)
            .probe(get(&format!("{BCN}/bcn%2C0001"), ""), Cached),
        case("dot_segments_lisbon_to_barcelona", get(&format!("{ORG}/libraries/lisbon/../barcelona/assets?pageSize=85"), ""), Page(85, Miss), Open)
            .probe(get(&page(85), ""), Page(85, Hit))
            .probe(get(&format!("{LIS}?pageSize=85"), ""), Body("lis-")),
        case("single_dot_segments", get("/organizations/./monogram-labs/libraries/barcelona/./assets?pageSize=86", ""), Page(86, Miss), Open)
            .probe(get(&page(86), ""), Page(86, Hit)),
        case("encoded_dot_segments", get(&format!("{ORG}/libraries/lisbon/%2E%2E/barcelona/assets?pageSize=87"), ""), Page(87, Miss), Open)
            .probe(get(&page(87), ""), Page(87, Hit)),
        case("mixed_encoded_dot_segments", get(&format!("{ORG}/libraries/lisbon/.%2e/barcelona/assets?pageSize=88"), ""), Page(88, Miss), Open)
            .probe(get(&page(88), ""), Page(88, Hit)),
        case("dot_segments_above_root", get("/../me", ""), Env(400, "BAD_REQUEST"), Close),
        case("encoded_dot_segments_above_root", get("/%2e%2e/%2e%2e/me", ""), Env(400, "BAD_REQUEST"), Close),
        case("encoded_slash", get(&format!("{ORG}/libraries/barcelona%2Fassets"), ""), Env(400, "BAD_REQUEST"), Close),
        case("encoded_slash_lowercase", get(&format!("{ORG}/libraries%2fbarcelona/assets"), ""), Env(400, "BAD_REQUEST"), Close),
        case("double_encoded_slash_kept", get(&format!("{ORG}/libraries/barcelona%252Fassets"), ""), Origin(404), Open),
        case("double_slashes_merged", get("/organizations//monogram-labs/libraries/barcelona//assets?pageSize=95", ""), Page(95, Miss), Open)
            .probe(get(&page(95), ""), Page(95, Hit)),
        case("trailing_slash_is_another_resource", get(&format!("{BCN}/?pageSize=96"), ""), OriginAny, Open)
            .probe(get(&page(96), ""), Page(96, Miss)),
        case("malformed_percent_encoding", get(&format!("{ORG}/libraries/%zzarcelona/assets"), ""), Env(400, "BAD_REQUEST"), Close),
        case("truncated_percent_encoding", get(&format!("{ORG}/libraries/barcelona%2"), ""), Env(400, "BAD_REQUEST"), Close),
        case("dot_segments_to_reserved_path", get("/organizations/../metrics", ""), Env(404, "ENDPOINT_NOT_FOUND"), Open),
        case("encoded_reserved_path", get("/%5F_mock/stats", ""), Env(404, "ENDPOINT_NOT_FOUND"), Open),
        case("fragment_dropped", get(&format!("{}#fragment", page(19)), ""), Page(19, Miss), Open)
            .probe(get(&page(19), ""), Page(19, Hit)),
        case("query_order_is_part_of_the_key", get(&format!("{BCN}?page=1&pageSize=20"), ""), Page(20, Miss), Open)
            .probe(get(&format!("{BCN}?pageSize=20&page=1"), ""), Page(20, Miss))
            .probe(get(&format!("{BCN}?page=1&pageSize=20"), ""), Page(20, Hit)),
        case("backslash_in_path", get(&format!("{ORG}/libraries\\barcelona/assets"), ""), Env(400, "BAD_REQUEST"), Close),
        case("empty_query", get("/me?", ""), Body("organizationId"), Open),
    ]
}

/// Checks one response against what the case wants.
fn check(name: &str, i: usize, r: &Resp, want: &Want) {
    let ctx = || {
        format!(
            "{name}: response {i}: {} {:?} {}",
            r.status,
            r.headers,
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        )
    };
    match want {
        Want::Cached => assert!(r.cache().contains("; hit"), "{}", ctx()),
        Want::Env(status, code) => {
            assert_eq!(r.status, *status, "{}", ctx());
            assert_eq!(r.envelope_code().as_deref(), Some(*code), "{}", ctx());
        }
        Want::Pingora(status) => {
            assert_eq!(r.status, *status, "{}", ctx());
            assert!(!r.is_from_origin(), "{}", ctx());
        }
        Want::Origin(status) => {
            assert_eq!(r.status, *status, "{}", ctx());
            assert!(r.is_from_origin(), "{}", ctx());
        }
        Want::OriginAny => assert!(r.is_from_origin(), "{}", ctx()),
        Want::Page(n, cache) => {
            assert_eq!(r.status, 200, "{}", ctx());
            assert_eq!(r.page_len(), Some(*n), "{}", ctx());
            let body = String::from_utf8_lossy(&r.body);
            assert!(body.contains("bcn-") && !body.contains("lis-"), "{}", ctx());
            match cache {
                Cache::Hit => assert!(r.cache().contains("; hit"), "{}", ctx()),
                Cache::Miss => assert!(r.cache().contains("fwd=uri-miss"), "{}", ctx()),
                Cache::Any => {}
            }
        }
        Want::Body(text) => {
            assert_eq!(r.status, 200, "{}", ctx());
            assert!(String::from_utf8_lossy(&r.body).contains(text), "{}", ctx());
        }
    }
}

#[test]
fn test_bad_input_corpus() {
    let mock = Mock::start();
    let mut edge = Edge::start(&mock.url(), &config());
    let cases = corpus();
    assert!(cases.len() >= 60, "the corpus has {} cases", cases.len());
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name {}", c.name);
    }
    // `BAD_INPUT_CASE=name` runs one case. Every case runs even after a failure, and the test
    // fails at the end naming all that failed.
    let only = std::env::var("BAD_INPUT_CASE").ok();
    let mut failed = Vec::new();
    for c in &cases {
        if only.as_deref().is_some_and(|o| o != c.name) {
            continue;
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(&edge, c)));
        if outcome.is_err() {
            failed.push(c.name);
        }
        assert!(
            edge.proc.wait_exit(Duration::ZERO).is_none(),
            "{}: raster-edge exited",
            c.name
        );
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

fn run_case(edge: &Edge, c: &Case) {
    {
        for w in &c.warm {
            let x = exchange(edge.addr, w, 1, false);
            assert_eq!(x.responses.len(), 1, "{}: warm-up answered", c.name);
        }
        let started = Instant::now();
        let x = exchange(edge.addr, &c.req, c.want.len(), c.head_first);
        assert!(
            started.elapsed() < EXCHANGE_DEADLINE,
            "{}: no answer within {EXCHANGE_DEADLINE:?}: {x:?}",
            c.name
        );
        assert_eq!(
            x.responses.len(),
            c.want.len(),
            "{}: responses {:?}",
            c.name,
            x.responses
                .iter()
                .map(|r| (r.status, String::from_utf8_lossy(&r.body).to_string()))
                .collect::<Vec<_>>()
        );
        for (i, (r, w)) in x.responses.iter().zip(&c.want).enumerate() {
            check(c.name, i, r, w);
        }
        match c.conn {
            Conn::Close => assert!(x.closed, "{}: the connection must close", c.name),
            Conn::Open => assert!(!x.closed, "{}: the connection must stay open", c.name),
            Conn::Either => {}
        }
        for (i, p) in c.probes.iter().enumerate() {
            let y = exchange(edge.addr, &p.req, 1, false);
            assert_eq!(y.responses.len(), 1, "{}: probe {i} answered", c.name);
            check(c.name, 100 + i, &y.responses[0], &p.want);
        }
        // The next normal request on a fresh connection is served, and the gateway lives.
        let y = exchange(edge.addr, &get(&page(3), ""), 1, false);
        assert_eq!(y.responses.len(), 1, "{}: follow-up answered", c.name);
        check(c.name, 200, &y.responses[0], &Want::Page(3, Cache::Any));
    }
}

// ---------------------------------------------------------------------------------------------
// The five defects, one test each.

/// Two `Authorization` (or `Api-Version`) headers: the key id would come from the first while
/// the origin may read either; refused with 400 naming the header, and the connection closed.
#[test]
fn test_duplicate_authorization_or_api_version_is_refused() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config());
    for (extra, header) in [
        ("Authorization: Bearer demo-write\r\n", "Authorization"),
        ("Api-Version: 2020-01-01\r\n", "Api-Version"),
    ] {
        let x = exchange(edge.addr, &get(&page(5), extra), 1, false);
        let r = &x.responses[0];
        assert_eq!(r.status, 400, "{header}: {r:?}");
        assert_eq!(r.envelope_code().as_deref(), Some("BAD_REQUEST"));
        let msg = r.json().unwrap()["error"]["message"].to_string();
        assert!(msg.contains(header), "{header}: {msg}");
        assert!(x.closed, "{header}: connection closed");
    }
    // Nothing was stored: the same page for each key alone is a miss.
    for key in [READ, WRITE] {
        let req = format!("GET {} HTTP/1.1\r\nHost: edge\r\n{key}\r\n", page(5));
        let x = exchange(edge.addr, req.as_bytes(), 1, false);
        check(
            "after duplicates",
            0,
            &x.responses[0],
            &Want::Page(5, Cache::Miss),
        );
    }
}

/// A 70 KB header is refused past `server.max_header_size` (32 KiB by default) with 431 in the
/// envelope, and the key is configurable.
#[test]
fn test_header_section_over_max_header_size_is_431() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config());
    let x = exchange(
        edge.addr,
        &get(&page(6), &format!("X-Big: {}\r\n", "a".repeat(70_000))),
        1,
        false,
    );
    let r = &x.responses[0];
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(
        r.envelope_code().as_deref(),
        Some("REQUEST_HEADER_FIELDS_TOO_LARGE")
    );
    assert!(x.closed);

    let small = Edge::start(
        &mock.url(),
        &format!("{}[server]\nmax_header_size = \"4KiB\"\n", config()),
    );
    let x = exchange(
        small.addr,
        &get(&page(6), &format!("X-Big: {}\r\n", "a".repeat(5_000))),
        1,
        false,
    );
    assert_eq!(x.responses[0].status, 431);
    let x = exchange(
        small.addr,
        &get(&page(6), &format!("X-Big: {}\r\n", "a".repeat(3_000))),
        1,
        false,
    );
    check("under 4KiB", 0, &x.responses[0], &Want::Page(6, Cache::Any));
}

/// Three GETs in one write on one keep-alive connection: three responses, in order, and the
/// connection stays open for a fourth.
#[test]
fn test_pipelined_requests_are_answered_in_order() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config());
    let three = cat(&[&get(&page(7), ""), &get(&page(8), ""), &get(&page(9), "")]);
    let x = exchange(edge.addr, &three, 3, false);
    assert_eq!(x.responses.len(), 3, "{x:?}");
    for (r, n) in x.responses.iter().zip([7, 8, 9]) {
        check("pipelined", n, r, &Want::Page(n, Cache::Miss));
    }
    assert!(!x.closed, "keep-alive after pipelined requests");
    // The same three again, now hits from the fast path, still in order.
    let x = exchange(edge.addr, &three, 3, false);
    assert_eq!(x.responses.len(), 3, "{x:?}");
    for (r, n) in x.responses.iter().zip([7, 8, 9]) {
        check("pipelined hits", n, r, &Want::Page(n, Cache::Hit));
    }
}

/// An upstream whose name does not resolve: 502 UPSTREAM_UNAVAILABLE saying so (not a 500), and
/// `/readyz` is 503 with the reason.
#[test]
fn test_unresolvable_upstream_is_502_and_not_ready() {
    let edge = Edge::start_unready("http://does-not-exist.invalid:80", &config());
    let x = exchange(edge.addr, &get("/me", ""), 1, false);
    let r = &x.responses[0];
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.envelope_code().as_deref(), Some("UPSTREAM_UNAVAILABLE"));
    let msg = r.json().unwrap()["error"]["message"].to_string();
    assert!(msg.contains("does not resolve"), "{msg}");

    let ready = b"GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n";
    let x = exchange(edge.admin, ready, 1, false);
    let r = &x.responses[0];
    assert_eq!(r.status, 503, "{r:?}");
    let v = r.json().unwrap();
    assert_eq!(v["error"]["code"], "NOT_READY");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("does-not-exist.invalid"), "{msg}");
}

/// `/libraries/lisbon/../barcelona/assets` is keyed, scoped and forwarded as barcelona: a write
/// to barcelona invalidates it, and lisbon's entry is not touched.
#[test]
fn test_dot_segments_are_keyed_scoped_and_forwarded_canonically() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config());
    let dotted = format!("{ORG}/libraries/lisbon/../barcelona/assets?pageSize=10");
    let x = exchange(edge.addr, &get(&dotted, ""), 1, false);
    check("dotted", 0, &x.responses[0], &Want::Page(10, Cache::Miss));
    let x = exchange(edge.addr, &get(&dotted, ""), 1, false);
    check(
        "dotted again",
        0,
        &x.responses[0],
        &Want::Page(10, Cache::Hit),
    );
    let lisbon = format!("{LIS}?pageSize=10");
    let x = exchange(edge.addr, &get(&lisbon, ""), 1, false);
    assert!(String::from_utf8_lossy(&x.responses[0].body).contains("lis-"));

    // A write to barcelona: the dotted read (barcelona) is refetched, lisbon's is still a hit.
    let body = r#"{"assetIds":["bcn-0001"],"tags":["dotted"]}"#;
    let write = format!(
        "POST {BCN}/tag HTTP/1.1\r\nHost: edge\r\n{WRITE}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let x = exchange(edge.addr, write.as_bytes(), 1, false);
    assert_eq!(x.responses[0].status, 200, "{:?}", x.responses[0]);
    let x = exchange(edge.addr, &get(&dotted, ""), 1, false);
    check(
        "dotted after write",
        0,
        &x.responses[0],
        &Want::Page(10, Cache::Miss),
    );
    let x = exchange(edge.addr, &get(&lisbon, ""), 1, false);
    assert!(
        x.responses[0].cache().contains("; hit"),
        "{:?}",
        x.responses[0]
    );
}
