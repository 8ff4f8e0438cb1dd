//! A whole response as HTTP/1.1 bytes, the way Pingora's HTTP/1 writer lays it out (status line,
//! the header map in its order and case, `Connection`), so the hit path's answers are
//! byte-identical to the proxy's but for one field: Pingora stamps its own `Date` on every
//! response, and this keeps the stored one (RFC 9111 §4.2.3: a cache passes the origin's
//! `Date` on; `Age` says how long it was stored). A stored response without `Date` gets the
//! current time, as RFC 9110 §6.6.1 asks of a recipient that forwards one.

use bytes::{BufMut, BytesMut};
use pingora::http::ResponseHeader;

/// Whether a stored response can be written as header + body without Pingora's body writer:
/// `Content-Length` says exactly the body's length and no `Transfer-Encoding` asks for
/// chunking. Anything else is served by the proxy.
pub fn plain_framing(header: &ResponseHeader, body_len: usize) -> bool {
    if header.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return false;
    }
    let mut lengths = header.headers.get_all(http::header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n == body_len),
        _ => false,
    }
}

/// Serialises `header` (adding `Connection`, and `Date` when it has none) and `body`.
pub fn serialise(
    header: &mut ResponseHeader,
    body: Option<&[u8]>,
    close: bool,
) -> pingora::Result<BytesMut> {
    if !header.headers.contains_key(http::header::DATE) {
        header.insert_header(
            http::header::DATE,
            pingora::protocols::http::date::get_cached_date(),
        )?;
    }
    header.insert_header(
        http::header::CONNECTION,
        if close { "close" } else { "keep-alive" },
    )?;
    let body = body.unwrap_or_default();
    let mut out = BytesMut::with_capacity(64 + 40 * header.headers.len() + body.len());
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(header.status.as_str().as_bytes());
    out.put_u8(b' ');
    if let Some(reason) = header.get_reason_phrase() {
        out.put_slice(reason.as_bytes());
    }
    out.put_slice(b"\r\n");
    header.header_to_h1_wire(&mut out);
    out.put_slice(b"\r\n");
    out.put_slice(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_must_be_an_exact_content_length() {
        let mut h = ResponseHeader::build(200, None).unwrap();
        assert!(!plain_framing(&h, 3));
        h.insert_header("content-length", "3").unwrap();
        assert!(plain_framing(&h, 3));
        assert!(!plain_framing(&h, 4));
        h.append_header("content-length", "3").unwrap();
        assert!(!plain_framing(&h, 3));
        let mut te = ResponseHeader::build(200, None).unwrap();
        te.insert_header("content-length", "3").unwrap();
        te.insert_header("transfer-encoding", "chunked").unwrap();
        assert!(!plain_framing(&te, 3));
    }

    #[test]
    fn keeps_the_stored_date_and_says_keep_alive() {
        // Stored headers keep no case map (cache::entry::compact_header).
        let mut h = ResponseHeader::build_no_case(200, None).unwrap();
        h.insert_header("date", "Tue, 01 Dec 2026 10:00:00 GMT")
            .unwrap();
        h.insert_header("content-length", "2").unwrap();
        let out = serialise(&mut h, Some(b"{}"), false).unwrap();
        // Pingora's own wire form: names in canonical case, the map's order, Connection last.
        assert_eq!(
            String::from_utf8(out.to_vec()).unwrap(),
            "HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
        );
        let mut h = ResponseHeader::build_no_case(304, None).unwrap();
        let out = serialise(&mut h, None, true).unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 304 Not Modified\r\nDate: "),
            "{text}"
        );
        assert!(text.ends_with("Connection: close\r\n\r\n"), "{text}");
    }
}
