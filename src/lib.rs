//! raster-edge: a caching, rate-limiting gateway for the Raster REST API, built on Pingora.
//!
//! Read the request path top-down: [`ctx`] (what a request carries from hook to hook) →
//! [`edge`] (authentication and version checks, key id) → [`ratelimit`] (per-key GCRA) →
//! [`cache`] (prepare the key, serve a fresh hit, pingora-cache's state machine on a moka
//! store, invalidation) → [`upstream`] (the origin peer) → [`response`] (the gateway's headers
//! on every response) → [`access_log`] and [`metrics`]. [`gateway`] is the `ProxyHttp` impl
//! that strings these together, one hook per step; docs/ARCHITECTURE.md walks through it.
//! [`config`] turns the TOML file into validated [`config::Settings`]; [`server`] builds the
//! Pingora server from them; [`admin`] serves health, metrics, purge, cache inspection, live [`stats`] and a status page
//! on a separate listener.
//!
//! The Raster API simulator is not part of this library: it lives in the `raster-mock` binary's
//! own module tree (`src/bin/raster-mock/`), so the gateway never links it.

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod config;
pub mod ctx;
pub mod edge;
pub mod errors;
pub mod fuzzing;
pub mod gateway;
pub mod metrics;
pub mod ratelimit;
pub mod response;
pub mod routes;
pub mod server;
pub mod stats;
pub mod upstream;
