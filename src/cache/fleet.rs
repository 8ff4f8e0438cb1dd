//! Fleet-wide invalidation through Redis pub/sub (`redis.invalidation = true`). Every scope,
//! tree or URL bump this instance makes (a successful write, an admin purge) is published on
//! `<key_prefix>:invalidate`; every instance applies the bumps the others publish. Generations
//! stay local numbers: a message only names what changed, and each instance bumps its own.
//!
//! Delivery is best effort, as pub/sub is: while Redis is unreachable, bumps are queued (up to
//! [`MAX_PENDING`]) and published after reconnecting, and bumps published by others meanwhile
//! are lost, so staleness on another instance is bounded by the route TTL. That bound is the
//! documented contract.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::Cache;
use crate::config::RedisSettings;
use crate::metrics::{RedisErrorKind, RedisOp, METRICS};

/// Bumps kept while Redis is unreachable; older ones are dropped first.
const MAX_PENDING: usize = 10_000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One invalidation, as it travels between instances.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Bump {
    Scope(String),
    Tree(String),
    Url(String),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Message {
    /// The publishing instance, so it can skip its own messages.
    from: String,
    #[serde(flatten)]
    bump: Bump,
}

/// The sending half, held by the [`Cache`]: never blocks the request path.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Bump>,
}

impl Publisher {
    pub fn publish(&self, bump: Bump) {
        // The receiver lives as long as the process; a send can only fail during exit.
        let _ = self.tx.send(bump);
    }
}

pub fn channel() -> (Publisher, mpsc::UnboundedReceiver<Bump>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Publisher { tx }, rx)
}

pub fn channel_name(settings: &RedisSettings) -> String {
    format!("{}:invalidate", settings.key_prefix)
}

/// The fleet link as a background service: it stops with the server, and while Redis is up it
/// waits on the two channels only (local bumps, remote messages), never on a timer.
pub struct Link {
    client: redis::Client,
    channel: String,
    instance: String,
    cache: &'static Cache,
    rx: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Bump>>>,
}

impl Link {
    pub fn new(
        settings: &RedisSettings,
        cache: &'static Cache,
        rx: mpsc::UnboundedReceiver<Bump>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(settings.url.as_str())?,
            channel: channel_name(settings),
            instance: format!("{:016x}", rand::random::<u64>()),
            cache,
            rx: parking_lot::Mutex::new(Some(rx)),
        })
    }
}

#[async_trait::async_trait]
impl BackgroundService for Link {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(rx) = self.rx.lock().take() else {
            return;
        };
        tokio::select! {
            _ = run(self.client.clone(), self.channel.clone(), self.instance.clone(), self.cache, rx) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn run(
    client: redis::Client,
    channel: String,
    instance: String,
    cache: &'static Cache,
    mut rx: mpsc::UnboundedReceiver<Bump>,
) {
    let pending = Arc::new(parking_lot::Mutex::new(VecDeque::<Bump>::new()));
    let mut backoff = BACKOFF_MIN;
    loop {
        match session(&client, &channel, &instance, cache, &mut rx, &pending).await {
            Ok(()) => return, // the publisher side is gone: the process is exiting
            Err(e) => {
                METRICS
                    .redis_errors
                    .with_label_values(&[
                        RedisOp::Invalidation.as_str(),
                        RedisErrorKind::of(&e.0).as_str(),
                    ])
                    .inc();
                tracing::warn!(error = %e.0, retry_in_ms = backoff.as_millis() as u64, "fleet invalidation link down");
            }
        }
        // Keep queueing local bumps while waiting to reconnect.
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(b)) => queue(&pending, b),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Sends the queued bumps in order, one at a time; one that fails goes back to the front, so a
/// failed publish keeps every bump not yet sent.
async fn flush<F, Fut, E>(
    pending: &parking_lot::Mutex<VecDeque<Bump>>,
    mut send: F,
) -> Result<(), E>
where
    F: FnMut(Bump) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    loop {
        let Some(b) = pending.lock().pop_front() else {
            return Ok(());
        };
        if let Err(e) = send(b.clone()).await {
            pending.lock().push_front(b);
            return Err(e);
        }
    }
}

fn queue(pending: &parking_lot::Mutex<VecDeque<Bump>>, b: Bump) {
    let mut p = pending.lock();
    if p.len() >= MAX_PENDING {
        p.pop_front();
    }
    p.push_back(b);
}

struct LinkError(redis::RedisError);

impl From<redis::RedisError> for LinkError {
    fn from(e: redis::RedisError) -> Self {
        LinkError(e)
    }
}

/// One connected period: subscribe, flush what is pending, then publish local bumps and apply
/// remote ones until something fails. `Ok` only when the local side has shut down.
async fn session(
    client: &redis::Client,
    channel: &str,
    instance: &str,
    cache: &'static Cache,
    rx: &mut mpsc::UnboundedReceiver<Bump>,
    pending: &parking_lot::Mutex<VecDeque<Bump>>,
) -> Result<(), LinkError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    tracing::info!(channel, "fleet invalidation link up");
    let publish = |bump: Bump| {
        let msg = Message {
            from: instance.to_string(),
            bump,
        };
        serde_json::to_string(&msg).unwrap_or_default()
    };
    flush(pending, |b| {
        let payload = publish(b);
        let mut conn = conn.clone();
        async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(&mut conn)
                .await
                .map(drop)
        }
    })
    .await?;
    let mut messages = pubsub.on_message();
    loop {
        tokio::select! {
            local = rx.recv() => {
                let Some(b) = local else { return Ok(()) };
                let payload = publish(b.clone());
                if let Err(e) = redis::cmd("PUBLISH").arg(channel).arg(payload).query_async::<i64>(&mut conn).await {
                    queue(pending, b);
                    return Err(e.into());
                }
            }
            remote = messages.next() => {
                let Some(msg) = remote else {
                    return Err(redis::RedisError::from((redis::ErrorKind::IoError, "subscription closed")).into());
                };
                let Ok(payload) = msg.get_payload::<String>() else { continue };
                match serde_json::from_str::<Message>(&payload) {
                    Ok(m) if m.from != instance => cache.apply_fleet_bump(&m.bump),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "ignoring malformed invalidation message"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_publish_keeps_every_unsent_bump() {
        let pending = parking_lot::Mutex::new(VecDeque::new());
        for i in 0..5 {
            queue(&pending, Bump::Url(format!("/u{i}")));
        }
        let mut sent = Vec::new();
        let r = flush(&pending, |b| {
            let fail = sent.len() == 2;
            if !fail {
                sent.push(b);
            }
            async move {
                if fail {
                    Err("redis went away")
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(sent, [Bump::Url("/u0".into()), Bump::Url("/u1".into())]);
        let left: Vec<Bump> = pending.lock().iter().cloned().collect();
        let want: Vec<Bump> = (2..5).map(|i| Bump::Url(format!("/u{i}"))).collect();
        assert_eq!(
            left, want,
            "the failed bump and everything after it stay queued"
        );
        // The next connected period sends them all, in order.
        let mut later = Vec::new();
        flush(&pending, |b| {
            later.push(b);
            async { Ok::<(), &str>(()) }
        })
        .await
        .unwrap();
        assert_eq!(later, want);
        assert!(pending.lock().is_empty());
    }

    #[test]
    fn messages_round_trip_with_a_readable_shape() {
        let m = Message {
            from: "ab".into(),
            bump: Bump::Scope("/organizations/o/libraries/l".into()),
        };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(
            s,
            r#"{"from":"ab","kind":"scope","name":"/organizations/o/libraries/l"}"#
        );
        let back: Message = serde_json::from_str(&s).unwrap();
        assert_eq!(back.bump, m.bump);
    }
}
