//! Invalidations over a pub/sub channel: the fallback of the invalidation seam
//! (`backend/invalidation.rs`) where the server refuses client tracking (`tracking.rs`:
//! RESP2 only, `HELLO 3` or `CLIENT TRACKING` denied by an ACL or a managed service).
//!
//! Every store, delete and clear of any process of this library is announced on
//! `{prefix}:__invalidate`, pipelined with the write itself (no extra round trip), whether
//! or not the writer has an L1 (a peer may, and may be on this fallback); each process in
//! this mode subscribes (to the pattern `{prefix}:__invalidate*`) and feeds its L1. Writes
//! by other clients (`redis-cli`, another service) are not announced: on this fallback they
//! reach an L1 only when its entry expires (`CACHE_L1_MAX_TTL`). On a cluster the channel
//! carries the key's hash tag (`{prefix}:__invalidate{<tag>}`), so the PUBLISH lands in the
//! key's slot and rides in the same pipeline; a cluster delivers every PUBLISH to
//! subscribers on every node, so the listener needs one node, and moves to another when its
//! node goes away.
//! Messages: `k\0key[\0key…]` (keys) or `p\0prefix` (every key under a prefix).
//! A heartbeat PING through the subscribed connection proves it alive, so a silent
//! connection (NAT timeout, a stalled proxy, failover) is noticed within [`HEARTBEAT`] plus
//! [`PONG_DEADLINE`]: the longest an L1 may serve a value another process changed while
//! the channel silently stopped delivering. A closed connection is noticed at once.
//! (`tracking.rs` uses the same heartbeat.)

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::backend::invalidation::{Invalidated, Sink};

/// Message kinds.
const KEYS: u8 = b'k';
const PREFIX: u8 = b'p';

/// How often the subscription proves it is alive.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(250);
/// How long the heartbeat's PONG may take before the channel counts as down (and the L1
/// stops serving, restarting empty once the channel is back).
pub(crate) const PONG_DEADLINE: Duration = Duration::from_millis(250);

/// The channel, and how to announce on it and listen to it.
pub(crate) struct PubSub {
    channel: String,
    /// Where the listener may subscribe: the server, or the nodes of a cluster.
    nodes: Arc<ArcSwap<Vec<redis::Client>>>,
    connect_timeout: Duration,
}

/// The hash tag of a key (what Redis Cluster hashes): the text between the first `{` and
/// the next `}` when not empty, else the whole key.
pub(crate) fn hash_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.find('}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key)
}

/// The channel of invalidation messages for keys under `key_prefix`.
pub(crate) fn channel(key_prefix: &str) -> String {
    format!("{key_prefix}:__invalidate")
}

impl PubSub {
    pub(crate) fn new(
        key_prefix: &str,
        nodes: Vec<redis::Client>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            channel: channel(key_prefix),
            nodes: Arc::new(ArcSwap::from_pointee(nodes)),
            connect_timeout,
        }
    }

    /// Where the listener may subscribe from now on (a cluster's current nodes).
    pub(crate) fn set_nodes(&self, nodes: Vec<redis::Client>) {
        if !nodes.is_empty() {
            self.nodes.store(Arc::new(nodes));
        }
    }

    /// Appends the announcement that `keys` changed to `pipe`. On a cluster (`tagged`) the
    /// keys must share a slot (those of one pipeline do), and the channel carries their tag.
    pub(crate) fn announce_keys<'a>(
        &self,
        pipe: &mut redis::Pipeline,
        keys: impl IntoIterator<Item = &'a str>,
        tagged: bool,
    ) {
        let mut message = vec![KEYS];
        let mut tag = None;
        for key in keys {
            tag.get_or_insert_with(|| hash_tag(key));
            message.push(0);
            message.extend_from_slice(key.as_bytes());
        }
        match tag.filter(|_| tagged) {
            Some(tag) => pipe
                .cmd("PUBLISH")
                .arg(format!("{}{{{tag}}}", self.channel)),
            None => pipe.cmd("PUBLISH").arg(&self.channel),
        }
        .arg(message)
        .ignore();
    }

    /// Appends the announcement that every key under `prefix` changed to `pipe`.
    pub(crate) fn announce_prefix(&self, pipe: &mut redis::Pipeline, prefix: &str) {
        let mut message = vec![PREFIX, 0];
        message.extend_from_slice(prefix.as_bytes());
        pipe.cmd("PUBLISH").arg(&self.channel).arg(message).ignore();
    }

    /// What a listener needs (for `tracking.rs`, which falls back to it).
    pub(crate) fn listener(&self) -> Listener {
        Listener {
            nodes: Arc::clone(&self.nodes),
            pattern: format!("{}*", self.channel),
            connect_timeout: self.connect_timeout,
        }
    }
}

/// A listener of the channel, not yet started.
pub(crate) struct Listener {
    nodes: Arc<ArcSwap<Vec<redis::Client>>>,
    pattern: String,
    connect_timeout: Duration,
}

impl Listener {
    /// The pattern subscribed to.
    pub(crate) fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Subscribes and feeds `sink` until the sink is dropped (reconnecting meanwhile). The
    /// caller tells the sink when it ends (see `invalidation::Ended`).
    pub(crate) async fn run(self, sink: Weak<dyn Sink>) {
        listen(sink, self.nodes, self.pattern, self.connect_timeout).await;
    }
}

/// Applies one message to the sink.
fn apply(sink: &dyn Sink, payload: &[u8]) {
    let mut parts = payload.split(|b| *b == 0);
    match parts.next() {
        Some([KEYS]) => {
            for key in parts {
                if let Ok(key) = std::str::from_utf8(key) {
                    sink.invalidate(Invalidated::Key(key));
                }
            }
        }
        Some([PREFIX]) => match parts.next().map(std::str::from_utf8) {
            Some(Ok(prefix)) => sink.invalidate(Invalidated::Prefix(prefix)),
            _ => sink.invalidate(Invalidated::All),
        },
        // Unknown message: be safe.
        _ => sink.invalidate(Invalidated::All),
    }
}

async fn listen(
    sink: Weak<dyn Sink>,
    nodes: Arc<ArcSwap<Vec<redis::Client>>>,
    pattern: String,
    connect_timeout: Duration,
) {
    use futures_util::StreamExt as _;
    let mut was_up = false;
    // Which node to try next: after a failure, the next one.
    let mut next = 0usize;
    loop {
        let candidates = nodes.load_full();
        let Some(client) = candidates.get(next % candidates.len().max(1)).cloned() else {
            return;
        };
        next = next.wrapping_add(1);
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(&pattern).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(connect_timeout, subscribed).await {
            Ok(Ok(pubsub)) => {
                let Some(s) = sink.upgrade() else { return };
                s.up();
                drop(s);
                was_up = true;
                // Stay on this node next time it drops, unless it fails to connect.
                next = next.wrapping_sub(1);
                tracing::debug!(target: "cache_runtime::connection", pattern, "L1 invalidation channel up");
                let (mut control, mut messages) = pubsub.split();
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                heartbeat.tick().await;
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let Some(s) = sink.upgrade() else { return };
                            apply(&*s, message.get_payload_bytes());
                        }
                        _ = heartbeat.tick() => {
                            if sink.strong_count() == 0 {
                                return;
                            }
                            let ping = control.ping::<redis::Value>();
                            if !matches!(tokio::time::timeout(PONG_DEADLINE, ping).await, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(target: "cache_runtime::connection", error = %e, "L1 invalidation channel cannot subscribe");
            }
            Err(_) => {
                tracing::debug!(target: "cache_runtime::connection", "L1 invalidation channel: connect timed out");
            }
        }
        let Some(s) = sink.upgrade() else { return };
        s.down();
        drop(s);
        if std::mem::take(&mut was_up) {
            tracing::warn!(target: "cache_runtime::connection", "L1 invalidation channel down: L1 disabled until it is back");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    use crate::backend::invalidation::Recorder;

    #[test]
    fn messages_round_trip() {
        let ps = PubSub::new(
            "p",
            vec![redis::Client::open("redis://127.0.0.1:1").unwrap()],
            Duration::from_secs(1),
        );
        let mut pipe = redis::pipe();
        ps.announce_keys(&mut pipe, ["p:a:1", "p:a:2"], false);
        ps.announce_prefix(&mut pipe, "p:b:");
        let recorder = Arc::new(Recorder::default());
        for cmd in pipe.cmd_iter() {
            let args: Vec<Vec<u8>> = cmd
                .args_iter()
                .filter_map(|a| match a {
                    redis::Arg::Simple(b) => Some(b.to_vec()),
                    _ => None,
                })
                .collect();
            assert_eq!(args[0], b"PUBLISH");
            assert_eq!(args[1], b"p:__invalidate");
            apply(&*recorder, &args[2]);
        }
        // On a cluster the channel is in the keys' slot.
        let mut pipe = redis::pipe();
        ps.announce_keys(&mut pipe, ["p:users:{user:1}:x"], true);
        ps.announce_keys(&mut pipe, ["p:analytics:f:v1:ab"], true);
        let channels: Vec<Vec<u8>> = pipe
            .cmd_iter()
            .filter_map(|c| match c.args_iter().nth(1) {
                Some(redis::Arg::Simple(b)) => Some(b.to_vec()),
                _ => None,
            })
            .collect();
        assert_eq!(
            channels,
            [
                b"p:__invalidate{user:1}".to_vec(),
                b"p:__invalidate{p:analytics:f:v1:ab}".to_vec()
            ]
        );
        assert_eq!(hash_tag("a{b}c"), "b");
        assert_eq!(hash_tag("a{}c"), "a{}c");
        assert_eq!(hash_tag("abc"), "abc");
        apply(&*recorder, b"garbage");
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                r#"Key("p:a:1")"#,
                r#"Key("p:a:2")"#,
                r#"Prefix("p:b:")"#,
                "All"
            ]
        );
    }
}
