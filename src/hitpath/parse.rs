//! The hit path's request-head parser: bytes as read from the connection → a plain `GET`/`HEAD`
//! the loop may answer from the cache, or the reason it goes to the proxy instead.
//!
//! `httparse` does the parsing (as in Pingora); this module only decides what is plain. It is
//! deliberately narrower than Pingora's parser: anything it does not take whole (a body, any
//! framing header, `Expect`, `Upgrade`, `Connection` other than `keep-alive`, HTTP/1.0, a head the
//! gateway's own checks refuse, bytes httparse refuses) goes to the proxy with every byte read,
//! where today's code answers it, so bounds and error answers stay identical by construction.
//! The one answer given here is for a head still unfinished past [`MAX_HEAD`], Pingora's own
//! bound (its parser refuses such a head with 400 too): reading on would let a client grow the
//! buffer without bound. A complete head over `server.max_header_size` goes to the proxy, whose
//! checks answer it (431), as before.

use http::header::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::config::ServerSettings;
use crate::errors::GatewayError;

/// Longest unfinished head read before answering 400: Pingora 0.9's `MAX_HEADER_SIZE`
/// (`protocols/http/v1/common.rs`), so what is refused here is what its parser refuses.
pub const MAX_HEAD: usize = 1 << 20;

/// Header fields httparse is given room for; a head with more goes to the proxy, whose own
/// parser and `server.max_header_count` decide.
const MAX_FIELDS: usize = 128;

/// What the bytes at the front of the connection's buffer are.
#[derive(Debug)]
pub enum Head {
    /// Not a whole head yet, and within bounds: read more.
    Partial,
    /// A plain request this loop may answer: the parsed (and sanitized) header, and the length
    /// of its head in the buffer.
    Plain { req: Box<RequestHeader>, len: usize },
    /// The proxy takes this request, with every byte read so far.
    Proxy(ProxyReason),
    /// An unfinished head already over [`MAX_HEAD`]: answer this and close.
    Refuse(GatewayError),
}

/// Why a request goes to the proxy instead of being answered here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyReason {
    /// httparse refused the bytes (the proxy answers 400).
    Unparsable,
    /// More fields than the hit path parses.
    Fields,
    /// Not HTTP/1.1.
    Version,
    /// Not GET or HEAD.
    Method,
    /// `Content-Length` or `Transfer-Encoding`: a body, or framing to check.
    Body,
    /// `Expect`, `Upgrade`, or `Connection` other than `keep-alive`.
    Semantics,
    /// The gateway's head checks ([`crate::edge::sanitize`]) refuse it: the proxy answers.
    Refused,
}

/// Parses the head at the front of `buf` against the `[server]` bounds.
pub fn parse(buf: &[u8], limits: &ServerSettings) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut r = httparse::Request::new(&mut fields);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return partial(buf),
        Err(httparse::Error::TooManyHeaders) => return Head::Proxy(ProxyReason::Fields),
        Err(_) => return Head::Proxy(ProxyReason::Unparsable),
    };
    if r.version != Some(1) {
        return Head::Proxy(ProxyReason::Version);
    }
    let method = match r.method {
        Some("GET") => http::Method::GET,
        Some("HEAD") => http::Method::HEAD,
        _ => return Head::Proxy(ProxyReason::Method),
    };
    let Ok(mut req) = RequestHeader::build_no_case(
        method,
        r.path.unwrap_or("").as_bytes(),
        Some(r.headers.len()),
    ) else {
        return Head::Proxy(ProxyReason::Unparsable);
    };
    for f in r.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) else {
            return Head::Proxy(ProxyReason::Unparsable);
        };
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            return Head::Proxy(ProxyReason::Body);
        }
        if name == http::header::EXPECT
            || name == http::header::UPGRADE
            || (name == http::header::CONNECTION && !f.value.eq_ignore_ascii_case(b"keep-alive"))
        {
            return Head::Proxy(ProxyReason::Semantics);
        }
        if req.append_header(name, value).is_err() {
            return Head::Proxy(ProxyReason::Unparsable);
        }
    }
    // Pingora's own check of every HTTP/1 head (duplicate Host, userinfo, conflicting
    // authorities), then the gateway's.
    if pingora::protocols::http::authority::validate_request_authority(&req).is_err()
        || crate::edge::sanitize(&mut req, &buf[..len], limits).is_err()
    {
        return Head::Proxy(ProxyReason::Refused);
    }
    Head::Plain {
        req: Box::new(req),
        len,
    }
}

/// An unfinished head: fine up to [`MAX_HEAD`] (a complete one over `server.max_header_size`
/// still gets the proxy's 431), refused past it.
fn partial(buf: &[u8]) -> Head {
    if buf.len() <= MAX_HEAD {
        Head::Partial
    } else {
        Head::Refuse(GatewayError::Malformed("request head larger than 1 MiB"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServerSettings {
        let f = crate::config::parse(crate::config::EMBEDDED_DEFAULT, "test", &[]).unwrap();
        crate::config::validate(f).unwrap().server
    }

    fn plain(buf: &[u8]) -> (RequestHeader, usize) {
        match parse(buf, &limits()) {
            Head::Plain { req, len } => (*req, len),
            other => panic!("not plain: {other:?}"),
        }
    }

    fn reason(buf: &[u8]) -> ProxyReason {
        match parse(buf, &limits()) {
            Head::Proxy(r) => r,
            other => panic!("not for the proxy: {other:?}"),
        }
    }

    #[test]
    fn a_plain_get_is_parsed_and_its_length_known() {
        let head = b"GET /a/./b?x=1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer k\r\n\r\n";
        let mut buf = head.to_vec();
        buf.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        let (req, len) = plain(&buf);
        assert_eq!(len, head.len());
        assert_eq!(req.method, http::Method::GET);
        // sanitize ran: the path is canonical
        assert_eq!(req.uri.path(), "/a/b");
        assert_eq!(req.headers["authorization"], "Bearer k");
        let (req, _) = plain(b"HEAD / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n");
        assert_eq!(req.method, http::Method::HEAD);
    }

    #[test]
    fn anything_not_plain_goes_to_the_proxy() {
        let cases: &[(&[u8], ProxyReason)] = &[
            (b"POST / HTTP/1.1\r\nHost: h\r\n\r\n", ProxyReason::Method),
            (b"GET / HTTP/1.0\r\n\r\n", ProxyReason::Version),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
                ProxyReason::Body,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                ProxyReason::Body,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
                ProxyReason::Semantics,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
                ProxyReason::Semantics,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                ProxyReason::Semantics,
            ),
            (b"GET / HTTP/1.1\r\n\r\n", ProxyReason::Refused),
            (
                b"GET /%zz/../ HTTP/1.1\r\nHost: h\r\n\r\n",
                ProxyReason::Refused,
            ),
            (b"G\x01T / HTTP/1.1\r\n\r\n", ProxyReason::Unparsable),
        ];
        for (buf, want) in cases {
            assert_eq!(reason(buf), *want, "{}", String::from_utf8_lossy(buf));
        }
        let mut many = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..MAX_FIELDS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(reason(&many), ProxyReason::Fields);
        // over max_header_count (64) but within what httparse is given: the proxy's 431
        let mut some = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..70 {
            some.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        some.extend_from_slice(b"\r\n");
        assert_eq!(reason(&some), ProxyReason::Refused);
    }

    #[test]
    fn an_unfinished_head_is_bounded() {
        let l = limits();
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: h\r\n", &l),
            Head::Partial
        ));
        // Over max_header_size but unfinished: read on (the proxy answers 431 once it ends).
        let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
        big.resize(l.max_header_size + 1, b'a');
        assert!(matches!(parse(&big, &l), Head::Partial));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(reason(&big), ProxyReason::Refused);
        big.truncate(40);
        big.resize(MAX_HEAD + 1, b'a');
        assert!(matches!(
            parse(&big, &l),
            Head::Refuse(GatewayError::Malformed(_))
        ));
    }
}
