//! RFC 9111 / 9110 / 9213 behaviours against scripted origins that send exactly the headers in
//! question (docs/CACHING.md lists which test shows what). The gateway runs in the test process
//! so stored entries can be aged instead of sleeping through TTLs.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::inproc::InProcess;
use common::{client, RawOrigin, Target};
use reqwest::header::HeaderMap;

struct Got {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn h(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn x_cache(&self) -> &str {
        self.h("x-cache")
    }
}

async fn send(req: reqwest::RequestBuilder) -> Got {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.expect("body");
    Got {
        status,
        headers,
        body,
    }
}

async fn get(edge: &impl Target, path: &str) -> Got {
    send(client().get(edge.url(path))).await
}

async fn head(edge: &impl Target, path: &str) -> Got {
    send(client().head(edge.url(path))).await
}

/// A generic-origin gateway (no credentials, no `Api-Version`), `share` mode and extra
/// `[cache]` lines.
fn gateway(origin: &RawOrigin, share: &str, cache: &str) -> InProcess {
    let toml = format!(
        "[edge]\nrequire_auth = false\nrequire_api_version = false\n[rate_limit]\nenabled = false\n[cache]\nenabled = true\nshare = \"{share}\"\n{cache}\n"
    );
    InProcess::start(&origin.url(), &toml)
}

/// A raw HTTP/1.1 response: status line, header lines, body (Content-Length added unless the
/// status has no body).
fn response(status: &str, headers: &[String], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    if !status.starts_with("304") {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    if !status.starts_with("304") {
        out.push_str(body);
    }
    out.into_bytes()
}

fn lines(h: &[&str]) -> Vec<String> {
    h.iter().map(|s| s.to_string()).collect()
}

fn request_line(head: &str) -> String {
    head.lines().next().unwrap_or("").to_string()
}

fn has_header(head: &str, name: &str) -> bool {
    head.lines()
        .any(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
}

fn hits(o: &RawOrigin) -> usize {
    o.hits.load(Ordering::SeqCst)
}

/// An origin that answers 200 with `first` the first time, then 304 with `revalidated` to a
/// conditional request (and 200 with `first` otherwise). Records every request line.
fn revalidating_origin(
    first: &'static [&'static str],
    revalidated: &'static [&'static str],
) -> (RawOrigin, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let origin = RawOrigin::start(move |head| {
        log.lock().unwrap().push(request_line(head));
        if has_header(head, "if-none-match") {
            Some(response("304 Not Modified", &lines(revalidated), ""))
        } else {
            Some(response("200 OK", &lines(first), "stored body"))
        }
    });
    (origin, seen)
}

#[tokio::test]
async fn test_rfc_304_replaces_every_stored_field() {
    let (origin, _) = revalidating_origin(
        &[
            "etag: \"v1\"",
            "cache-control: max-age=1",
            "test-header: old",
            "content-foo: old",
            "x-frame-options: DENY",
            "content-type: text/plain",
        ],
        &[
            "etag: \"v1\"",
            "cache-control: max-age=60",
            "test-header: new",
            "content-foo: new",
            "x-frame-options: SAMEORIGIN",
        ],
    );
    let edge = gateway(&origin, "shared", "");
    let a = get(&edge, "/r").await;
    assert_eq!((a.x_cache(), a.h("test-header")), ("MISS", "old"));
    edge.age(Duration::from_secs(2));
    let b = get(&edge, "/r").await;
    assert_eq!(b.x_cache(), "REVALIDATED", "{}", b.h("cache-status"));
    let c = get(&edge, "/r").await;
    for g in [&b, &c] {
        assert_eq!(g.h("test-header"), "new");
        assert_eq!(g.h("content-foo"), "new");
        assert_eq!(g.h("x-frame-options"), "SAMEORIGIN");
        assert_eq!(g.h("cache-control"), "max-age=60");
        // Fields the 304 did not carry, and the body's framing, are the stored ones.
        assert_eq!(g.h("content-type"), "text/plain");
        assert_eq!(g.h("content-length"), "11");
        assert_eq!(g.body, "stored body");
    }
    assert_eq!(c.x_cache(), "HIT");
    assert_eq!(hits(&origin), 2);
}

#[tokio::test]
async fn test_rfc_age_adds_the_origins_age_to_resident_time() {
    let origin = RawOrigin::start(|_| {
        Some(response(
            "200 OK",
            &lines(&["cache-control: max-age=600", "age: 30"]),
            "aged",
        ))
    });
    for fast_path in [true, false] {
        let edge = gateway(&origin, "shared", &format!("fast_path = {fast_path}"));
        let before = hits(&origin);
        get(&edge, "/aged").await;
        edge.age(Duration::from_secs(3));
        let g = get(&edge, "/aged").await;
        assert_eq!(g.x_cache(), "HIT");
        let age: u64 = g.h("age").parse().expect("Age is a number");
        assert!(
            (33..40).contains(&age),
            "Age {age} (fast_path = {fast_path})"
        );
        // Freshness counts the origin's Age too: 600 - 30 - 3 left.
        let ttl: i64 = g
            .h("cache-status")
            .split("ttl=")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .and_then(|t| t.parse().ok())
            .expect("ttl in Cache-Status");
        assert!((560..=567).contains(&ttl), "ttl {ttl}");
        assert_eq!(hits(&origin) - before, 1);
    }
}

#[tokio::test]
async fn test_rfc_list_valued_age_uses_its_first_member() {
    let origin = RawOrigin::start(|_| {
        Some(response(
            "200 OK",
            &lines(&["cache-control: max-age=3600", "age: 7200, 0"]),
            "old",
        ))
    });
    let edge = gateway(&origin, "shared", "");
    get(&edge, "/list-age").await;
    let g = get(&edge, "/list-age").await;
    assert_ne!(g.x_cache(), "HIT", "{}", g.h("cache-status"));
    assert_eq!(hits(&origin), 2);
}

#[tokio::test]
async fn test_rfc_invalid_age_is_ignored() {
    let origin = RawOrigin::start(|_| {
        Some(response(
            "200 OK",
            &lines(&["cache-control: max-age=3600", "age: soon"]),
            "x",
        ))
    });
    let edge = gateway(&origin, "shared", "");
    get(&edge, "/bad-age").await;
    let g = get(&edge, "/bad-age").await;
    assert_eq!(g.x_cache(), "HIT");
    assert!(g.h("age").parse::<u64>().expect("Age") < 5);
}

#[tokio::test]
async fn test_rfc_qualified_no_cache_and_private_fields_are_not_served_from_storage() {
    let origin = RawOrigin::start(|_| {
        Some(response(
            "200 OK",
            &lines(&[
                "cache-control: max-age=60, no-cache=\"x-secret\", private=\"x-user\"",
                "x-secret: s",
                "x-user: u",
                "x-other: o",
            ]),
            "fields",
        ))
    });
    for (share, user_kept, fast_path) in [
        ("shared", false, true),
        ("shared", false, false),
        ("per-key", true, true),
        ("per-key", true, false),
    ] {
        let edge = gateway(&origin, share, &format!("fast_path = {fast_path}"));
        let miss = get(&edge, "/fields").await;
        assert_eq!(
            miss.h("x-secret"),
            "s",
            "the origin's own response is whole"
        );
        let hit = get(&edge, "/fields").await;
        assert_eq!(hit.x_cache(), "HIT", "{share}");
        assert_eq!(hit.h("x-secret"), "", "{share}");
        assert_eq!(hit.h("x-user") == "u", user_kept, "{share}");
        assert_eq!(hit.h("x-other"), "o");
        assert_eq!(hit.body, "fields");
    }
}

#[tokio::test]
async fn test_rfc_head_miss_is_forwarded_as_head_and_stores_nothing() {
    let (origin, seen) = revalidating_origin(&["etag: \"h1\"", "cache-control: max-age=60"], &[]);
    let edge = gateway(&origin, "shared", "");
    let h = head(&edge, "/h").await;
    assert_eq!((h.status, h.body.as_str()), (200, ""));
    assert_eq!(seen.lock().unwrap()[0], "HEAD /h HTTP/1.1");
    // Nothing stored by the HEAD: the GET goes to the origin, then HEAD is a hit from it.
    assert_eq!(get(&edge, "/h").await.x_cache(), "MISS");
    let h2 = head(&edge, "/h").await;
    assert_eq!((h2.x_cache(), h2.h("content-length")), ("HIT", "11"));
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn test_rfc_head_revalidation_updates_the_stored_get() {
    let (origin, seen) = revalidating_origin(
        &["etag: \"h1\"", "cache-control: max-age=1", "x-version: 1"],
        &["etag: \"h1\"", "cache-control: max-age=60", "x-version: 2"],
    );
    let edge = gateway(&origin, "shared", "fast_path = false");
    get(&edge, "/hv").await;
    edge.age(Duration::from_secs(2));
    let h = head(&edge, "/hv").await;
    assert_eq!(h.x_cache(), "REVALIDATED", "{}", h.h("cache-status"));
    assert_eq!(seen.lock().unwrap()[1], "HEAD /hv HTTP/1.1");
    let g = get(&edge, "/hv").await;
    assert_eq!((g.x_cache(), g.h("x-version")), ("HIT", "2"));
    assert_eq!(g.body, "stored body");
    assert_eq!(hits(&origin), 2);
}

/// An origin whose response headers depend on the path: `/<name>` answers `table[name]`.
fn per_path_origin(table: &'static [(&'static str, &'static [&'static str])]) -> RawOrigin {
    RawOrigin::start(move |head| {
        let line = request_line(head);
        let path = line.split(' ').nth(1).unwrap_or("/");
        let headers = table
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(&[][..], |(_, h)| *h);
        Some(response("200 OK", &lines(headers), "body"))
    })
}

#[tokio::test]
async fn test_rfc_cdn_cache_control_overrides_cache_control() {
    let origin = per_path_origin(&[
        (
            "/cdn-stores",
            &["cache-control: no-store", "cdn-cache-control: max-age=60"],
        ),
        (
            "/cdn-refuses",
            &["cache-control: max-age=60", "cdn-cache-control: no-store"],
        ),
        (
            "/targeted-wins",
            &[
                "cdn-cache-control: no-store",
                "raster-edge-cache-control: max-age=60",
            ],
        ),
        (
            "/invalid-cdn",
            &[
                "cache-control: max-age=60",
                "cdn-cache-control: max-age=\"x",
            ],
        ),
        (
            "/expires-ignored",
            &[
                "expires: Thu, 01 Jan 1970 00:00:00 GMT",
                "cdn-cache-control: max-age=60",
            ],
        ),
        (
            "/cdn-private",
            &[
                "cache-control: public, max-age=60",
                "cdn-cache-control: private",
            ],
        ),
    ]);
    let edge = gateway(&origin, "shared", "");
    for (path, stored) in [
        ("/cdn-stores", true),
        ("/cdn-refuses", false),
        ("/targeted-wins", true),
        ("/invalid-cdn", true),
        ("/expires-ignored", true),
        ("/cdn-private", false),
    ] {
        let a = get(&edge, path).await;
        let b = get(&edge, path).await;
        assert_eq!(
            b.x_cache() == "HIT",
            stored,
            "{path}: {}",
            b.h("cache-status")
        );
        // Cache-Control goes to clients as the origin sent it.
        if path == "/cdn-stores" {
            assert_eq!(a.h("cache-control"), "no-store");
            assert_eq!(b.h("cache-control"), "no-store");
        }
    }
}

#[tokio::test]
async fn test_rfc_targeted_field_name_is_configurable() {
    let origin = per_path_origin(&[(
        "/t",
        &[
            "cache-control: no-store",
            "my-cdn-cache-control: max-age=60",
        ],
    )]);
    let edge = gateway(
        &origin,
        "shared",
        "targeted_cache_control = \"My-CDN-Cache-Control\"",
    );
    get(&edge, "/t").await;
    assert_eq!(get(&edge, "/t").await.x_cache(), "HIT");
    let off = gateway(&origin, "shared", "targeted_cache_control = \"\"");
    get(&off, "/t").await;
    assert_ne!(get(&off, "/t").await.x_cache(), "HIT");
}

#[tokio::test]
async fn test_rfc_expires_in_the_three_date_formats_and_invalid_dates() {
    // Future dates in IMF-fixdate, obsolete RFC 850 (two-digit year 49 = 2049) and asctime
    // forms all give freshness; a past one and an invalid one are already expired.
    let origin = per_path_origin(&[
        ("/imf", &["expires: Fri, 01 Jan 2100 00:00:00 GMT"]),
        ("/rfc850", &["expires: Friday, 01-Jan-49 00:00:00 GMT"]),
        ("/asctime", &["expires: Fri Jan  1 00:00:00 2100"]),
        ("/rfc850-past", &["expires: Friday, 01-Jan-99 00:00:00 GMT"]),
        ("/invalid", &["expires: next tuesday"]),
    ]);
    let edge = gateway(&origin, "shared", "");
    for (path, stored) in [
        ("/imf", true),
        ("/rfc850", true),
        ("/asctime", true),
        ("/rfc850-past", false),
        ("/invalid", false),
    ] {
        get(&edge, path).await;
        let g = get(&edge, path).await;
        assert_eq!(
            g.x_cache() == "HIT",
            stored,
            "{path}: {}",
            g.h("cache-status")
        );
    }
    assert_eq!(hits(&origin), 7);
}

#[tokio::test]
async fn test_rfc_conflicting_max_age_is_stale() {
    let origin = per_path_origin(&[
        (
            "/dup",
            &["cache-control: max-age=60", "cache-control: max-age=5"],
        ),
        ("/same", &["cache-control: max-age=60, max-age=60"]),
    ]);
    let edge = gateway(&origin, "shared", "");
    get(&edge, "/dup").await;
    assert_ne!(get(&edge, "/dup").await.x_cache(), "HIT");
    get(&edge, "/same").await;
    assert_eq!(get(&edge, "/same").await.x_cache(), "HIT");
}

#[tokio::test]
async fn test_rfc_unsafe_methods_invalidate_the_target_uri() {
    let gets = Arc::new(AtomicUsize::new(0));
    let g2 = gets.clone();
    let origin = RawOrigin::start(move |head| {
        let line = request_line(head);
        if line.starts_with("GET") {
            g2.fetch_add(1, Ordering::SeqCst);
            Some(response(
                "200 OK",
                &lines(&["cache-control: max-age=60"]),
                "r",
            ))
        } else {
            Some(response("204 No Content", &[], ""))
        }
    });
    let edge = gateway(&origin, "shared", "");
    get(&edge, "/doc").await;
    assert_eq!(get(&edge, "/doc").await.x_cache(), "HIT");
    let w = send(client().put(edge.url("/doc")).body("x")).await;
    assert_eq!(w.status, 204);
    assert_eq!(get(&edge, "/doc").await.x_cache(), "MISS");
    assert_eq!(gets.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn test_rfc_shared_mode_stores_statuses_with_explicit_freshness() {
    let origin = RawOrigin::start(|head| {
        let line = request_line(head);
        Some(if line.contains("/moved") {
            response(
                "302 Found",
                &lines(&["location: /elsewhere", "cache-control: max-age=60"]),
                "",
            )
        } else {
            response("302 Found", &lines(&["location: /elsewhere"]), "")
        })
    });
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let shared = gateway(&origin, "shared", "");
    let per_key = gateway(&origin, "per-key", "");
    for (edge, path, stored) in [
        (&shared, "/moved", true),
        (&shared, "/no-freshness", false),
        (&per_key, "/moved", false),
    ] {
        send(client.get(edge.url(path))).await;
        let g = send(client.get(edge.url(path))).await;
        assert_eq!(g.status, 302);
        assert_eq!(
            g.x_cache() == "HIT",
            stored,
            "{path}: {}",
            g.h("cache-status")
        );
    }
    // Listed in cache.store_statuses: stored in per-key mode too.
    let listed = gateway(&origin, "per-key", "store_statuses = [200, 302, 404]");
    send(client.get(listed.url("/moved"))).await;
    assert_eq!(
        send(client.get(listed.url("/moved"))).await.x_cache(),
        "HIT"
    );
}

#[tokio::test]
async fn test_rfc_if_none_match_uses_weak_comparison() {
    let origin = per_path_origin(&[("/w", &["etag: W/\"v1\"", "cache-control: max-age=60"])]);
    let edge = gateway(&origin, "shared", "");
    get(&edge, "/w").await;
    for (inm, status) in [
        ("\"v1\"", 304),
        ("W/\"v1\"", 304),
        ("\"other\", W/\"v1\"", 304),
        ("\"v2\"", 200),
    ] {
        let g = send(client().get(edge.url("/w")).header("if-none-match", inm)).await;
        assert_eq!((g.status, g.x_cache()), (status, "HIT"), "{inm}");
    }
}

const RANGED_BODY: &str = "0123456789abcdefghij";
const LAST_MODIFIED: &str = "Tue, 01 Dec 2026 10:00:00 GMT";

/// An origin with a 20-byte body, a strong ETag and a strong Last-Modified (Date 5 s later),
/// that records whether it was ever sent `Range` / `If-Range`.
fn ranged_origin() -> (RawOrigin, Arc<AtomicUsize>) {
    let ranged = Arc::new(AtomicUsize::new(0));
    let seen = ranged.clone();
    let origin = RawOrigin::start(move |head| {
        if has_header(head, "range") || has_header(head, "if-range") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        Some(response(
            "200 OK",
            &lines(&[
                "etag: \"r1\"",
                "cache-control: max-age=60",
                "content-type: text/plain",
                "last-modified: Tue, 01 Dec 2026 10:00:00 GMT",
                "date: Tue, 01 Dec 2026 10:00:05 GMT",
            ]),
            RANGED_BODY,
        ))
    });
    (origin, ranged)
}

async fn ranged(edge: &impl Target, range: &str, extra: &[(&str, &str)]) -> Got {
    let mut req = client().get(edge.url("/ranged")).header("range", range);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    send(req).await
}

#[tokio::test]
async fn test_rfc_range_requests_are_answered_from_the_stored_response() {
    for fast_path in [true, false] {
        let (origin, origin_saw_range) = ranged_origin();
        let edge = gateway(&origin, "shared", &format!("fast_path = {fast_path}"));
        // A miss: the whole response is fetched (no Range upstream) and stored; the client
        // gets its range of it.
        let miss = ranged(&edge, "bytes=0-3", &[]).await;
        assert_eq!((miss.status, miss.body.as_str()), (206, "0123"));
        assert_eq!(miss.h("content-range"), "bytes 0-3/20");
        assert_eq!(miss.x_cache(), "MISS");
        for (range, body, content_range) in [
            ("bytes=-5", "fghij", "bytes 15-19/20"),
            ("bytes=10-", "abcdefghij", "bytes 10-19/20"),
            ("bytes=5-5", "5", "bytes 5-5/20"),
            ("bytes=15-99", "fghij", "bytes 15-19/20"),
        ] {
            let g = ranged(&edge, range, &[]).await;
            assert_eq!((g.status, g.body.as_str()), (206, body), "{range}");
            assert_eq!(g.h("content-range"), content_range, "{range}");
            assert_eq!(g.h("content-length"), body.len().to_string(), "{range}");
            assert_eq!(g.h("etag"), "\"r1\"");
            assert_eq!(g.x_cache(), "HIT", "{range} (fast_path = {fast_path})");
        }
        // Unsatisfiable: 416 with the complete length.
        let g = ranged(&edge, "bytes=30-", &[]).await;
        assert_eq!((g.status, g.h("content-range")), (416, "bytes */20"));
        // Several ranges: multipart/byteranges, each part with its Content-Range.
        let g = ranged(&edge, "bytes=0-1,5-6", &[]).await;
        assert_eq!(g.status, 206);
        assert!(g
            .h("content-type")
            .starts_with("multipart/byteranges; boundary="));
        assert!(
            g.body.contains("Content-Range: bytes 0-1/20\r\n\r\n01\r\n"),
            "{}",
            g.body
        );
        assert!(
            g.body.contains("Content-Range: bytes 5-6/20\r\n\r\n56\r\n"),
            "{}",
            g.body
        );
        assert_eq!(g.h("content-length"), g.body.len().to_string());
        // If-Range: strong comparison against the stored validators.
        for (if_range, ranged_answer) in [
            ("\"r1\"", true),
            ("\"r0\"", false),
            ("W/\"r1\"", false),
            (LAST_MODIFIED, true),
            ("Tue, 01 Dec 2026 10:00:01 GMT", false),
        ] {
            let g = ranged(&edge, "bytes=0-3", &[("if-range", if_range)]).await;
            let want = if ranged_answer {
                (206, "0123")
            } else {
                (200, RANGED_BODY)
            };
            assert_eq!((g.status, g.body.as_str()), want, "If-Range {if_range}");
            assert_eq!(g.x_cache(), "HIT");
        }
        // Range is defined for GET only: a HEAD with Range is a plain HEAD.
        let h = send(
            client()
                .head(edge.url("/ranged"))
                .header("range", "bytes=0-3"),
        )
        .await;
        assert_eq!((h.status, h.h("content-length")), (200, "20"));
        // A plain GET still gets the whole response.
        let g = get(&edge, "/ranged").await;
        assert_eq!(
            (g.status, g.body.as_str(), g.x_cache()),
            (200, RANGED_BODY, "HIT")
        );
        assert_eq!(hits(&origin), 1, "fast_path = {fast_path}");
        assert_eq!(origin_saw_range.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn test_rfc_heuristic_freshness_from_last_modified_in_shared_mode() {
    let origin = RawOrigin::start(|head| {
        let now = std::time::SystemTime::now();
        let ago = |s: u64| httpdate::fmt_http_date(now - Duration::from_secs(s));
        let line = request_line(head);
        // 10% of 10,000 s = 1,000 s; 10% of 100 days is capped at heuristic_max_ttl (1 h).
        let modified = if line.contains("/old") {
            8_640_000
        } else {
            10_000
        };
        let status = if line.contains("/gone") {
            "404 Not Found"
        } else {
            "200 OK"
        };
        Some(response(
            status,
            &[
                format!("date: {}", ago(0)),
                format!("last-modified: {}", ago(modified)),
            ],
            "h",
        ))
    });
    let ttl = |g: &Got| -> i64 {
        g.h("cache-status")
            .split("ttl=")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(i64::MIN)
    };
    let shared = gateway(&origin, "shared", "");
    for (path, range) in [
        ("/recent", 995..=1000),
        ("/old", 3595..=3600),
        ("/gone", 995..=1000),
    ] {
        get(&shared, path).await;
        let g = get(&shared, path).await;
        assert_eq!(g.x_cache(), "HIT", "{path}: {}", g.h("cache-status"));
        assert!(range.contains(&ttl(&g)), "{path}: {}", g.h("cache-status"));
    }
    // Per-key mode keeps Raster's route rules (none here, default_ttl 0): not stored; the 404
    // gets negative_ttl, not the heuristic.
    let per_key = gateway(&origin, "per-key", "");
    get(&per_key, "/recent").await;
    assert_ne!(get(&per_key, "/recent").await.x_cache(), "HIT");
    get(&per_key, "/gone").await;
    let g = get(&per_key, "/gone").await;
    assert_eq!(g.x_cache(), "HIT");
    assert!((0..=5).contains(&ttl(&g)), "{}", g.h("cache-status"));
    // Configurable: 0 turns it off.
    let off = gateway(&origin, "shared", "heuristic_percent = 0");
    get(&off, "/recent").await;
    assert_ne!(get(&off, "/recent").await.x_cache(), "HIT");
}

async fn get_cc(edge: &impl Target, path: &str, cc: &str) -> Got {
    send(client().get(edge.url(path)).header("cache-control", cc)).await
}

#[tokio::test]
async fn test_rfc_request_directives_when_honoured() {
    for fast_path in [true, false] {
        let (origin, seen) = revalidating_origin(
            &["etag: \"d1\"", "cache-control: max-age=100"],
            &["etag: \"d1\"", "cache-control: max-age=100"],
        );
        let edge = gateway(
            &origin,
            "shared",
            &format!("honor_client_no_cache = true\nfast_path = {fast_path}"),
        );
        let at = |what: &str| format!("{what} (fast_path = {fast_path})");
        assert_eq!(get(&edge, "/d").await.x_cache(), "MISS");
        edge.age(Duration::from_secs(10));
        // max-age: age 10 is acceptable under 20, not under 5.
        assert_eq!(
            get_cc(&edge, "/d", "max-age=20").await.x_cache(),
            "HIT",
            "{}",
            at("max-age=20")
        );
        assert_eq!(
            get_cc(&edge, "/d", "max-age=5").await.x_cache(),
            "REVALIDATED",
            "{}",
            at("max-age=5")
        );
        // min-fresh: 100 s left after the revalidation; 95 more is fine, 150 is not.
        assert_eq!(
            get_cc(&edge, "/d", "min-fresh=95").await.x_cache(),
            "HIT",
            "{}",
            at("min-fresh=95")
        );
        assert_eq!(
            get_cc(&edge, "/d", "min-fresh=150").await.x_cache(),
            "REVALIDATED",
            "{}",
            at("min-fresh")
        );
        assert_eq!(get_cc(&edge, "/d", "only-if-cached").await.x_cache(), "HIT");
        let origin_before = hits(&origin);
        // Stale by 50 s: max-stale=60 takes it as is; max-stale=10 does not.
        edge.age(Duration::from_secs(150));
        let g = get_cc(&edge, "/d", "max-stale=60").await;
        assert_eq!(
            (g.x_cache(), g.body.as_str()),
            ("HIT", "stored body"),
            "{}",
            at("max-stale=60")
        );
        let g = get_cc(&edge, "/d", "max-stale").await;
        assert_eq!(g.x_cache(), "HIT", "{}", at("max-stale"));
        // only-if-cached with nothing usable: 504 in the gateway's envelope, origin untouched.
        let g = get_cc(&edge, "/d", "max-stale=10, only-if-cached").await;
        assert_eq!(g.status, 504, "{}", at("only-if-cached, stale"));
        let err: serde_json::Value = serde_json::from_str(&g.body).expect("envelope");
        assert_eq!(err["error"]["code"], "NOT_CACHED");
        let g = get_cc(&edge, "/never", "only-if-cached").await;
        assert_eq!(g.status, 504);
        assert_eq!(hits(&origin), origin_before, "{}", at("origin untouched"));
        // no-store: the response to this request is not stored (a stored one may be used).
        assert_eq!(get_cc(&edge, "/ns", "no-store").await.x_cache(), "MISS");
        assert_eq!(get(&edge, "/ns").await.x_cache(), "MISS");
        assert_eq!(get_cc(&edge, "/ns", "no-store").await.x_cache(), "HIT");
        assert!(seen.lock().unwrap().iter().all(|l| !l.contains("/never")));
    }
    // must-revalidate forbids serving stale, max-stale or not.
    let origin = RawOrigin::start(|_| {
        Some(response(
            "200 OK",
            &lines(&["cache-control: max-age=10, must-revalidate", "etag: \"m\""]),
            "m",
        ))
    });
    let edge = gateway(&origin, "shared", "honor_client_no_cache = true");
    get(&edge, "/m").await;
    edge.age(Duration::from_secs(20));
    assert_ne!(get_cc(&edge, "/m", "max-stale").await.x_cache(), "HIT");
    // Not honoured unless configured: only-if-cached and max-stale are ignored.
    let (origin, _) = revalidating_origin(&["etag: \"d1\"", "cache-control: max-age=100"], &[]);
    let edge = gateway(&origin, "shared", "");
    assert_eq!(get_cc(&edge, "/x", "only-if-cached").await.status, 200);
    edge.age(Duration::from_secs(150));
    assert_ne!(get_cc(&edge, "/x", "max-stale").await.x_cache(), "HIT");
}

/// An origin whose GET answers 200 (etag "h1", `get_cc`, x-version: 1) and whose HEAD always
/// answers 200 whatever the conditions, with `head_headers`.
fn head_origin(
    get_cc: &'static str,
    head_headers: &'static [&'static str],
) -> (RawOrigin, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let origin = RawOrigin::start(move |head| {
        let line = request_line(head);
        log.lock().unwrap().push(line.clone());
        if line.starts_with("HEAD") {
            let mut out = String::from("HTTP/1.1 200 OK\r\n");
            for h in head_headers {
                out.push_str(&format!("{h}\r\n"));
            }
            out.push_str("content-length: 11\r\n\r\n");
            Some(out.into_bytes())
        } else {
            Some(response(
                "200 OK",
                &lines(&["etag: \"h1\"", get_cc, "x-version: 1"]),
                "stored body",
            ))
        }
    });
    (origin, seen)
}

#[tokio::test]
async fn test_rfc_head_200_with_matching_validators_updates_the_stored_get() {
    for fast_path in [true, false] {
        let (origin, seen) = head_origin(
            "cache-control: max-age=1",
            &["etag: \"h1\"", "cache-control: max-age=60", "x-version: 2"],
        );
        let edge = gateway(&origin, "shared", &format!("fast_path = {fast_path}"));
        get(&edge, "/hu").await;
        edge.age(Duration::from_secs(2));
        let h = head(&edge, "/hu").await;
        assert_eq!((h.status, h.h("x-version")), (200, "2"));
        assert_eq!(seen.lock().unwrap()[1], "HEAD /hu HTTP/1.1");
        let g = get(&edge, "/hu").await;
        assert_eq!(
            (g.x_cache(), g.h("x-version")),
            ("HIT", "2"),
            "fast_path = {fast_path}"
        );
        assert_eq!(g.h("cache-control"), "max-age=60");
        assert_eq!(g.body, "stored body");
        assert_eq!(hits(&origin), 2);
    }
    // Different validators: the stored GET is not updated (and, fresh, it is marked stale).
    let (origin, _) = head_origin(
        "cache-control: max-age=1",
        &["etag: \"h2\"", "cache-control: max-age=60", "x-version: 2"],
    );
    let edge = gateway(&origin, "shared", "honor_client_no_cache = true");
    get(&edge, "/hd").await;
    edge.age(Duration::from_secs(2));
    head(&edge, "/hd").await;
    let g = get(&edge, "/hd").await;
    assert_ne!(g.x_cache(), "HIT");
    assert_eq!(g.h("x-version"), "1");
    // A fresh stored GET, a HEAD the client wants validated, a changed ETag: stale now.
    let (origin, _) = head_origin(
        "cache-control: max-age=600",
        &["etag: \"h2\"", "cache-control: max-age=60"],
    );
    let edge = gateway(&origin, "shared", "honor_client_no_cache = true");
    get(&edge, "/hs").await;
    assert_eq!(get(&edge, "/hs").await.x_cache(), "HIT");
    send(
        client()
            .head(edge.url("/hs"))
            .header("cache-control", "no-cache"),
    )
    .await;
    assert_ne!(get(&edge, "/hs").await.x_cache(), "HIT");
}

#[tokio::test]
async fn test_rfc_client_conditional_is_forwarded_on_a_miss_when_configured() {
    let (origin, _) = revalidating_origin(
        &["etag: \"c1\"", "cache-control: max-age=60"],
        &["etag: \"c1\""],
    );
    let inm = |edge: &InProcess| {
        send(
            client()
                .get(edge.url("/c"))
                .header("if-none-match", "\"c1\""),
        )
    };
    let edge = gateway(&origin, "shared", "forward_conditional_misses = true");
    // Nothing stored: the client's condition goes to the origin, its 304 comes back, nothing
    // is stored.
    let g = inm(&edge).await;
    assert_eq!(
        (g.status, g.x_cache()),
        (304, "MISS"),
        "{}",
        g.h("cache-status")
    );
    assert_eq!(get(&edge, "/c").await.x_cache(), "MISS");
    // Stored now: the cache answers the condition itself.
    let g = inm(&edge).await;
    assert_eq!((g.status, g.x_cache()), (304, "HIT"));
    assert_eq!(hits(&origin), 2);
    // Off (the default): the miss fetches and stores the whole response, then answers 304.
    let (origin, _) = revalidating_origin(&["etag: \"c1\"", "cache-control: max-age=60"], &[]);
    let edge = gateway(&origin, "shared", "");
    let g = inm(&edge).await;
    assert_eq!((g.status, g.x_cache()), (304, "MISS"));
    assert_eq!(get(&edge, "/c").await.x_cache(), "HIT");
    assert_eq!(hits(&origin), 1);
}

#[tokio::test]
async fn test_rfc_entity_tags_are_parsed_and_if_match_goes_to_the_origin() {
    let preconditions = Arc::new(AtomicUsize::new(0));
    let seen = preconditions.clone();
    let origin = RawOrigin::start(move |head| {
        if has_header(head, "if-match") && has_header(head, "if-unmodified-since") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        let line = request_line(head);
        let etag = if line.contains("/unquoted") {
            "etag: v1"
        } else {
            "etag: \"v1\""
        };
        Some(response(
            "200 OK",
            &lines(&[etag, "cache-control: max-age=60"]),
            "tagged",
        ))
    });
    for fast_path in [true, false] {
        let edge = gateway(&origin, "shared", &format!("fast_path = {fast_path}"));
        let inm = |path: &str, v: &str| {
            send(
                client()
                    .get(edge.url(path))
                    .header("if-none-match", v.to_string()),
            )
        };
        get(&edge, "/quoted").await;
        get(&edge, "/unquoted").await;
        for (path, value, status) in [
            ("/quoted", "\"v1\"", 304),
            ("/quoted", "\"a,b\", W/\"v1\"", 304),
            // Not an entity-tag: matches nothing.
            ("/quoted", "v1", 200),
            // An unquoted stored ETag is not one either: only `*` matches it.
            ("/unquoted", "v1", 200),
            ("/unquoted", "*", 304),
        ] {
            let g = inm(path, value).await;
            assert_eq!(
                (g.status, g.x_cache()),
                (status, "HIT"),
                "{path} {value} (fast_path = {fast_path})"
            );
        }
        // If-Match / If-Unmodified-Since are the origin's to evaluate: passed through.
        let before = hits(&origin);
        let g = send(
            client()
                .get(edge.url("/quoted"))
                .header("if-match", "\"v1\"")
                .header("if-unmodified-since", LAST_MODIFIED),
        )
        .await;
        assert_eq!((g.status, g.x_cache()), (200, "BYPASS"));
        assert_eq!(hits(&origin), before + 1);
    }
    assert_eq!(preconditions.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn test_rfc_range_on_a_response_over_max_object_size() {
    // An origin that honours Range itself, with a 4 KiB body.
    let body: String = "x".repeat(4096);
    let ranged = Arc::new(AtomicUsize::new(0));
    let seen = ranged.clone();
    let origin = RawOrigin::start(move |head| {
        let cc = "cache-control: max-age=60".to_string();
        if has_header(head, "range") {
            seen.fetch_add(1, Ordering::SeqCst);
            return Some(response(
                "206 Partial Content",
                &[cc, "content-range: bytes 0-3/4096".into()],
                "xxxx",
            ));
        }
        Some(response("200 OK", &[cc], &body))
    });
    let edge = gateway(&origin, "shared", "max_object_size = \"1KiB\"");
    // The first one fetches the whole response to store it, finds it too large: the client
    // gets the whole 200 (a server may ignore Range), and nothing is stored.
    let first = ranged_get(&edge, "/big").await;
    assert_eq!((first.status, first.body.len()), (200, 4096));
    // The key is now known to be uncacheable: Range goes to the origin, its 206 comes back.
    let second = ranged_get(&edge, "/big").await;
    assert_eq!((second.status, second.body.as_str()), (206, "xxxx"));
    assert_eq!(second.h("content-range"), "bytes 0-3/4096");
    assert_eq!(ranged.load(Ordering::SeqCst), 1);
}

async fn ranged_get(edge: &impl Target, path: &str) -> Got {
    send(client().get(edge.url(path)).header("range", "bytes=0-3")).await
}

#[tokio::test]
async fn test_rfc_a_response_stored_without_date_gets_its_time_of_receipt() {
    // RFC 9110 §6.6.1: the cache records when it received a response without Date. Seen here
    // through If-Range: a Last-Modified is a strong validator only with a Date a second or
    // more after it, so without the recorded Date the range would not be served.
    let origin = RawOrigin::start(|_| {
        Some(response(
            "200 OK",
            &lines(&[
                "cache-control: max-age=60",
                "last-modified: Tue, 01 Dec 2026 10:00:00 GMT",
            ]),
            RANGED_BODY,
        ))
    });
    for fast_path in [true, false] {
        let edge = gateway(&origin, "shared", &format!("fast_path = {fast_path}"));
        get(&edge, "/no-date").await;
        let g = send(
            client()
                .get(edge.url("/no-date"))
                .header("range", "bytes=0-3")
                .header("if-range", LAST_MODIFIED),
        )
        .await;
        assert_eq!(
            (g.status, g.body.as_str(), g.x_cache()),
            (206, "0123", "HIT")
        );
    }
}

#[tokio::test]
async fn test_rfc_request_no_store_does_not_refresh_a_stale_entry() {
    let (origin, _) = revalidating_origin(
        &[
            "etag: \"s1\"",
            "cache-control: max-age=1, stale-while-revalidate=60",
        ],
        &["etag: \"s1\"", "cache-control: max-age=60"],
    );
    let edge = gateway(&origin, "shared", "honor_client_no_cache = true");
    get(&edge, "/ns-stale").await;
    edge.age(Duration::from_secs(2));
    // no-store: nothing of the response is stored, a 304's update included. The request takes
    // no cache lock, so it revalidates itself instead of a background refresh.
    let g = get_cc(&edge, "/ns-stale", "no-store").await;
    assert_eq!(
        (g.x_cache(), g.body.as_str()),
        ("REVALIDATED", "stored body")
    );
    assert!(
        g.h("cache-status").contains("fwd-status=304"),
        "{}",
        g.h("cache-status")
    );
    // Still stale for the next request, which serves it stale and refreshes it.
    let g = get(&edge, "/ns-stale").await;
    assert_eq!(g.x_cache(), "STALE", "{}", g.h("cache-status"));
}

#[tokio::test]
async fn test_rfc_must_understand_overrides_no_store() {
    let origin = per_path_origin(&[
        (
            "/mu",
            &["cache-control: max-age=60, no-store, must-understand"],
        ),
        ("/ns", &["cache-control: max-age=60, no-store"]),
    ]);
    for share in ["shared", "per-key"] {
        let edge = gateway(&origin, share, "");
        for (path, stored) in [("/mu", true), ("/ns", false)] {
            get(&edge, path).await;
            let g = get(&edge, path).await;
            assert_eq!(
                g.x_cache() == "HIT",
                stored,
                "{share} {path}: {}",
                g.h("cache-status")
            );
        }
    }
}
