//! SIGTERM under load: several keep-alive clients send requests in a loop through the real
//! binary; halfway through, the gateway gets SIGTERM. Every request that reached the gateway is
//! answered 200 (none reset, none cut), and the process exits 0 once drained.
//!
//! The issue asks for a 30 s load; here it is 3 s before the signal ([`SIGNAL_AFTER`], bounded
//! by [`LOAD`]; each client stops at its first request the gateway no longer takes) so
//! the suite stays fast on a shared CI machine. The property does not depend on the duration:
//! what matters is that requests are in flight, and on idle keep-alive connections, when the
//! signal arrives.
//!
//! A request the gateway never took is not a failure: a client or load balancer sends it to
//! another instance. There are two kinds: the connection refused (the listener closes once
//! shutdown begins), and a request written onto a keep-alive connection that was idle when
//! shutdown began. Pingora closes idle keep-alive connections at once, and a request already on
//! its way meets a reset: the close race of HTTP/1.1 keep-alive (RFC 9112 §9.6), which the
//! client resolves by retrying the request, since nobody read it. That it was never taken is
//! checked, not assumed: the origin saw exactly as many requests as clients got answers (cache
//! off, so every request the gateway takes goes to the origin). Anything else (a response cut
//! short, a non-200, a reset of a request the gateway forwarded) is a failure.
//!
//! Every response written after shutdown began says `Connection: close`
//! (`response::close_when_draining`), so only connections idle at that instant can meet the
//! race; before that change, every keep-alive response went out without it and several
//! requests per run were reset.

mod common;

use std::time::{Duration, Instant};

use common::{auth, Edge, Mock};

const CLIENTS: usize = 8;
const LOAD: Duration = Duration::from_secs(6);
const SIGNAL_AFTER: Duration = Duration::from_secs(3);

#[derive(Default, Debug)]
struct Counts {
    ok: usize,
    refused: usize,
    /// Reset while sending on a reused connection: never read by the gateway (checked below).
    raced: usize,
    failed: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_sigterm_under_keepalive_load_fails_nothing_and_exits_zero() {
    // Every request goes to the origin and takes 20 ms there, so requests are in flight.
    let mock = Mock::start_with(&["--latency-ms", "20"]);
    let mut edge = Edge::start(
        &mock.url(),
        "[cache]\nenabled = false\n[rate_limit]\nenabled = false\n[server]\ngrace_period = \"20s\"\n",
    );
    let url = edge.url("/me");
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                // One client per task: its own keep-alive connection.
                let c = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("client");
                let mut n = Counts::default();
                while started.elapsed() < LOAD {
                    match c.get(&url).headers(auth("demo-read")).send().await {
                        Ok(r) => {
                            let status = r.status();
                            match r.text().await {
                                Ok(b) if status == 200 && b.contains("organizationId") => n.ok += 1,
                                Ok(b) => n.failed.push(format!("{status}: {b}")),
                                Err(e) => n.failed.push(format!("{status}, body: {e}")),
                            }
                        }
                        Err(e) if e.is_connect() => {
                            // Shutdown began: the listener no longer accepts.
                            n.refused += 1;
                            break;
                        }
                        Err(e) if is_reset_while_sending(&e) => {
                            n.raced += 1;
                            break;
                        }
                        Err(e) => n.failed.push(format!("{e:?}")),
                    }
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(SIGNAL_AFTER).await;
    edge.proc.signal(15);
    let signalled = Instant::now();
    let mut total = Counts::default();
    for c in clients {
        let n = c.await.expect("client task");
        total.ok += n.ok;
        total.refused += n.refused;
        total.raced += n.raced;
        total.failed.extend(n.failed);
    }
    let code = edge.proc.wait_exit(Duration::from_secs(15));
    let forwarded = mock.requests().await as usize;
    eprintln!(
        "SIGTERM under load: {} ok, {} refused and {} reset unread after the signal, {} failed; origin saw {forwarded}; exit {code:?} {:?} after the signal",
        total.ok,
        total.refused,
        total.raced,
        total.failed.len(),
        signalled.elapsed()
    );
    assert!(total.ok > 100, "load flowed: {total:?}");
    assert!(
        total.failed.is_empty(),
        "failed requests: {:?}",
        total.failed
    );
    assert_eq!(
        forwarded, total.ok,
        "every request the gateway took was answered (resets were of requests it never read)"
    );
    assert_eq!(code, Some(0), "{}", edge.proc.output());
}

/// A connection reset while hyper was still sending the request (no response head yet).
fn is_reset_while_sending(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionReset && e.is_request();
        }
        source = s.source();
    }
    false
}
