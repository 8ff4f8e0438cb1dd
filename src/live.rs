//! The part of the configuration that changes without a restart, as one immutable snapshot
//! ([`LiveSettings`]) behind an [`ArcSwap`] ([`Live`]). The gateway reads it once per request
//! (`new_ctx`), so a request sees one configuration from its first hook to its last while a
//! reload ([`crate::reload`]) swaps in the next one for the requests after it. Nothing else
//! changes: the cache store, the rate-limit state, the listeners and the connections stay.
//!
//! What is live is decided where a value is read: the request path reads route rules and TTLs,
//! invalidation rules, edge checks, upstream timeouts and retries, the access-log switch and the
//! admin token from the snapshot; every other key is read from the boot settings, and a reload
//! that changes one is refused ([`crate::reload::LIVE_KEYS`]).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cache::CacheLive;
use crate::config::effective::Effective;
use crate::config::Settings;
use crate::edge::Edge;
use crate::routes::RouteNames;

/// One configuration, compiled for the request path.
pub struct LiveSettings {
    /// The whole validated settings this snapshot was built from. Keys that cannot change live
    /// hold the boot values here too.
    pub settings: Arc<Settings>,
    /// Route names for metrics and the route index into `cache.settings.routes`.
    pub routes: RouteNames,
    pub edge: Edge,
    pub cache: CacheLive,
    /// `raster_edge_config_info{hash}`: names the effective configuration.
    pub hash: String,
}

impl LiveSettings {
    pub fn new(effective: &Effective) -> Self {
        let settings = Arc::new(effective.settings.clone());
        Self {
            routes: RouteNames::new(
                settings
                    .cache
                    .routes
                    .iter()
                    .map(|r| (&r.pattern, r.name.as_str())),
            ),
            edge: Edge::new(settings.edge.clone()).with_graphql(
                settings
                    .graphql
                    .enabled
                    .then(|| settings.graphql.path.clone()),
            ),
            cache: CacheLive::new(&settings.cache),
            hash: effective.hash(),
            settings,
        }
    }
}

/// The current [`LiveSettings`], swapped whole by a reload.
pub struct Live {
    current: ArcSwap<LiveSettings>,
}

impl Live {
    pub fn new(first: LiveSettings) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(first),
        })
    }

    /// The snapshot for one request (an atomic increment; no lock).
    pub fn load(&self) -> Arc<LiveSettings> {
        self.current.load_full()
    }

    pub(crate) fn store(&self, next: LiveSettings) {
        self.current.store(Arc::new(next));
    }
}
