//! raster-edge: a caching, rate-limiting gateway for the Raster REST API, built on Pingora.
//!
//! Read the request path top-down: [`edge`] (authentication and version checks, key id) →
//! [`ratelimit`] (per-key GCRA) → [`cache`] (pingora-cache on a moka store, invalidation) →
//! [`upstream`] (the origin peer) → [`gateway`] (the `ProxyHttp` impl that strings these
//! together and writes the response) → [`access_log`] and [`metrics`]. [`config`] turns the
//! TOML file into validated [`config::Settings`]; [`server`] builds the Pingora server from them;
//! [`admin`] serves health, metrics and purge on a separate listener.
//!
//! The Raster API simulator is not part of this library: it lives in the `raster-mock` binary's
//! own module tree (`src/bin/raster-mock/`), so the gateway never links it.

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod config;
pub mod edge;
pub mod errors;
pub mod gateway;
pub mod metrics;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod upstream;
