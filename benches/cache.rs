//! Criterion benches of the cache's per-request work. Run: `cargo bench --bench cache`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora::cache::key::hash_key;
use pingora::cache::CacheMeta;
use pingora::http::{RequestHeader, ResponseHeader};
use raster_edge::cache::invalidation::{Invalidation, Rules};
use raster_edge::cache::key::{self, KeyParts, Partition};
use raster_edge::cache::{policy, MokaStorage};
use raster_edge::config::{self, CacheRoute, CacheSettings, Share};
use raster_edge::edge::KeyId;
use raster_edge::routes::{PathPattern, RouteNames};

const PATH: &str = "/organizations/monogram-labs/libraries/barcelona/assets";
const PQ: &str = "/organizations/monogram-labs/libraries/barcelona/assets?page=2&pageSize=50";

fn routes() -> Vec<CacheRoute> {
    [
        ("me", "/me"),
        ("libraries", "/organizations/{org}/libraries"),
        ("assets", "/organizations/{org}/libraries/{library}/assets"),
        (
            "asset",
            "/organizations/{org}/libraries/{library}/assets/{asset}",
        ),
        ("tags", "/organizations/{org}/libraries/{library}/tags"),
        ("search", "/organizations/{org}/search/assets"),
    ]
    .iter()
    .map(|(n, p)| CacheRoute {
        name: n.to_string(),
        pattern: PathPattern::parse(p).expect("pattern"),
        ttl: Some(Duration::from_secs(15)),
        stale_while_revalidate: Some(Duration::from_secs(15)),
        stale_if_error: Some(Duration::from_secs(300)),
    })
    .collect()
}

fn settings() -> CacheSettings {
    CacheSettings {
        enabled: true,
        max_memory: 1 << 30,
        max_object_size: 8 << 20,
        share: Share::PerKey,
        default_ttl: Duration::ZERO,
        negative_ttl: Duration::from_secs(5),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        honor_client_no_cache: false,
        lock_timeout: Duration::from_secs(10),
        uncacheable_ttl: Duration::from_secs(30),
        fast_path: true,
        targeted_cache_control: None,
        store_statuses: vec![200, 203, 204, 300, 301, 404, 405, 410, 414, 501],
        heuristic_percent: 10,
        heuristic_max_ttl: Duration::from_secs(3600),
        forward_conditional_misses: false,
        routes: routes(),
        invalidation: vec![],
        shared: raster_edge::config::SharedSettings {
            enabled: false,
            max_object_size: 1 << 20,
            coalesce: true,
        },
    }
}

fn bench_key(c: &mut Criterion) {
    // The embedded default's rules (Raster's write routes): the scopes a read's key carries.
    let file = config::parse(config::EMBEDDED_DEFAULT, "embedded default", &[]).expect("config");
    let rules = config::validate(file)
        .expect("valid config")
        .cache
        .invalidation;
    let inv = Invalidation::new();
    let rules = Rules::new(&rules);
    inv.bump_scope("/organizations/monogram-labs/libraries/barcelona");
    let id = KeyId([7; 16]);
    // Regression: every request (hit or miss) pays this before the store is even consulted.
    c.bench_function("cache_key/primary_with_generations", |b| {
        b.iter(|| {
            let mut g = Vec::with_capacity(8);
            inv.generations(&rules, black_box(PATH), black_box(PQ), &mut g);
            let p = key::primary(&KeyParts {
                authority: "api.raster.app",
                path_and_query: PQ,
                api_version: b"2026-05-20",
                partition: Partition::Key(id),
                generations: &g,
            });
            black_box(hash_key(&p))
        })
    });
}

fn bench_policy(c: &mut Criterion) {
    let s = settings();
    let route = s.routes.get(2);
    let mut req = RequestHeader::build("GET", PQ.as_bytes(), None).expect("req");
    req.insert_header("authorization", "Bearer k").expect("h");
    let mut resp = ResponseHeader::build(200, None).expect("resp");
    resp.insert_header(
        "cache-control",
        "private, max-age=30, stale-while-revalidate=10, stale-if-error=300",
    )
    .expect("h");
    resp.insert_header("etag", "\"abc\"").expect("h");
    resp.insert_header("vary", "Api-Version").expect("h");
    // Regression: every miss (and every 304 merge) pays this to decide storage and freshness.
    c.bench_function("policy/cache_control_parse_and_decide", |b| {
        b.iter(|| {
            black_box(policy::decide(
                &s,
                route,
                &req,
                black_box(&resp),
                SystemTime::now(),
            ))
        })
    });
}

fn bench_routes(c: &mut Criterion) {
    let s = settings();
    let names = RouteNames::new(s.routes.iter().map(|r| (&r.pattern, r.name.as_str())));
    // Regression: route matching runs on every request (metrics label and TTL rule lookup).
    c.bench_function("routes/first_match_of_six", |b| {
        b.iter(|| black_box(names.name_for(black_box("/organizations/o/search/assets"))))
    });
}

fn filled(n: u32) -> MokaStorage {
    let s = MokaStorage::new(1 << 32, 1 << 20);
    let now = SystemTime::now();
    for i in 0..n {
        let mut h = ResponseHeader::build(200, None).expect("resp");
        h.insert_header("content-length", "16").expect("h");
        let meta = CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, h);
        s.insert_meta(
            hash_key(i.to_le_bytes()),
            &meta,
            Bytes::from_static(b"0123456789abcdef"),
        );
    }
    s.run_pending_tasks();
    s
}

fn bench_storage(c: &mut Criterion) {
    for n in [10_000u32, 1_000_000] {
        let s = filled(n);
        let keys: Vec<_> = (0..1024u32)
            .map(|i| hash_key((i * 7919 % n).to_le_bytes()))
            .collect();
        let mut i = 0usize;
        // Regression: the fast path's hit cost is this lookup plus a header clone; growth with
        // entry count would mean moka's hashing/sharding stopped scaling.
        c.bench_function(&format!("storage/lookup_{n}_entries"), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(s.get(&keys[i]).map(|e| e.to_meta()))
            })
        });
    }
}

criterion_group!(
    benches,
    bench_key,
    bench_policy,
    bench_routes,
    bench_storage
);
criterion_main!(benches);
