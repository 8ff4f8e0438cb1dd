//! The mock's listening socket and accept loop, run as a Pingora background service.
//!
//! Pingora's listening services bind their own sockets from an address string and offer no
//! way to take a socket that is already bound, nor to learn the port they got for `:0`. The
//! mock needs both (see [`crate::run`]), so it binds the socket itself and drives Pingora's
//! HTTP machinery ([`ServerApp::process_new`], which is what Pingora's own accept loop calls)
//! on each accepted connection. Signals, worker threads and graceful shutdown stay Pingora's.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

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
) -> impl pingora::services::ServiceWithDependents + 'static {
    let mut svc = background_service(
        "raster-mock",
        AcceptLoop {
            socket: Mutex::new(Some(socket)),
            app,
        },
    );
    svc.threads = Some(threads);
    svc
}

struct AcceptLoop {
    /// Taken once by [`BackgroundService::start`], inside the runtime that will own it.
    socket: Mutex<Option<TcpListener>>,
    app: Arc<MockApp>,
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
                        tokio::spawn(serve(self.app.clone(), tcp, connections.clone()));
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
async fn serve(app: Arc<MockApp>, tcp: tokio::net::TcpStream, shutdown: ShutdownWatch) {
    let mut stream: Stream = Box::new(L4Stream::from(tcp));
    while let Some(reused) = app.process_new(stream, &shutdown).await {
        if *shutdown.borrow() {
            break;
        }
        stream = reused;
    }
}
