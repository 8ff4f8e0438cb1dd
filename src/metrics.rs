//! Every Prometheus metric the gateway exports: the names as constants (one place to grep, the
//! sozu way), their registration on the default registry, and label values that are bounded by
//! construction (method, status class, cache status, route name, tier — never a key or key id).
//! Units are in the names (`_seconds`, `_bytes`, `_total`).

use once_cell::sync::Lazy;
use prometheus::{
    register_gauge, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Encoder, Gauge, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "raster_edge_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "raster_edge_request_duration_seconds";
pub const UPSTREAM_DURATION_SECONDS: &str = "raster_edge_upstream_duration_seconds";
pub const UPSTREAM_ERRORS_TOTAL: &str = "raster_edge_upstream_errors_total";
pub const EDGE_REJECTIONS_TOTAL: &str = "raster_edge_edge_rejections_total";
pub const CACHE_LOOKUPS_TOTAL: &str = "raster_edge_cache_lookups_total";
pub const CACHE_ENTRIES: &str = "raster_edge_cache_entries";
pub const CACHE_BYTES: &str = "raster_edge_cache_bytes";
pub const CACHE_EVICTIONS_TOTAL: &str = "raster_edge_cache_evictions_total";
pub const CACHE_INVALIDATIONS_TOTAL: &str = "raster_edge_cache_invalidations_total";
pub const CACHE_STORE_REJECTIONS_TOTAL: &str = "raster_edge_cache_store_rejections_total";
pub const RATELIMIT_DECISIONS_TOTAL: &str = "raster_edge_ratelimit_decisions_total";
pub const RATELIMIT_FALLBACK_ACTIVE: &str = "raster_edge_ratelimit_fallback_active";
pub const RATELIMIT_FALLBACKS_TOTAL: &str = "raster_edge_ratelimit_fallbacks_total";
pub const RATELIMIT_TRACKED_KEYS: &str = "raster_edge_ratelimit_tracked_keys";
pub const REDIS_ERRORS_TOTAL: &str = "raster_edge_redis_errors_total";
pub const BUILD_INFO: &str = "raster_edge_build_info";
pub const READY: &str = "raster_edge_ready";

// Configuration reload and build identity.
pub const CONFIG_RELOAD_TOTAL: &str = "raster_edge_config_reload_total";
pub const CONFIG_INFO: &str = "raster_edge_config_info";
/// The commit the binary was built from (build.rs: `git`, else `RASTER_EDGE_COMMIT`, else
/// `unknown`).
pub const BUILD_COMMIT: &str = env!("RASTER_BUILD_COMMIT");

// Label values. Every bounded label the gateway emits is one of these enums; `as_str()` is the
// exported value, and help texts and tests use the same constants.

/// Defines a label enum with its exported values, in order.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $value),+ }
            }

            /// Every value, comma-separated, for help texts.
            pub fn help_list() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }
    };
}

label_values! {
    /// `raster_edge_cache_lookups_total{result}`.
    LookupResult {
        Hit => "hit",
        Miss => "miss",
        Stale => "stale",
        Revalidated => "revalidated",
        Bypass => "bypass",
        Coalesced => "coalesced",
    }
}

label_values! {
    /// `raster_edge_cache_store_rejections_total{reason}` and the `Cache-Status` detail: why a
    /// response was not stored (the policy's refusals, and what the store or pingora-cache
    /// decided after the policy said yes). The cache's own methods on it are in
    /// `cache::phase`.
    NoStoreReason {
        SetCookie => "set-cookie",
        VaryStar => "vary-star",
        NoStore => "no-store",
        Private => "private",
        Authorization => "authorization",
        Status => "status",
        UpstreamError => "upstream-error",
        NoFreshness => "no-freshness",
        StaleOnArrival => "stale-on-arrival",
        TooLarge => "too-large",
        Truncated => "truncated",
        LockReleased => "lock-released",
        LockTimeout => "lock-timeout",
        Uncacheable => "uncacheable",
        Head => "head",
        RequestNoStore => "request-no-store",
    }
}

label_values! {
    /// `raster_edge_cache_invalidations_total{reason}`.
    InvalidationReason {
        Write => "write",
        Location => "location",
        Purge => "purge",
        Fleet => "fleet",
        Graphql => "graphql",
    }
}

label_values! {
    /// `raster_edge_cache_evictions_total{cause}`.
    EvictionCause {
        Size => "size",
        Expired => "expired",
        Explicit => "explicit",
        Replaced => "replaced",
    }
}

label_values! {
    /// `raster_edge_upstream_errors_total{kind}`.
    UpstreamErrorKind {
        ConnectTimeout => "connect_timeout",
        Timeout => "timeout",
        ConnectRefused => "connect_refused",
        NoRoute => "no_route",
        ConnectError => "connect_error",
        Dns => "dns",
        Tls => "tls",
        Closed => "closed",
        Protocol => "protocol",
        Other => "other",
    }
}

label_values! {
    /// `raster_edge_redis_errors_total{op}`: what the gateway was doing with Redis.
    RedisOp {
        RateLimit => "ratelimit",
        Connect => "connect",
        Invalidation => "invalidation",
        Shared => "shared",
    }
}

label_values! {
    /// `raster_edge_redis_errors_total{kind}`: one classification for every Redis use.
    RedisErrorKind {
        Timeout => "timeout",
        Refused => "refused",
        Dropped => "dropped",
        Io => "io",
        Response => "response",
        NoScript => "noscript",
        Type => "type",
        Auth => "auth",
        Loading => "loading",
        NoRuntime => "no_runtime",
        BadReply => "bad_reply",
        Other => "other",
    }
}

impl RedisErrorKind {
    pub fn of(e: &redis::RedisError) -> Self {
        if e.is_timeout() {
            Self::Timeout
        } else if e.is_connection_refusal() {
            Self::Refused
        } else if e.is_connection_dropped() {
            Self::Dropped
        } else {
            match e.kind() {
                redis::ErrorKind::IoError => Self::Io,
                redis::ErrorKind::ResponseError | redis::ErrorKind::ExtensionError => {
                    Self::Response
                }
                redis::ErrorKind::NoScriptError => Self::NoScript,
                redis::ErrorKind::TypeError => Self::Type,
                redis::ErrorKind::AuthenticationFailed => Self::Auth,
                redis::ErrorKind::BusyLoadingError => Self::Loading,
                _ => Self::Other,
            }
        }
    }
}

label_values! {
    /// `raster_edge_ratelimit_decisions_total{result}`.
    RateLimitResult {
        Allowed => "allowed",
        Limited => "limited",
        ShadowLimited => "shadow_limited",
    }
}

label_values! {
    /// `raster_edge_ratelimit_fallbacks_total{policy}`.
    FallbackPolicy {
        Local => "local",
        Allow => "allow",
        Deny => "deny",
    }
}

/// Latency buckets from 50µs to 30s: hits are sub-millisecond, origin calls are not.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

label_values! {
    /// `raster_edge_config_reload_total{result}`.
    ReloadResult {
        Ok => "ok",
        Error => "error",
    }
}

pub struct Metrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub edge_rejections: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub cache_entries: IntGauge,
    pub cache_bytes: IntGauge,
    pub cache_evictions: IntCounterVec,
    pub cache_invalidations: IntCounterVec,
    pub cache_store_rejections: IntCounterVec,
    pub ratelimit_decisions: IntCounterVec,
    pub ratelimit_fallback_active: IntGauge,
    pub ratelimit_fallbacks: IntCounterVec,
    pub ratelimit_tracked_keys: IntGauge,
    pub redis_errors: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub ready: Gauge,
    pub config_reloads: IntCounterVec,
    pub config_info: IntGaugeVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let m = Metrics {
        requests: register_int_counter_vec!(
            REQUESTS_TOTAL,
            "Requests answered, by method, status class, cache status and route",
            &["method", "status", "cache", "route"]
        )?,
        request_duration: register_histogram_vec!(
            REQUEST_DURATION_SECONDS,
            "Time from request start to the end of the response, by route and cache status",
            &["route", "cache"],
            LATENCY_BUCKETS.to_vec()
        )?,
        upstream_duration: register_histogram_vec!(
            UPSTREAM_DURATION_SECONDS,
            "Time to the upstream response header, by route",
            &["route"],
            LATENCY_BUCKETS.to_vec()
        )?,
        upstream_errors: register_int_counter_vec!(
            UPSTREAM_ERRORS_TOTAL,
            format!(
                "Upstream failures by kind ({})",
                UpstreamErrorKind::help_list()
            ),
            &["kind"]
        )?,
        edge_rejections: register_int_counter_vec!(
            EDGE_REJECTIONS_TOTAL,
            "Requests refused at the edge, by error code",
            &["code"]
        )?,
        cache_lookups: register_int_counter_vec!(
            CACHE_LOOKUPS_TOTAL,
            format!(
                "Cache lookups by result ({}) and route",
                LookupResult::help_list()
            ),
            &["result", "route"]
        )?,
        cache_entries: register_int_gauge!(CACHE_ENTRIES, "Objects in the cache")?,
        cache_bytes: register_int_gauge!(
            CACHE_BYTES,
            "Bytes held by the cache (headers + bodies)"
        )?,
        cache_evictions: register_int_counter_vec!(
            CACHE_EVICTIONS_TOTAL,
            format!("Cache evictions by cause ({})", EvictionCause::help_list()),
            &["cause"]
        )?,
        cache_invalidations: register_int_counter_vec!(
            CACHE_INVALIDATIONS_TOTAL,
            format!(
                "Scope and URL invalidations by reason ({})",
                InvalidationReason::help_list()
            ),
            &["reason"]
        )?,
        cache_store_rejections: register_int_counter_vec!(
            CACHE_STORE_REJECTIONS_TOTAL,
            format!(
                "Responses not stored, by reason ({})",
                NoStoreReason::help_list()
            ),
            &["reason"]
        )?,
        ratelimit_decisions: register_int_counter_vec!(
            RATELIMIT_DECISIONS_TOTAL,
            format!(
                "Rate-limit decisions by result ({}) and tier",
                RateLimitResult::help_list()
            ),
            &["result", "tier"]
        )?,
        ratelimit_fallback_active: register_int_gauge!(
            RATELIMIT_FALLBACK_ACTIVE,
            "1 while the Redis rate-limit backend is unreachable and the fallback policy decides"
        )?,
        ratelimit_fallbacks: register_int_counter_vec!(
            RATELIMIT_FALLBACKS_TOTAL,
            format!(
                "Decisions made by the fallback policy because Redis failed, by policy ({})",
                FallbackPolicy::help_list()
            ),
            &["policy"]
        )?,
        ratelimit_tracked_keys: register_int_gauge!(
            RATELIMIT_TRACKED_KEYS,
            "Keys tracked by the in-process rate limiter"
        )?,
        redis_errors: register_int_counter_vec!(
            REDIS_ERRORS_TOTAL,
            format!(
                "Redis errors by operation ({}) and kind ({})",
                RedisOp::help_list(),
                RedisErrorKind::help_list()
            ),
            &["op", "kind"]
        )?,
        build_info: register_int_gauge_vec!(
            BUILD_INFO,
            "Always 1; the version and commit labels say which build runs",
            &["version", "commit"]
        )?,
        ready: register_gauge!(READY, "1 once every listener is up")?,
        config_reloads: register_int_counter_vec!(
            CONFIG_RELOAD_TOTAL,
            format!(
                "Configuration reloads (SIGHUP, POST /admin/reload) by result ({})",
                ReloadResult::help_list()
            ),
            &["result"]
        )?,
        config_info: register_int_gauge_vec!(
            CONFIG_INFO,
            "Always 1; the hash label names the configuration in effect",
            &["hash"]
        )?,
    };
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), BUILD_COMMIT])
        .set(1);
    // Both series exist from the start, so an alert on their increase sees the first error.
    for r in ReloadResult::ALL {
        m.config_reloads.with_label_values(&[r.as_str()]);
    }
    Ok(m)
}

/// The process-wide metrics. Registration can only fail on a duplicate name, which is a
/// programming error caught by the first test that touches metrics.
pub static METRICS: Lazy<Metrics> =
    Lazy::new(|| build().unwrap_or_else(|e| panic!("metric registration: {e}")));

// Fleet: generations synced through Redis, the shared tier and fleet-wide coalescing
// (docs/FLEET.md).

pub const FLEET_SYNCED: &str = "raster_edge_fleet_synced";
pub const FLEET_RECONCILES_TOTAL: &str = "raster_edge_fleet_reconciles_total";
pub const SHARED_LOOKUPS_TOTAL: &str = "raster_edge_cache_shared_lookups_total";
pub const SHARED_STORES_TOTAL: &str = "raster_edge_cache_shared_stores_total";
pub const SHARED_BYTES_TOTAL: &str = "raster_edge_cache_shared_bytes_total";
pub const SHARED_LEASES_TOTAL: &str = "raster_edge_cache_shared_leases_total";

label_values! {
    /// `raster_edge_fleet_reconciles_total{reason}`: why generations were read from Redis.
    ReconcileReason {
        Start => "start",
        Reconnect => "reconnect",
        Gap => "gap",
        Check => "check",
    }
}

label_values! {
    /// `raster_edge_cache_shared_lookups_total{result}`.
    SharedLookup {
        Hit => "hit",
        Miss => "miss",
        // A value that failed its checksum or framing (corrupt, or another key's): a miss.
        Corrupt => "corrupt",
        Error => "error",
        // Redis skipped after a recent failure (no call made).
        Skipped => "skipped",
    }
}

label_values! {
    /// `raster_edge_cache_shared_stores_total{result}`.
    SharedStore {
        Stored => "stored",
        TooLarge => "too_large",
        Error => "error",
        Skipped => "skipped",
    }
}

label_values! {
    /// `raster_edge_cache_shared_bytes_total{direction}`.
    SharedDirection {
        Read => "read",
        Written => "written",
    }
}

label_values! {
    /// `raster_edge_cache_shared_leases_total{result}`: fleet-wide coalescing of cold keys.
    LeaseResult {
        // This instance fetches for the fleet.
        Acquired => "acquired",
        // Waited, and the holder's response arrived in the shared tier.
        Filled => "filled",
        // Waited, and the lease went away without a stored response: fetched itself.
        Released => "released",
        // Waited `cache.lock_timeout` in vain: fetched itself.
        TimedOut => "timed_out",
    }
}

pub struct FleetMetrics {
    pub synced: IntGauge,
    pub reconciles: IntCounterVec,
    pub shared_lookups: IntCounterVec,
    pub shared_stores: IntCounterVec,
    pub shared_bytes: IntCounterVec,
    pub shared_leases: IntCounterVec,
}

fn build_fleet() -> Result<FleetMetrics, prometheus::Error> {
    Ok(FleetMetrics {
        synced: register_int_gauge!(
            FLEET_SYNCED,
            "1 while this instance's invalidation generations are known to match the fleet's"
        )?,
        reconciles: register_int_counter_vec!(
            FLEET_RECONCILES_TOTAL,
            format!(
                "Generation reconciliations from Redis, by reason ({})",
                ReconcileReason::help_list()
            ),
            &["reason"]
        )?,
        shared_lookups: register_int_counter_vec!(
            SHARED_LOOKUPS_TOTAL,
            format!(
                "Shared-tier (Redis) lookups after a local miss, by result ({})",
                SharedLookup::help_list()
            ),
            &["result"]
        )?,
        shared_stores: register_int_counter_vec!(
            SHARED_STORES_TOTAL,
            format!(
                "Responses written to the shared tier, by result ({})",
                SharedStore::help_list()
            ),
            &["result"]
        )?,
        shared_bytes: register_int_counter_vec!(
            SHARED_BYTES_TOTAL,
            format!(
                "Bytes of shared-tier values, by direction ({})",
                SharedDirection::help_list()
            ),
            &["direction"]
        )?,
        shared_leases: register_int_counter_vec!(
            SHARED_LEASES_TOTAL,
            format!(
                "Fleet-wide coalescing of cold keys, by result ({})",
                LeaseResult::help_list()
            ),
            &["result"]
        )?,
    })
}

/// The fleet metrics (registered with the others on first use).
pub static FLEET: Lazy<FleetMetrics> =
    Lazy::new(|| build_fleet().unwrap_or_else(|e| panic!("metric registration: {e}")));

/// `2xx`, `4xx`… for the status label (bounded, unlike the raw status).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Bounded method label: the standard methods, everything else is `other`.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> Vec<u8> {
    Lazy::force(&METRICS);
    Lazy::force(&TLS_METRICS);
    Lazy::force(&FLEET);
    let mut out = Vec::with_capacity(16 * 1024);
    let families = prometheus::gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}

// TLS termination (src/tls.rs), in a block of their own.

pub const TLS_RELOADS_TOTAL: &str = "raster_edge_tls_reloads_total";
pub const TLS_CERTIFICATE_EXPIRY_SECONDS: &str =
    "raster_edge_tls_certificate_expiry_timestamp_seconds";
pub const TLS_SNI_TOTAL: &str = "raster_edge_tls_sni_total";

label_values! {
    /// `raster_edge_tls_reloads_total{result}`.
    TlsReloadResult {
        Ok => "ok",
        Error => "error",
    }
}

label_values! {
    /// `raster_edge_tls_sni_total{result}`: how a handshake's certificate was chosen.
    SniResult {
        Matched => "matched",
        Default => "default",
        Refused => "refused",
        None => "none",
    }
}

pub struct TlsMetrics {
    pub reloads: IntCounterVec,
    /// Label `certificate`: the config key (`tls`, `tls.certificates[0]`), bounded by the file.
    pub expiry: IntGaugeVec,
    pub sni: IntCounterVec,
}

impl TlsMetrics {
    pub fn sni(&self, result: SniResult) {
        self.sni.with_label_values(&[result.as_str()]).inc();
    }
}

fn build_tls() -> Result<TlsMetrics, prometheus::Error> {
    let m = TlsMetrics {
        reloads: register_int_counter_vec!(
            TLS_RELOADS_TOTAL,
            format!(
                "TLS certificate reloads by result ({}); on error the certificates in service are kept",
                TlsReloadResult::help_list()
            ),
            &["result"]
        )?,
        expiry: register_int_gauge_vec!(
            TLS_CERTIFICATE_EXPIRY_SECONDS,
            "notAfter of each certificate in service (unix seconds), by config key",
            &["certificate"]
        )?,
        sni: register_int_counter_vec!(
            TLS_SNI_TOTAL,
            format!(
                "TLS handshakes by certificate choice ({})",
                SniResult::help_list()
            ),
            &["result"]
        )?,
    };
    for r in TlsReloadResult::ALL {
        m.reloads.with_label_values(&[r.as_str()]);
    }
    Ok(m)
}

pub static TLS_METRICS: Lazy<TlsMetrics> =
    Lazy::new(|| build_tls().unwrap_or_else(|e| panic!("metric registration: {e}")));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_prefixed_and_registered() {
        METRICS
            .requests
            .with_label_values(&["GET", "2xx", "HIT", "assets"])
            .inc();
        let text = String::from_utf8(render()).unwrap();
        assert!(text.contains(REQUESTS_TOTAL));
        assert!(text.contains(BUILD_INFO));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("raster_edge_"), "{line}");
        }
    }
}
