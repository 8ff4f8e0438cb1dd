//! Micro-benchmarks of the per-request work that runs before any cache or upstream: key id
//! derivation, the edge checks, route matching. `cargo bench --bench edge`.
//! The load benchmark (benches/load/run.sh) measures the whole gateway; these isolate the parts.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;
use raster_edge::config::{self, EdgeSettings, RouteMatch, EMBEDDED_DEFAULT};
use raster_edge::edge::{Edge, KeyIdHasher};
use raster_edge::routes::{PathPattern, RouteNames};

const ASSETS: &str = "/organizations/monogram-labs/libraries/barcelona/assets";

fn edge_settings() -> EdgeSettings {
    EdgeSettings {
        require_auth: true,
        require_api_version: true,
        anonymous: vec![RouteMatch {
            method: Some(http::Method::POST),
            pattern: PathPattern::parse("/libraries").unwrap(),
        }],
        api_version: None,
        api_key: None,
        key_id_secret: b"benchmark-secret".to_vec(),
        key_id_secret_generated: false,
    }
}

fn plain_request() -> RequestHeader {
    let mut r = RequestHeader::build("GET", format!("{ASSETS}?pageSize=2").as_bytes(), None)
        .expect("request");
    r.insert_header("authorization", "Bearer demo-read")
        .expect("header");
    r.insert_header("api-version", "2026-05-20")
        .expect("header");
    r.insert_header("host", "api.raster.app").expect("header");
    r
}

fn key_id(c: &mut Criterion) {
    let hasher = KeyIdHasher::new(b"benchmark-secret");
    // A regression here is paid once per request: HMAC keying is meant to happen once at start,
    // so a jump means the hasher re-keys (or allocates) per derivation.
    c.bench_function("key_id/hmac_sha256_demo_key", |b| {
        b.iter(|| hasher.key_id(black_box("demo-read")))
    });
}

fn edge_check(c: &mut Criterion) {
    let edge = Edge::new(edge_settings());
    let req = plain_request();
    // A regression here slows every request, hit or miss: the checks (reserved path, bearer
    // parse, key id, Api-Version) should stay well under a microsecond.
    c.bench_function("edge/check_plain_get", |b| {
        b.iter(|| edge.check(black_box(&req)).expect("admitted"))
    });
}

fn route_matching(c: &mut Criterion) {
    let file = config::parse(EMBEDDED_DEFAULT, "embedded default", &[]).expect("default config");
    let settings = config::validate(file).expect("valid default config");
    let names = RouteNames::new(
        settings
            .cache
            .routes
            .iter()
            .map(|r| (&r.pattern, r.name.as_str())),
    );
    let asset = format!("{ASSETS}/bcn-0042");
    // A regression here slows every request's route label and TTL rule: the table is walked
    // first-match-wins, so a slower matcher costs once per route ahead of the match.
    c.bench_function("routes/name_for_asset_list", |b| {
        b.iter(|| names.name_for(black_box(ASSETS)))
    });
    // The last rule in the default table and a miss: the worst cases of the linear walk.
    c.bench_function("routes/name_for_single_asset", |b| {
        b.iter(|| names.name_for(black_box(&asset)))
    });
    c.bench_function("routes/name_for_unknown_path", |b| {
        b.iter(|| names.name_for(black_box("/organizations/monogram-labs/webhooks/x")))
    });
    let pattern = PathPattern::parse("/organizations/{org}/libraries/{library}/assets").unwrap();
    // A regression here hits invalidation and anonymous-route checks too: captures should
    // not allocate more than the one small Vec of (name, value) pairs.
    c.bench_function("routes/pattern_captures", |b| {
        b.iter(|| {
            pattern
                .captures(black_box(ASSETS))
                .map(|c| c.get("library"))
        })
    });
}

criterion_group!(benches, key_id, edge_check, route_matching);
criterion_main!(benches);
