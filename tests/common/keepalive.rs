//! A blocking HTTP/1.1 client on one TCP connection that it never replaces by itself, so a test
//! can tell a connection the gateway kept from one it closed or reset (a pooled client such as
//! reqwest hides that). Content-Length and chunked bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Conn {
    reader: BufReader<TcpStream>,
    pub requests: usize,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// The server said `Connection: close`: this connection is done, open a new one.
    pub close: bool,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How a request failed.
#[derive(Debug)]
pub enum Failure {
    /// The connection ended cleanly (EOF) before any byte of a response.
    ClosedBeforeResponse,
    /// Reset (ECONNRESET / EPIPE) while sending or before any byte of a response.
    Reset(String),
    /// Anything else: a cut response, a timeout, garbage.
    Broken(String),
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(s),
            requests: 0,
        })
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Resp, Failure> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: edge\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.requests += 1;
        if let Err(e) = self.reader.get_mut().write_all(req.as_bytes()) {
            return Err(classify(e, true));
        }
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => return Err(Failure::ClosedBeforeResponse),
            Ok(_) => {}
            Err(e) => return Err(classify(e, true)),
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Failure::Broken(format!("status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            match self.reader.read_line(&mut h) {
                Ok(0) => return Err(Failure::Broken("EOF in the header".into())),
                Ok(_) => {}
                Err(e) => return Err(classify(e, false)),
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut resp = Resp {
            status,
            close: false,
            headers,
            body: Vec::new(),
        };
        resp.close = resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if let Some(n) = resp.header("content-length") {
            let n: usize = n
                .parse()
                .map_err(|_| Failure::Broken(format!("content-length {n}")))?;
            resp.body = vec![0; n];
            self.reader
                .read_exact(&mut resp.body)
                .map_err(|e| classify(e, false))?;
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut size = String::new();
                self.reader
                    .read_line(&mut size)
                    .map_err(|e| classify(e, false))?;
                let n = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| Failure::Broken(format!("chunk size {size:?}")))?;
                let mut chunk = vec![0; n + 2];
                self.reader
                    .read_exact(&mut chunk)
                    .map_err(|e| classify(e, false))?;
                if n == 0 {
                    break;
                }
                resp.body.extend_from_slice(&chunk[..n]);
            }
        } else if resp.status != 204 && resp.status != 304 {
            return Err(Failure::Broken(format!(
                "{status} with no framing: {:?}",
                resp.headers
            )));
        }
        Ok(resp)
    }
}

fn classify(e: std::io::Error, before_response: bool) -> Failure {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | BrokenPipe | ConnectionAborted if before_response => {
            Failure::Reset(e.to_string())
        }
        _ => Failure::Broken(e.to_string()),
    }
}
