//! Content codings end to end (`[compression]`): the real gateway in front of raster-mock (or a
//! raw origin), each test on its own ephemeral ports. Every test runs with the fresh-hit fast
//! path on and off, so both readers of the store are held to the same answers.

mod common;

use std::io::{Read, Write};

use common::{client, Edge, Mock, RawOrigin};
use reqwest::header::HeaderMap;
use serde_json::Value;

const LIS_ASSETS: &str = "/organizations/monogram-labs/libraries/lisbon/assets";
const BCN_ASSETS: &str = "/organizations/monogram-labs/libraries/barcelona/assets";

fn config(fast_path: bool, extra: &str) -> String {
    format!(
        "[rate_limit]\nenabled = false\n[cache]\nfast_path = {fast_path}\n{}\n{extra}",
        common::RASTER_ROUTES_60S
    )
}

struct Got {
    status: u16,
    headers: HeaderMap,
    raw: Vec<u8>,
}

impl Got {
    fn h(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn coding(&self) -> &str {
        self.h("content-encoding")
    }

    /// The body with its content coding undone.
    fn plain(&self) -> Vec<u8> {
        decode(self.coding(), &self.raw)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.plain()).expect("json body")
    }
}

fn decode(coding: &str, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "" => out.extend_from_slice(raw),
        "gzip" => {
            flate2::read::GzDecoder::new(raw)
                .read_to_end(&mut out)
                .expect("gunzip");
        }
        "br" => {
            brotli::Decompressor::new(raw, 4096)
                .read_to_end(&mut out)
                .expect("brotli");
        }
        "zstd" => out = zstd::stream::decode_all(raw).expect("zstd"),
        other => panic!("unexpected coding {other}"),
    }
    out
}

async fn get(url: String, accept_encoding: Option<&str>) -> Got {
    let mut req = client()
        .get(url)
        .header("authorization", "Bearer demo-read")
        .header("api-version", "2026-05-20");
    if let Some(ae) = accept_encoding {
        req = req.header("accept-encoding", ae);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let raw = r.bytes().await.expect("body").to_vec();
    Got {
        status,
        headers,
        raw,
    }
}

fn varies_on_accept_encoding(g: &Got) -> bool {
    g.headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
}

#[tokio::test]
async fn test_compression_one_stored_body_serves_every_client() {
    for fast_path in [true, false] {
        let mock = Mock::start();
        let edge = Edge::start(&mock.url(), &config(fast_path, ""));
        let origin = get(format!("{}{LIS_ASSETS}", mock.url()), None).await;
        assert_eq!(origin.coding(), "");
        let expected = origin.raw.clone();
        assert!(expected.len() > 1024, "the list is worth compressing");
        let url = edge.url(LIS_ASSETS);

        let first = get(url.clone(), Some("gzip, deflate")).await;
        assert_eq!(first.status, 200);
        assert_eq!(first.h("x-cache"), "MISS");
        assert_eq!(first.coding(), "gzip", "the miss itself is compressed");
        assert!(first.raw.len() < expected.len() / 3);
        assert_eq!(first.plain(), expected);
        assert!(varies_on_accept_encoding(&first));
        assert!(first.h("etag").starts_with("W/"), "{}", first.h("etag"));

        // Every other client is served from that one stored body.
        for (ae, coding) in [
            (None, ""),
            (Some("gzip, deflate, br, zstd"), "gzip"),
            (Some("identity"), ""),
            (Some("br"), ""),
            (Some("gzip;q=0, br;q=0.5"), ""),
            (Some("br;q=1, identity;q=0"), "br"),
            (Some("zstd, identity;q=0"), "zstd"),
            (Some("*"), "gzip"),
        ] {
            let g = get(url.clone(), ae).await;
            assert_eq!(g.status, 200, "{ae:?}");
            assert_eq!(g.h("x-cache"), "HIT", "{ae:?} (fast path {fast_path})");
            assert_eq!(g.coding(), coding, "{ae:?} (fast path {fast_path})");
            assert_eq!(g.plain(), expected, "{ae:?}");
            assert!(varies_on_accept_encoding(&g), "{ae:?}");
            // Both readers give stored and decoded bodies their length (the identity length
            // is kept with an entry the gateway compressed); only a body re-encoded for a
            // client that refuses identity streams chunked from the state machine.
            if coding.is_empty() || coding == "gzip" || fast_path {
                assert_eq!(g.h("content-length"), g.raw.len().to_string(), "{ae:?}");
            }
            assert!(!g.headers.contains_key("raster-edge-decoded-length"));
        }
        assert_eq!(
            mock.requests().await,
            2,
            "one fetch by the test, one by the gateway: no variant per Accept-Encoding"
        );
    }
}

#[tokio::test]
async fn test_compression_origin_gzip_without_vary_never_reaches_identity_clients() {
    for (fast_path, compression) in [
        (true, "enabled = true"),
        (false, "enabled = true"),
        (true, "enabled = false"),
        (false, "enabled = false"),
    ] {
        let mock = Mock::start();
        mock.configure(serde_json::json!({"gzip": true, "gzip_vary": false}))
            .await;
        let edge = Edge::start(
            &mock.url(),
            &config(fast_path, &format!("[compression]\n{compression}")),
        );
        // The mistake: the origin gzips for the client that accepted it and says nothing.
        let raw = get(format!("{}{BCN_ASSETS}", mock.url()), Some("gzip")).await;
        assert_eq!(raw.coding(), "gzip");
        assert!(!varies_on_accept_encoding(&raw));
        let expected = raw.plain();

        let url = edge.url(BCN_ASSETS);
        let first = get(url.clone(), Some("gzip")).await;
        assert_eq!(first.coding(), "gzip", "{compression}");
        assert_eq!(first.plain(), expected);
        let plain = get(url.clone(), None).await;
        assert_eq!(
            plain.h("x-cache"),
            "HIT",
            "{compression} fast path {fast_path}"
        );
        assert_eq!(plain.coding(), "", "{compression} fast path {fast_path}");
        assert_eq!(plain.raw, expected);
        assert!(varies_on_accept_encoding(&plain));
        // And the other way round, on a fresh entry: an identity client misses first.
        let url = edge.url(LIS_ASSETS);
        let plain = get(url.clone(), None).await;
        assert_eq!(plain.h("x-cache"), "MISS");
        assert_eq!(plain.coding(), "");
        let v: Value = serde_json::from_slice(&plain.raw).expect("identity json");
        assert!(v["data"].is_array());
        let zipped = get(url, Some("gzip")).await;
        assert_eq!(zipped.h("x-cache"), "HIT");
        assert_eq!(zipped.plain(), plain.raw);
    }
}

#[tokio::test]
async fn test_compression_small_bodies_and_compressed_types_stay_identity() {
    let png = vec![0x89u8; 8000];
    let big_json = format!("{{\"data\":\"{}\"}}", "abc".repeat(3000));
    let (png_body, json_body) = (png.clone(), big_json.clone());
    let origin = RawOrigin::start(move |head| {
        let (ct, body): (&str, Vec<u8>) = if head.starts_with("GET /pic") {
            ("image/png", png_body.clone())
        } else if head.starts_with("GET /tiny") {
            ("application/json", b"{\"data\":1}".to_vec())
        } else {
            ("application/json", json_body.clone().into_bytes())
        };
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        Some(out)
    });
    for fast_path in [true, false] {
        let edge = Edge::start(&origin.url(), &config(fast_path, ""));
        let pic = get(edge.url("/pic.png"), Some("gzip, br")).await;
        assert_eq!(pic.coding(), "", "image/png is already compressed");
        assert_eq!(pic.raw, png);
        let tiny = get(edge.url("/tiny"), Some("gzip, br")).await;
        assert_eq!(tiny.coding(), "", "below compression.min_size");
        assert!(!varies_on_accept_encoding(&tiny));
        // A GET the cache may store is fetched and compressed in the store coding, which this
        // client accepts, even when the response turns out not to be stored (no route rule).
        let big = get(edge.url("/big"), Some("br;q=1, gzip;q=0.5")).await;
        assert_eq!(big.h("x-cache"), "MISS");
        assert_eq!(big.coding(), "gzip");
        assert_eq!(big.plain(), big_json.as_bytes());
        // A request the cache never stores is compressed in the client's preferred coding.
        let r = client()
            .post(edge.url("/big"))
            .header("authorization", "Bearer demo-read")
            .header("api-version", "2026-05-20")
            .header("accept-encoding", "br;q=1, gzip;q=0.5")
            .send()
            .await
            .expect("post");
        assert_eq!(
            r.headers().get("content-encoding").map(|v| v.as_bytes()),
            Some(&b"br"[..])
        );
        let raw = r.bytes().await.expect("body");
        assert_eq!(decode("br", &raw), big_json.as_bytes());
        let big = get(edge.url("/big"), None).await;
        assert_eq!(big.coding(), "");
        assert_eq!(big.raw, big_json.as_bytes());
    }
    // Off: nothing is compressed by the gateway.
    let edge = Edge::start(
        &origin.url(),
        &config(true, "[compression]\nenabled = false"),
    );
    let big = get(edge.url("/big"), Some("gzip")).await;
    assert_eq!(big.coding(), "");
}

#[tokio::test]
async fn test_compression_head_and_conditional_hits_follow_the_coding() {
    for fast_path in [true, false] {
        let mock = Mock::start();
        let edge = Edge::start(&mock.url(), &config(fast_path, ""));
        let url = edge.url(LIS_ASSETS);
        let first = get(url.clone(), Some("gzip")).await;
        let etag = first.h("etag").to_string();
        assert!(etag.starts_with("W/\""), "{etag}");
        // A conditional request with the weak tag is answered 304 from the store, whatever
        // coding the client takes.
        for ae in [Some("gzip"), None] {
            let mut req = client()
                .get(url.clone())
                .header("authorization", "Bearer demo-read")
                .header("api-version", "2026-05-20")
                .header("if-none-match", etag.as_str());
            if let Some(ae) = ae {
                req = req.header("accept-encoding", ae);
            }
            let r = req.send().await.expect("conditional");
            assert_eq!(r.status(), 304, "{ae:?} fast path {fast_path}");
        }
        let head = client()
            .head(url.clone())
            .header("authorization", "Bearer demo-read")
            .header("api-version", "2026-05-20")
            .send()
            .await
            .expect("head");
        assert_eq!(head.status(), 200);
        assert!(head.headers().get("content-encoding").is_none());
    }
}

/// The compressed body goes out in pieces for a large stored response too (the state machine
/// streams it), and still decodes to the origin's bytes.
#[tokio::test]
async fn test_compression_large_pages_round_trip() {
    let mock = Mock::start();
    let edge = Edge::start(&mock.url(), &config(false, ""));
    let path = format!("{BCN_ASSETS}?pageSize=100");
    let origin = get(format!("{}{path}", mock.url()), None).await;
    for ae in [Some("gzip"), None, Some("gzip"), Some("zstd, identity;q=0")] {
        let g = get(edge.url(&path), ae).await;
        assert_eq!(g.plain(), origin.raw, "{ae:?}");
        assert_eq!(g.json()["data"].as_array().map(Vec::len), Some(100));
    }
    // Make sure writing a gzip body by hand decodes the same way the tests decode.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(b"x").expect("gzip");
    assert_eq!(decode("gzip", &enc.finish().expect("gzip")), b"x");
}

/// A body the gateway gzipped on the way into the store goes to an identity client decoded,
/// framed by one `Content-Length` and no `Transfer-Encoding` (RFC 9112 §6.3 forbids both):
/// a client that frames by the length must find the next response exactly where it starts.
/// On one keep-alive connection: the miss (decoded as it streams), then the hit.
#[tokio::test]
async fn test_compression_decoded_responses_are_framed_by_one_length() {
    for fast_path in [true, false] {
        let mock = Mock::start();
        let edge = Edge::start(&mock.url(), &config(fast_path, ""));
        let addr = edge.addr;
        let path = format!("{BCN_ASSETS}?pageSize=20");
        let bodies = tokio::task::spawn_blocking(move || {
            let mut conn = common::keepalive::Conn::open(addr).expect("connect");
            let headers = [
                ("Authorization", "Bearer demo-read"),
                ("Api-Version", "2026-05-20"),
            ];
            (0..3)
                .map(|_| {
                    let r = conn.get(&path, &headers).expect("a whole response");
                    assert_eq!(r.status, 200);
                    assert!(
                        r.header("transfer-encoding").is_none()
                            || r.header("content-length").is_none(),
                        "both framings: {:?}",
                        r.headers
                    );
                    assert!(r.header("content-encoding").is_none());
                    r.body
                })
                .collect::<Vec<_>>()
        })
        .await
        .expect("client thread");
        assert!(bodies[0].len() > 1024, "large enough to be compressed");
        assert!(
            bodies.iter().all(|b| b == &bodies[0]),
            "fast_path={fast_path}"
        );
        serde_json::from_slice::<Value>(&bodies[0]).expect("identity json");
    }
}
