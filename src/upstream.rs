//! The origin: where requests go and how. Owns the peer (address, TLS with SNI and certificate
//! verification, ALPN, timeouts), name resolution off the request path (Pingora's `HttpPeer::new`
//! with a host name does a blocking lookup and panics on failure, so the request path only
//! clones a ready peer; a lookup that is due runs on a short-lived thread of its own, started by
//! the request or readiness probe that finds it due: an idle gateway never wakes up to resolve),
//! the `Host` rewrite, hop-by-hop
//! header removal in both directions, and the mapping of Pingora's errors to the gateway's
//! `UPSTREAM_UNAVAILABLE` / `UPSTREAM_TIMEOUT` with the reason in the message. While the name
//! has never resolved, requests get `502 UPSTREAM_UNAVAILABLE` ("does not resolve") and
//! [`Upstream::readiness`] reports it; once it has resolved, a later failed lookup keeps the
//! previous addresses (a DNS hiccup must not take a working fleet out of rotation).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::config::UpstreamSettings;
use crate::errors::GatewayError;
use crate::metrics::UpstreamErrorKind;

/// How old a successful resolution may get before the next request refreshes it.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// How soon after a failed resolution the next request (or readiness probe) tries again.
const RESOLVE_RETRY: Duration = Duration::from_secs(2);

/// The error type of a request made while the upstream name has no address.
pub const UNRESOLVED: ErrorType = ErrorType::Custom("UpstreamUnresolved");

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded in either direction. `Transfer-Encoding`
/// is left to Pingora, which owns body framing.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

pub struct Upstream {
    settings: UpstreamSettings,
    addrs: RwLock<Arc<Vec<SocketAddr>>>,
    next: AtomicUsize,
    /// Why the last lookup failed, while no address is known (for `/readyz`).
    unresolved: RwLock<Option<String>>,
    /// Reference point of `last_lookup`.
    base: Instant,
    /// When the last lookup started (nanoseconds since `base`).
    last_lookup: AtomicU64,
    last_ok: AtomicBool,
    /// A lookup is running.
    resolving: AtomicBool,
    /// Lookups started after the first (tests watch it).
    refreshes: AtomicU64,
    /// [`RESOLVE_INTERVAL`] and [`RESOLVE_RETRY`] (tests shorten them).
    due: (Duration, Duration),
}

impl Upstream {
    /// Resolves once synchronously, so a literal address or a reachable name is ready at start.
    /// Later lookups happen when a request or readiness probe finds the last one due.
    pub fn start(settings: UpstreamSettings) -> Arc<Self> {
        let up = Arc::new(Self {
            settings,
            addrs: RwLock::new(Arc::new(Vec::new())),
            next: AtomicUsize::new(0),
            unresolved: RwLock::new(None),
            base: Instant::now(),
            last_lookup: AtomicU64::new(0),
            last_ok: AtomicBool::new(false),
            resolving: AtomicBool::new(false),
            refreshes: AtomicU64::new(0),
            due: (RESOLVE_INTERVAL, RESOLVE_RETRY),
        });
        let ok = up.resolve();
        up.last_ok.store(ok, Ordering::Release);
        up
    }

    fn is_literal(&self) -> bool {
        self.settings.host.parse::<std::net::IpAddr>().is_ok()
    }

    fn since_base(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Starts a lookup on a thread of its own when the last one is due (at most one at a time).
    /// The caller goes on with the addresses known now.
    fn refresh_if_due(self: &Arc<Self>) {
        if self.is_literal() {
            return;
        }
        let due_after = if self.last_ok.load(Ordering::Acquire) {
            self.due.0
        } else {
            self.due.1
        };
        let age = self
            .since_base()
            .saturating_sub(self.last_lookup.load(Ordering::Acquire));
        if Duration::from_nanos(age) < due_after
            || self
                .resolving
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        self.last_lookup.store(self.since_base(), Ordering::Release);
        self.refreshes.fetch_add(1, Ordering::AcqRel);
        let up = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("upstream-resolve".into())
            .spawn(move || {
                let ok = up.resolve();
                up.last_ok.store(ok, Ordering::Release);
                up.resolving.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.resolving.store(false, Ordering::Release);
            tracing::error!(error = %e, "cannot start an upstream lookup");
        }
    }

    fn resolve(&self) -> bool {
        let target = (self.settings.host.as_str(), self.settings.port);
        match target.to_socket_addrs() {
            Ok(found) => {
                let mut found: Vec<SocketAddr> = found.collect();
                found.sort();
                found.dedup();
                if found.is_empty() {
                    tracing::warn!(host = %self.settings.host, "upstream resolved to no address");
                    self.note_failure("resolved to no address".into());
                    return false;
                }
                *self.unresolved.write() = None;
                let mut cur = self.addrs.write();
                if **cur != found {
                    tracing::info!(host = %self.settings.host, addrs = ?found, "upstream addresses");
                    *cur = Arc::new(found);
                }
                true
            }
            Err(e) => {
                tracing::warn!(host = %self.settings.host, error = %e, "upstream resolution failed; keeping previous addresses");
                self.note_failure(e.to_string());
                false
            }
        }
    }

    fn note_failure(&self, why: String) {
        if self.addrs.read().is_empty() {
            *self.unresolved.write() = Some(why);
        }
    }

    /// `Err(reason)` while the upstream name has no address to connect to. A probe also
    /// refreshes a lookup that is due, so an instance that started unresolved recovers by itself
    /// under its readiness probe.
    pub fn readiness(self: &Arc<Self>) -> Result<(), String> {
        self.refresh_if_due();
        if !self.addrs.read().is_empty() {
            return Ok(());
        }
        let why = self.unresolved.read().clone();
        Err(format!(
            "upstream host {} does not resolve{}",
            self.settings.host,
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        ))
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// A ready peer for one request (round robin over the resolved addresses), with the
    /// timeouts given at start.
    pub fn peer(self: &Arc<Self>) -> pingora::Result<Box<HttpPeer>> {
        self.peer_with(&self.settings)
    }

    /// [`Upstream::peer`] with the timeouts of `live` (the request's configuration after a
    /// reload); the address, TLS and ALPN stay the ones given at start.
    pub fn peer_with(self: &Arc<Self>, live: &UpstreamSettings) -> pingora::Result<Box<HttpPeer>> {
        self.refresh_if_due();
        let addrs = self.addrs.read().clone();
        if addrs.is_empty() {
            return Err(Error::explain(
                UNRESOLVED,
                format!("upstream {} does not resolve", self.settings.host),
            )
            .into_up());
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
        let s = &self.settings;
        let mut peer = HttpPeer::new(addrs[i], s.tls, s.host.clone());
        let s = live;
        let o = &mut peer.options;
        o.connection_timeout = Some(s.connect_timeout);
        o.total_connection_timeout = Some(s.connect_timeout * 2);
        o.read_timeout = Some(s.read_timeout);
        o.write_timeout = Some(s.write_timeout);
        o.idle_timeout = Some(s.idle_timeout);
        if self.settings.tls && self.settings.http2 {
            o.alpn = ALPN::H2H1;
        }
        Ok(Box::new(peer))
    }

    /// `Host` set to the upstream's authority; hop-by-hop headers removed (including any that
    /// `Connection` names).
    pub fn rewrite_request(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        // Tokens first: `Connection` itself is among the constants removed next.
        for name in connection_tokens(&req.headers) {
            req.remove_header(&name);
        }
        for name in HOP_BY_HOP {
            req.remove_header(*name);
        }
        req.insert_header(http::header::HOST, self.settings.authority.as_str())?;
        Ok(())
    }

    /// Hop-by-hop headers removed from the origin's response.
    pub fn rewrite_response(&self, resp: &mut ResponseHeader) {
        for name in connection_tokens(&resp.headers) {
            resp.remove_header(&name);
        }
        for name in HOP_BY_HOP {
            resp.remove_header(*name);
        }
    }
}

/// Header names listed in `Connection` (they are hop-by-hop for this message).
fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive")
        .collect()
}

/// Which gateway error an upstream failure becomes, and the label it is counted under.
pub fn classify(e: &Error) -> (GatewayError, UpstreamErrorKind) {
    use ErrorType::*;
    use GatewayError::{UpstreamTimeout as Timeout, UpstreamUnavailable as Unavailable};
    use UpstreamErrorKind as K;
    match e.etype() {
        t if *t == UNRESOLVED => (Unavailable("its host name does not resolve"), K::Dns),
        ConnectTimedout => (Timeout("connecting timed out"), K::ConnectTimeout),
        TLSHandshakeTimedout => (Timeout("the TLS handshake timed out"), K::ConnectTimeout),
        ReadTimedout => (
            Timeout("no response within upstream.read_timeout"),
            K::Timeout,
        ),
        WriteTimedout => (Timeout("sending the request timed out"), K::Timeout),
        ConnectRefused => (Unavailable("the connection was refused"), K::ConnectRefused),
        ConnectNoRoute => (Unavailable("no route to its address"), K::NoRoute),
        BindError | SocketError | ConnectError | ConnectProxyFailure => (
            Unavailable("the connection could not be made"),
            K::ConnectError,
        ),
        TLSHandshakeFailure | HandshakeError | TLSWantX509Lookup => {
            (Unavailable("the TLS handshake failed"), K::Tls)
        }
        InvalidCert => (Unavailable("its TLS certificate was not accepted"), K::Tls),
        ConnectionClosed => (Unavailable("it closed the connection early"), K::Closed),
        ReadError | WriteError => (Unavailable("the connection broke"), K::Closed),
        InvalidHTTPHeader | H1Error | H2Error | InvalidH2 | H2Downgrade => {
            (Unavailable("it sent an invalid HTTP response"), K::Protocol)
        }
        _ => (Unavailable("the request to it failed"), K::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> UpstreamSettings {
        let text = format!("[upstream]\nurl = \"{url}\"\n");
        crate::config::validate(crate::config::parse(&text, "t", &[]).unwrap())
            .unwrap()
            .upstream
    }

    #[test]
    fn literal_address_is_ready_without_dns() {
        let up = Upstream::start(settings("http://127.0.0.1:9"));
        let peer = up.peer().unwrap();
        assert_eq!(
            peer.options.connection_timeout,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn host_is_rewritten_and_hop_by_hop_headers_dropped() {
        let up = Upstream::start(settings("http://127.0.0.1:9"));
        let mut req = RequestHeader::build("GET", b"/me", None).unwrap();
        req.insert_header("host", "edge.local").unwrap();
        req.insert_header("connection", "keep-alive, x-secret-hop")
            .unwrap();
        req.insert_header("x-secret-hop", "1").unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("te", "trailers").unwrap();
        req.insert_header("api-version", "2026-05-20").unwrap();
        up.rewrite_request(&mut req).unwrap();
        assert_eq!(req.headers.get("host").unwrap(), "127.0.0.1:9");
        for h in ["connection", "x-secret-hop", "keep-alive", "te"] {
            assert!(req.headers.get(h).is_none(), "{h} kept");
        }
        assert!(req.headers.get("api-version").is_some());
    }

    #[test]
    fn timeouts_map_to_504_and_refusals_to_502() {
        let t = Error::new(ErrorType::ReadTimedout);
        assert_eq!(classify(&t).0.status(), 504);
        let r = Error::new(ErrorType::ConnectRefused);
        assert_eq!(classify(&r).0.code(), "UPSTREAM_UNAVAILABLE");
    }

    #[test]
    fn every_upstream_failure_kind_is_a_502_or_504_saying_why() {
        use ErrorType::*;
        for t in [
            UNRESOLVED,
            ConnectTimedout,
            ConnectRefused,
            ConnectNoRoute,
            TLSHandshakeFailure,
            TLSHandshakeTimedout,
            InvalidCert,
            HandshakeError,
            ConnectError,
            BindError,
            SocketError,
            ConnectProxyFailure,
            InvalidHTTPHeader,
            H1Error,
            H2Error,
            InvalidH2,
            H2Downgrade,
            ReadError,
            WriteError,
            ReadTimedout,
            WriteTimedout,
            ConnectionClosed,
            HTTPStatus(500),
            InternalError,
            UnknownError,
        ] {
            let (err, label) = classify(&Error::new(t.clone()));
            assert!(matches!(err.status(), 502 | 504), "{t:?}: {err:?}");
            assert!(!label.as_str().is_empty());
            assert!(err.to_string().contains(": "), "{t:?}: no reason in {err}");
        }
        let (err, label) = classify(&Error::new(UNRESOLVED));
        assert_eq!(label, UpstreamErrorKind::Dns);
        assert!(err.to_string().contains("does not resolve"));
    }

    #[test]
    fn lookups_happen_only_when_asked_and_due() {
        let literal = Upstream::start(settings("http://127.0.0.1:9"));
        literal.peer().unwrap();
        assert_eq!(literal.refreshes.load(Ordering::Acquire), 0);
        // A name that failed at start is retried by the next probe once the retry is due, on
        // a thread of its own; nothing retries while nobody asks.
        let mut up = Upstream::start(settings("http://does-not-exist.invalid:80"));
        Arc::get_mut(&mut up).expect("sole owner").due = (Duration::ZERO, Duration::ZERO);
        assert_eq!(up.refreshes.load(Ordering::Acquire), 0);
        assert!(up.readiness().is_err());
        assert_eq!(up.refreshes.load(Ordering::Acquire), 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while up.resolving.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!up.resolving.load(Ordering::Acquire), "the lookup finished");
        assert!(up.peer().is_err());
        assert_eq!(up.refreshes.load(Ordering::Acquire), 2);
    }

    #[test]
    fn an_unresolvable_name_is_not_ready_and_its_requests_are_upstream_errors() {
        let up = Upstream::start(settings("http://does-not-exist.invalid:80"));
        let why = up.readiness().unwrap_err();
        assert!(why.contains("does-not-exist.invalid"), "{why}");
        let e = up.peer().unwrap_err();
        assert_eq!(*e.esource(), pingora::ErrorSource::Upstream);
        assert_eq!(classify(&e).1, UpstreamErrorKind::Dns);
        assert!(Upstream::start(settings("http://127.0.0.1:9"))
            .readiness()
            .is_ok());
    }
}
