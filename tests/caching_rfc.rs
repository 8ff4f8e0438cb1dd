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
    for (share, user_kept) in [("shared", false), ("per-key", true)] {
        let edge = gateway(&origin, share, "");
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
