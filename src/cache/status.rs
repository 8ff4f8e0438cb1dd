//! What the cache did, as response headers: `X-Cache` (HIT/MISS/STALE/REVALIDATED/BYPASS),
//! `Cache-Status` (RFC 9211, cache name `raster-edge`) and `Age`; and as the
//! `cache_lookups{result}` metric. One function renders them for both readers of the store
//! (the fast path and the state machine), so the two cannot drift apart.

use super::phase::{NoStoreReason, StaleKind};

/// What the cache did for one request, as `X-Cache` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheStatus {
    /// Not a cacheable request (or the cache is off).
    #[default]
    Bypass,
    Hit,
    Miss,
    Stale,
    Revalidated,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
        }
    }
}

/// The outcome of one request, enough to render every header and the metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Served fresh from the store; `collapsed` when it waited on another request's fetch.
    Hit { ttl: i64, collapsed: bool },
    /// Served stale, while revalidating or because the origin failed.
    Stale {
        ttl: i64,
        kind: StaleKind,
        fwd_status: Option<u16>,
    },
    /// A stored response confirmed by the origin's 304.
    Revalidated { ttl: i64, stored: bool },
    /// Fetched from the origin. `stale` when a stored stale response was replaced.
    Miss {
        stale: bool,
        fwd_status: Option<u16>,
        stored: bool,
        detail: Option<NoStoreReason>,
    },
    /// Not looked up at all.
    Bypass { detail: &'static str },
}

impl Outcome {
    pub fn status(&self) -> CacheStatus {
        match self {
            Outcome::Hit { .. } => CacheStatus::Hit,
            Outcome::Stale { .. } => CacheStatus::Stale,
            Outcome::Revalidated { .. } => CacheStatus::Revalidated,
            Outcome::Miss { .. } => CacheStatus::Miss,
            Outcome::Bypass { .. } => CacheStatus::Bypass,
        }
    }

    /// The `cache_lookups_total{result}` label.
    pub fn metric(&self) -> &'static str {
        use crate::metrics::LookupResult as R;
        match self {
            Outcome::Hit {
                collapsed: true, ..
            } => R::Coalesced,
            Outcome::Hit { .. } => R::Hit,
            Outcome::Stale { .. } => R::Stale,
            Outcome::Revalidated { .. } => R::Revalidated,
            Outcome::Miss { .. } => R::Miss,
            Outcome::Bypass { .. } => R::Bypass,
        }
        .as_str()
    }

    /// The `Cache-Status` value (RFC 9211).
    pub fn cache_status(&self) -> String {
        const NAME: &str = "raster-edge";
        let fwd_status =
            |s: &Option<u16>| s.map(|s| format!("; fwd-status={s}")).unwrap_or_default();
        match self {
            Outcome::Hit {
                ttl,
                collapsed: false,
            } => format!("{NAME}; hit; ttl={ttl}"),
            Outcome::Hit {
                ttl,
                collapsed: true,
            } => format!("{NAME}; hit; ttl={ttl}; collapsed"),
            Outcome::Stale {
                ttl,
                kind: StaleKind::IfError,
                fwd_status: s,
            } => format!(
                "{NAME}; fwd=stale{}; ttl={ttl}; detail={}",
                fwd_status(s),
                StaleKind::IfError.as_str()
            ),
            Outcome::Stale {
                ttl,
                kind: StaleKind::WhileRevalidate,
                ..
            } => format!(
                "{NAME}; hit; ttl={ttl}; detail={}",
                StaleKind::WhileRevalidate.as_str()
            ),
            Outcome::Revalidated { ttl, stored } => format!(
                "{NAME}; fwd=stale; fwd-status=304; ttl={ttl}{}",
                if *stored { "; stored" } else { "" }
            ),
            Outcome::Miss {
                stale,
                fwd_status: s,
                stored,
                detail,
            } => {
                let mut v = format!(
                    "{NAME}; fwd={}{}",
                    if *stale { "stale" } else { "uri-miss" },
                    fwd_status(s)
                );
                if *stored {
                    v.push_str("; stored");
                }
                if let Some(d) = detail {
                    v.push_str("; detail=");
                    v.push_str(d.as_str());
                }
                v
            }
            Outcome::Bypass { detail } => format!("{NAME}; fwd=bypass; detail={detail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_values() {
        assert_eq!(
            Outcome::Hit {
                ttl: 12,
                collapsed: false
            }
            .cache_status(),
            "raster-edge; hit; ttl=12"
        );
        assert_eq!(
            Outcome::Miss {
                stale: false,
                fwd_status: Some(200),
                stored: true,
                detail: None
            }
            .cache_status(),
            "raster-edge; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(
            Outcome::Bypass { detail: "method" }.cache_status(),
            "raster-edge; fwd=bypass; detail=method"
        );
        assert_eq!(
            Outcome::Hit {
                ttl: 1,
                collapsed: true
            }
            .metric(),
            "coalesced"
        );
        assert_eq!(
            Outcome::Revalidated {
                ttl: 5,
                stored: true
            }
            .status()
            .as_str(),
            "REVALIDATED"
        );
    }
}
