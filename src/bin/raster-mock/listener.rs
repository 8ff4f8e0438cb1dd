//! The mock's listening socket and accept loop, run as a Pingora background service.
//!
//! Pingora's listening services bind their own sockets from an address string and offer no
//! way to take a socket that is already bound, nor to learn the port they got for `:0`. The
//! mock needs both (see [`crate::run`]), so it binds the socket itself and drives Pingora's
//! HTTP machinery ([`ServerApp::process_new`], which is what Pingora's own accept loop calls)
//! on each accepted connection. Signals, worker threads and graceful shutdown stay Pingora's.
//!
//! With `--tls-cert/--tls-key` each connection is first a TLS handshake (rustls through
//! Pingora's acceptor; TLS 1.2 and 1.3, ALPN h2 then http/1.1); Pingora's HTTP machinery then
//! speaks h2 or HTTP/1.1 as ALPN chose.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora::listeners::tls::Acceptor;
use pingora::tls::{version, ServerConfig};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};

use crate::server::MockApp;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Serves `app` on `socket` with `threads` worker threads until the server shuts down.
pub fn service(
    socket: TcpListener,
    app: Arc<MockApp>,
    threads: usize,
    tls: Option<Acceptor>,
) -> impl pingora::services::ServiceWithDependents + 'static {
    let mut svc = background_service(
        "raster-mock",
        AcceptLoop {
            socket: Mutex::new(Some(socket)),
            app,
            tls: tls.map(Arc::new),
        },
    );
    svc.threads = Some(threads);
    svc
}

struct AcceptLoop {
    /// Taken once by [`BackgroundService::start`], inside the runtime that will own it.
    socket: Mutex<Option<TcpListener>>,
    app: Arc<MockApp>,
    tls: Option<Arc<Acceptor>>,
}

/// A TLS acceptor for `cert` and `key` (PEM), offering h2 and http/1.1; bad files are an error
/// naming the file (Pingora's own TLS settings panic on them).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<Acceptor> {
    pingora::tls::install_default_crypto_provider();
    let (certs, key_der) = pingora::tls::load_certs_and_key_files(
        &cert.display().to_string(),
        &key.display().to_string(),
    )
    .ok()
    .flatten()
    .with_context(|| {
        format!(
            "--tls-cert {} / --tls-key {}: no certificate or key",
            cert.display(),
            key.display()
        )
    })?;
    let mut config =
        ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .with_context(|| format!("--tls-key {} does not fit --tls-cert", key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Acceptor::from_server_config(Arc::new(config)))
}

#[async_trait]
impl BackgroundService for AcceptLoop {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(socket) = self.socket.lock().take() else {
            return;
        };
        let listener = match socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(socket))
        {
            Ok(l) => l,
            Err(e) => {
                // Nothing can be served: exiting beats a process that looks alive but never
                // answers.
                eprintln!("raster-mock: cannot use the listening socket: {e}");
                std::process::exit(1);
            }
        };
        // Handed to every connection, so that keep-alive stops once shutdown begins.
        let connections = shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        let _ = tcp.set_nodelay(true);
                        tokio::spawn(serve(
                            self.app.clone(),
                            self.tls.clone(),
                            tcp,
                            connections.clone(),
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
    }
}

/// One connection: requests in turn while the connection stays reusable and no shutdown began.
async fn serve(
    app: Arc<MockApp>,
    tls: Option<Arc<Acceptor>>,
    tcp: tokio::net::TcpStream,
    shutdown: ShutdownWatch,
) {
    let l4 = L4Stream::from(tcp);
    let mut stream: Stream = match tls {
        Some(acceptor) => match acceptor.tls_handshake(l4).await {
            Ok(s) => Box::new(s),
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
        },
        None => Box::new(l4),
    };
    while let Some(reused) = app.process_new(stream, &shutdown).await {
        if *shutdown.borrow() {
            break;
        }
        stream = reused;
    }
}
