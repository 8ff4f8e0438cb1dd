//! The hit path's request-head parser (`hitpath::parse::parse`) on arbitrary bytes, with the
//! default `[server]` bounds and with small ones. Beyond "never panics": a `Plain` head is a
//! GET or HEAD of HTTP/1.1 within the buffer, with a canonical path, and parsing exactly its
//! bytes again gives the same length (nothing after it is read as part of it); `Partial` and
//! `Refuse` split exactly at `MAX_HEAD` (Pingora's 1 MiB); a refused unfinished head is a 400.
#![no_main]

use std::borrow::Cow;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use raster_edge::config::ServerSettings;
use raster_edge::edge::path;
use raster_edge::hitpath::parse::{parse, Head, MAX_HEAD};
use raster_edge_fuzz::default_settings;

fn limits() -> &'static [ServerSettings; 2] {
    static L: OnceLock<[ServerSettings; 2]> = OnceLock::new();
    L.get_or_init(|| {
        let plain = default_settings().server.clone();
        let mut small = plain.clone();
        small.max_header_size = 256;
        small.max_header_count = 4;
        small.max_uri_length = 64;
        [plain, small]
    })
}

fuzz_target!(|data: &[u8]| {
    for l in limits() {
        match parse(data, l) {
            Head::Plain { req, len } => {
                assert!(len <= data.len() && len <= l.max_header_size);
                assert!(matches!(req.method, http::Method::GET | http::Method::HEAD));
                assert_eq!(req.version, http::Version::HTTP_11);
                assert!(
                    matches!(path::normalize(req.uri.path()), Ok(Cow::Borrowed(_))),
                    "not canonical: {:?}",
                    req.uri.path()
                );
                match parse(&data[..len], l) {
                    Head::Plain { len: again, .. } => assert_eq!(again, len),
                    other => panic!("its own bytes parse as {other:?}"),
                }
            }
            Head::Partial => assert!(data.len() <= MAX_HEAD),
            Head::Refuse(e) => {
                assert!(data.len() > MAX_HEAD);
                assert_eq!(e.status(), 400, "{e:?}");
            }
            Head::Proxy(_) => {}
        }
    }
});
