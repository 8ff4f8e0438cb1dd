//! The proxy service's listeners and protocols, from `[listen]`, `[tls]` and `[http2]`:
//!
//! - `listen.proxy`: TCP (`HOST:PORT`) or a Unix domain socket (`unix:/path`, created with
//!   `listen.unix_mode`); TLS when `tls.cert_file` is set (certificates from [`crate::tls`],
//!   ALPN `h2` and `http/1.1`).
//! - `listen.plain`: with TLS, a cleartext listener beside it, for health checks. Its API
//!   requests are refused with 403 `HTTPS_REQUIRED` (Raster refuses plain HTTP) unless
//!   `listen.plain_api = "allow"`.
//! - `listen.h2c`: prior-knowledge HTTP/2 on the plain listeners (TCP and Unix): a connection
//!   that opens with the HTTP/2 preface speaks h2, any other HTTP/1.1.
//! - `[http2]`: the limits every downstream h2 connection gets.
//!
//! Every protocol reaches the same [`crate::gateway::Gateway`], so caching, limits, metrics
//! and logs do not depend on it.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use pingora::protocols::http::v2::server::H2Options;
use pingora::proxy::{HttpProxy, ProxyHttp, Session};
use pingora::services::listening::Service;

use crate::config::{PlainApi, ProxyAddr, Settings};
use crate::tls::Certificates;

/// The limits of a downstream HTTP/2 connection. The header list bound is the same
/// `server.max_header_size` HTTP/1.1 requests get (h2 counts 32 bytes more per field).
pub fn h2_options(settings: &Settings) -> H2Options {
    let h = &settings.http2;
    let mut o = H2Options::default();
    o.max_concurrent_streams(h.max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.server.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(h.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(h.max_local_error_reset_streams))
        .max_concurrent_reset_streams(h.max_concurrent_reset_streams);
    o
}

/// Sets the protocol options of the proxy application: h2c, the h2 limits and idle timeout.
pub fn configure<SV>(proxy: &mut HttpProxy<SV>, settings: &Settings)
where
    SV: ProxyHttp,
{
    let mut options = proxy.server_options.take().unwrap_or_default();
    options.h2c = settings.listen.h2c;
    options.h2_idle_timeout = Some(settings.http2.idle_timeout);
    proxy.server_options = Some(options);
    proxy.h2_options = Some(h2_options(settings));
}

/// Adds the proxy listeners to `service`: the proxy address (TLS with `certs`), and the plain
/// listener kept beside TLS.
pub fn add<A>(
    service: &mut Service<A>,
    settings: &Settings,
    certs: Option<&Arc<Certificates>>,
) -> anyhow::Result<()> {
    match (&settings.listen.proxy, certs) {
        (ProxyAddr::Tcp(addr), Some(certs)) => {
            let tls = crate::tls::listener_settings(certs)
                .map_err(|e| anyhow::anyhow!("TLS listener: {e}"))?;
            service.add_tls_with_settings(&addr.to_string(), None, tls);
        }
        (ProxyAddr::Tcp(addr), None) => service.add_tcp(&addr.to_string()),
        (ProxyAddr::Unix(path), _) => {
            if let Some(dir) = path.parent() {
                anyhow::ensure!(
                    dir.is_dir(),
                    "listen.proxy: the directory of {} does not exist",
                    path.display()
                );
            }
            service.add_uds(
                &path.display().to_string(),
                Some(std::fs::Permissions::from_mode(settings.listen.unix_mode)),
            );
        }
    }
    if let Some(plain) = settings.listen.plain {
        service.add_tcp(&plain.to_string());
    }
    Ok(())
}

/// Whether this request must be refused for coming in cleartext: TLS is on, the plain
/// listener does not allow the API, and the connection is not TLS.
pub fn refuses_cleartext(settings: &Settings, session: &Session) -> bool {
    settings.tls.is_some()
        && settings.listen.plain_api == PlainApi::Refuse
        && session
            .as_downstream()
            .digest()
            .is_none_or(|d| d.ssl_digest.is_none())
}
