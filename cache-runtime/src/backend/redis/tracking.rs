//! Invalidations by server-assisted client tracking: the L1's listener (issue 13).
//!
//! A dedicated RESP3 connection per server (per primary of a cluster) sends
//! `CLIENT TRACKING ON BCAST PREFIX {prefix}:`; from then on the server pushes the name of
//! every key under the prefix that changes, whoever changes it: this library, `redis-cli`,
//! another service, an EXPIRE, an expiry or an eviction, and a null invalidation for
//! `FLUSHDB`/`FLUSHALL`, which drops the whole L1. Each push feeds the L1 ([`Sink`]).
//!
//! Why BCAST on a connection of its own, rather than tracking (OPTIN or REDIRECT) on the
//! connections that read (measured on redis 7.0.15, 2 cores, loopback; scratch program in
//! the issue-13 report):
//! - BCAST costs reads nothing: the L1 fills from the same `GET`+`PTTL` as before. OPTIN
//!   needs `CLIENT CACHING YES` before every fill read (+0.7 µs of server CPU and +3.6 µs
//!   of round trip per miss, p50 86 → 90 µs) and keeps a per-key table on the server.
//! - Tracking is per connection and is lost on every reconnect; with OPTIN every pool lane
//!   would have to re-issue it (the driver's reconnects do not), while here the one
//!   connection is ours, so each (re)connect issues it before the L1 serves again.
//! - Its cost: every write under the prefix is pushed to every listening process, as the
//!   pub/sub fallback publishes each of this library's writes to every subscriber, at about
//!   the same server CPU (redis-benchmark, 4 clients, one `SET` per event-loop turn: 9 µs
//!   per `SET` with no listener, 29 with 10, 114-173 with 100, so 1.1-1.6 µs per write and
//!   per listening process; 1.9 / 4.3 / 14 µs with `-P 16`, where a turn batches writes;
//!   `PUBLISH` to 10 / 100 pattern subscribers: 25 / 151 µs). The push reaches the L1
//!   within a millisecond of the writer's reply (`tests/tests/l1_tracking.rs`: at most
//!   0.8 ms on a loaded 2-core machine), far inside the 100 ms bound.
//! - A process's own writes are pushed back to it too. Nothing tells them apart (`NOLOOP`
//!   concerns the tracking connection's own writes, and this one never writes), and
//!   nothing needs to: the L1 is filled only from reads, so the push drops no fresh entry;
//!   a read that starts within the push's latency of the write may lose its fill (one more
//!   Redis read; 1-5% of writes read back at once, measured there).
//!
//! Liveness, as with pub/sub (`pubsub.rs`): the L1 serves only once tracking is confirmed
//! (the `OK` of `CLIENT TRACKING`) on every connection, and stops at once when one closes
//! (the driver's `Disconnection` push) or misses a heartbeat PONG ([`HEARTBEAT`] +
//! [`PONG_DEADLINE`]); it comes back empty after the next confirmation. The connection also
//! subscribes to a channel nobody publishes on (`{prefix}:__l1_tracking`): it then counts
//! as a pub/sub client, so `CLIENT KILL TYPE pubsub` and tools that tell invalidation
//! listeners by their subscription treat both modes alike (`CLIENT KILL ID` works too).
//!
//! Where the server refuses (RESP2 only, `HELLO 3` or `CLIENT TRACKING` denied by an ACL,
//! renamed or unsupported by a managed service), the listener falls back to the pub/sub
//! channel for its lifetime, and `health()` says `l1_mode: "pubsub"`.
//!
//! On a cluster, each primary gets its own tracking connection (a key's invalidation comes
//! from the node that holds it); the L1 serves only while every primary that serves slots
//! is tracked. The node list (`CLUSTER NODES`) is read again every [`REFRESH_EVERY`]
//! heartbeats; when the primaries change (failover, a node added or emptied) every
//! connection is rebuilt and the L1 restarts empty.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ErrorKind, ProtocolVersion, PushInfo, PushKind, RedisError,
    ServerErrorKind, Value,
};
use tokio::sync::mpsc;

use super::client;
use super::cluster::parse_nodes;
use super::errors::Classifier;
use super::pubsub::{self, HEARTBEAT, PONG_DEADLINE};
use crate::backend::invalidation::{spawn_listener, Invalidated, Sink};
use crate::backend::parse_info;
use crate::config::{ClusterMode, NodeAddr, RedisConfig};
use crate::error::CacheError;

const TRACKING: u8 = 0;
const PUBSUB: u8 = 1;

/// Heartbeats between two reads of a cluster's node list (about 1 s).
const REFRESH_EVERY: u32 = 4;
/// Pause before connecting again after a failure.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The listener's settings, and the mode it is in (shared with `health()`).
pub(crate) struct Tracking {
    inner: Arc<Shared>,
}

struct Shared {
    /// `{prefix}:`
    prefix: String,
    /// `{prefix}:__l1_tracking` (see the module's notes).
    marker: String,
    /// RESP3 clients of the configured server and the cluster seeds.
    seeds: Vec<Client>,
    config: RedisConfig,
    mode: AtomicU8,
}

/// How a tracking session ended.
enum Outcome {
    /// The sink is gone.
    Gone,
    /// A connection failed or went silent: connect again.
    Lost,
    /// The server does not allow tracking: fall back to pub/sub.
    Refused(String),
}

/// The same client, speaking RESP3 (pushes need it).
fn resp3(client: &Client) -> Result<Client, RedisError> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Client::open(info.set_redis_settings(settings))
}

/// Whether `e` is the server refusing tracking (rather than a fault worth retrying).
fn refusal(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::RESP3NotSupported => true,
        ErrorKind::Server(ServerErrorKind::NoPerm | ServerErrorKind::ResponseError) => true,
        // Codes the driver has no kind for; credentials and transient states are not a
        // refusal of tracking (pub/sub would fail the same way).
        ErrorKind::Extension => !matches!(
            e.code(),
            Some("WRONGPASS" | "NOAUTH" | "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN")
                | Some("CLUSTERDOWN" | "MISCONF")
        ),
        _ => false,
    }
}

/// Whether a failed connect is the server refusing RESP3 (`HELLO 3` unknown, or denied by
/// an ACL). Other replies to the handshake are about this connection, not about tracking
/// (`ERR max number of clients reached`, a wrong password): retried, never a fallback for
/// the listener's lifetime.
fn refusal_at_connect(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::RESP3NotSupported | ErrorKind::Server(ServerErrorKind::NoPerm)
    )
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "timed out",
    ))
}

impl Tracking {
    /// `nodes`: clients of the configured server, then of the other cluster seeds.
    pub(crate) fn new(
        key_prefix: &str,
        nodes: &[Client],
        config: &RedisConfig,
        classifier: &Classifier,
    ) -> Result<Self, CacheError> {
        let seeds = nodes
            .iter()
            .map(resp3)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| classifier.classify(&e))?;
        Ok(Self {
            inner: Arc::new(Shared {
                prefix: format!("{key_prefix}:"),
                marker: format!("{key_prefix}:__l1_tracking"),
                seeds,
                config: config.clone(),
                mode: AtomicU8::new(TRACKING),
            }),
        })
    }

    /// `"tracking"`, or `"pubsub"` once the server refused tracking.
    pub(crate) fn mode(&self) -> &'static str {
        match self.inner.mode.load(Ordering::Acquire) {
            PUBSUB => "pubsub",
            _ => "tracking",
        }
    }

    /// Starts listening for `sink` in the current Tokio runtime (see
    /// `invalidation::spawn_listener`); `fallback` runs instead if tracking is refused.
    pub(crate) fn listen(&self, sink: Weak<dyn Sink>, fallback: pubsub::Listener) {
        let shared = Arc::clone(&self.inner);
        spawn_listener(sink, move |sink| run(shared, sink, fallback));
    }
}

async fn run(shared: Arc<Shared>, sink: Weak<dyn Sink>, fallback: pubsub::Listener) {
    let mut was_up = false;
    let mut next_seed = 0usize;
    loop {
        match session(&shared, &sink, &mut next_seed, &mut was_up).await {
            Outcome::Gone => return,
            Outcome::Refused(why) => {
                shared.mode.store(PUBSUB, Ordering::Release);
                let Some(s) = sink.upgrade() else { return };
                s.down();
                drop(s);
                tracing::warn!(
                    target: "cache_runtime::l1",
                    reason = %why,
                    channel = fallback.pattern(),
                    "Redis refuses client tracking: the L1 listens to the pub/sub channel instead, which only this library's writers announce on (a change made by another client reaches the L1 when its entry expires)"
                );
                fallback.run(sink).await;
                return;
            }
            Outcome::Lost => {
                let Some(s) = sink.upgrade() else { return };
                s.down();
                drop(s);
                if std::mem::take(&mut was_up) {
                    tracing::warn!(target: "cache_runtime::connection", "L1 tracking connection down: L1 disabled until it is back");
                }
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// A RESP3 connection that reports its pushes to `tx`, bounded by the connect timeout.
async fn connect(
    config: &RedisConfig,
    client: &Client,
    tx: mpsc::UnboundedSender<PushInfo>,
) -> Result<MultiplexedConnection, RedisError> {
    let settings = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.socket_timeout))
        .set_push_sender(tx);
    tokio::time::timeout(
        config.connect_timeout,
        client.get_multiplexed_async_connection_with_config(&settings),
    )
    .await
    .unwrap_or_else(|_| Err(timed_out()))
}

/// Subscribes the marker (best effort: an ACL may deny channels) and turns tracking on.
async fn enable(shared: &Shared, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
    // Subscribed first: a proxy that holds pub/sub clients (the tests' tap) then holds
    // this connection before tracking is on, as it would a pub/sub listener.
    if let Err(e) = conn.subscribe(&shared.marker).await {
        if !matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension) {
            return Err(e);
        }
        tracing::debug!(target: "cache_runtime::l1", error = %e, "L1 tracking connection: marker channel denied");
    }
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(&shared.prefix)
        .query_async::<()>(conn)
        .await
}

fn lost_or_refused(what: &str, e: &RedisError) -> Outcome {
    lost_unless(refusal(e), what, e)
}

/// [`lost_or_refused`] for a failed connect.
fn lost_or_refused_at_connect(what: &str, e: &RedisError) -> Outcome {
    lost_unless(refusal_at_connect(e), what, e)
}

fn lost_unless(refused: bool, what: &str, e: &RedisError) -> Outcome {
    if refused {
        Outcome::Refused(format!("{what}: {e}"))
    } else {
        tracing::debug!(target: "cache_runtime::connection", error = %e, "L1 tracking: {what} failed");
        Outcome::Lost
    }
}

/// Whether the server behind `conn` is a cluster node (as `topology.rs` decides).
async fn is_cluster(config: &RedisConfig, conn: &mut MultiplexedConnection) -> bool {
    match config.cluster {
        ClusterMode::Enabled => true,
        ClusterMode::Disabled => false,
        ClusterMode::Auto => redis::cmd("INFO")
            .arg("cluster")
            .query_async::<String>(conn)
            .await
            // Denied (ACL, managed service): standalone, as `topology.rs` assumes.
            .is_ok_and(|text| parse_info(&text).get("cluster_enabled") == Some(&"1")),
    }
}

/// What the L1's coherence depends on in `CLUSTER NODES`: the primaries, and whether each
/// serves slots.
fn primaries_of(text: &str) -> Vec<(NodeAddr, bool)> {
    let mut primaries: Vec<(NodeAddr, bool)> = parse_nodes(text)
        .into_iter()
        .filter(|n| n.primary && (!n.failing || n.slots > 0))
        .map(|n| (n.addr, n.slots > 0))
        .collect();
    primaries.sort_by(|(a, _), (b, _)| (&a.host, a.port).cmp(&(&b.host, b.port)));
    primaries
}

/// One tracking session: connect, enable, serve pushes until a connection fails.
async fn session(
    shared: &Shared,
    sink: &Weak<dyn Sink>,
    next_seed: &mut usize,
    was_up: &mut bool,
) -> Outcome {
    let Some(seed) = shared.seeds.get(*next_seed % shared.seeds.len().max(1)) else {
        return Outcome::Gone;
    };
    let config = &shared.config;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut first = match connect(config, seed, tx.clone()).await {
        Ok(c) => c,
        Err(e) => {
            // Another seed next time.
            *next_seed = next_seed.wrapping_add(1);
            return lost_or_refused_at_connect("connect", &e);
        }
    };
    let mut conns = Vec::new();
    // The primaries tracked (cluster), as `CLUSTER NODES` listed them.
    let mut tracked = None;
    if is_cluster(config, &mut first).await {
        let text = match redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut first)
            .await
        {
            Ok(t) => t,
            Err(e) => return lost_or_refused("CLUSTER NODES", &e),
        };
        // The pushes of the discovery connection (its eventual `Disconnection`) must not
        // count: node connections report to a channel of their own.
        drop(first);
        let (node_tx, node_rx) = mpsc::unbounded_channel();
        rx = node_rx;
        let primaries = primaries_of(&text);
        let opened = futures_util::future::join_all(primaries.iter().map(|(addr, serves)| {
            let node_tx = node_tx.clone();
            async move {
                let node = config.for_node(addr);
                let classifier = Classifier::new(
                    &node.host,
                    node.port,
                    node.endpoint(),
                    node.tls.is_some(),
                    node.socket_timeout,
                );
                // `true` with an error: it came from the connect (see `refusal_at_connect`).
                let result = async {
                    let client = client::build_client(&node, &classifier)
                        .map_err(|e| RedisError::from(std::io::Error::other(e.to_string())))
                        .and_then(|c| resp3(&c))
                        .map_err(|e| (true, e))?;
                    let mut conn = connect(&node, &client, node_tx)
                        .await
                        .map_err(|e| (true, e))?;
                    enable(shared, &mut conn).await.map_err(|e| (false, e))?;
                    Ok::<_, (bool, RedisError)>(conn)
                }
                .await;
                (addr, *serves, result)
            }
        }))
        .await;
        // Only the connections hold senders now: `rx` ends when all of them close.
        drop(node_tx);
        for (addr, serves, result) in opened {
            match result {
                Ok(conn) => conns.push(conn),
                Err((at_connect, e)) => {
                    let what = format!("tracking on {addr}");
                    let outcome = if at_connect {
                        lost_or_refused_at_connect(&what, &e)
                    } else {
                        lost_or_refused(&what, &e)
                    };
                    // A primary without slots holds no key: tracked when it can be.
                    if !serves && matches!(outcome, Outcome::Lost) {
                        tracing::debug!(target: "cache_runtime::connection", node = %addr, error = %e, "L1 tracking: a primary without slots is unreachable");
                        continue;
                    }
                    return outcome;
                }
            }
        }
        if conns.is_empty() {
            return Outcome::Lost;
        }
        tracked = Some(primaries);
    } else {
        if let Err(e) = enable(shared, &mut first).await {
            return lost_or_refused("CLIENT TRACKING", &e);
        }
        conns.push(first);
    }
    drop(tx);

    // Confirmed on every connection: serve (empty: changes may have been missed).
    let Some(s) = sink.upgrade() else {
        return Outcome::Gone;
    };
    s.up();
    drop(s);
    *was_up = true;
    shared.mode.store(TRACKING, Ordering::Release);
    tracing::debug!(target: "cache_runtime::connection", connections = conns.len(), prefix = %shared.prefix, "L1 tracking up");

    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut beats = 0u32;
    loop {
        tokio::select! {
            push = rx.recv() => {
                if let Some(outcome) = on_push(sink, push) {
                    return outcome;
                }
            }
            _ = heartbeat.tick() => {
                if sink.strong_count() == 0 {
                    return Outcome::Gone;
                }
                beats = beats.wrapping_add(1);
                let refresh = tracked.is_some() && beats % REFRESH_EVERY == 0;
                let probe = beat(&conns, refresh);
                tokio::pin!(probe);
                // Pushes go on being applied while the PONGs are awaited.
                let listed = loop {
                    tokio::select! {
                        result = &mut probe => break result,
                        push = rx.recv() => {
                            if let Some(outcome) = on_push(sink, push) {
                                return outcome;
                            }
                        }
                    }
                };
                match listed {
                    Err(()) => return Outcome::Lost,
                    Ok(Some(text)) => {
                        if tracked.as_deref() != Some(primaries_of(&text).as_slice()) {
                            tracing::info!(target: "cache_runtime::connection", "L1 tracking: the cluster's primaries changed; tracking them afresh");
                            return Outcome::Lost;
                        }
                    }
                    Ok(None) => {}
                }
            }
        }
    }
}

/// PINGs every connection (and reads `CLUSTER NODES` through the first when `refresh`),
/// all within [`PONG_DEADLINE`].
async fn beat(conns: &[MultiplexedConnection], refresh: bool) -> Result<Option<String>, ()> {
    let listing = conns.first().cloned().filter(|_| refresh);
    // Clones share the connection (multiplexed).
    let pings = futures_util::future::join_all(
        conns
            .iter()
            .cloned()
            .map(|mut c| async move { redis::cmd("PING").query_async::<Value>(&mut c).await }),
    );
    let list = async move {
        match listing {
            Some(mut c) => redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut c)
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    match tokio::time::timeout(PONG_DEADLINE, futures_util::future::join(pings, list)).await {
        Ok((pongs, Ok(listed))) if pongs.iter().all(Result::is_ok) => Ok(listed),
        _ => Err(()),
    }
}

/// Applies one push; `Some` when the session is over.
fn on_push(sink: &Weak<dyn Sink>, push: Option<PushInfo>) -> Option<Outcome> {
    // Every sender gone: every connection closed.
    let Some(push) = push else {
        return Some(Outcome::Lost);
    };
    match push.kind {
        PushKind::Invalidate => {
            let Some(s) = sink.upgrade() else {
                return Some(Outcome::Gone);
            };
            apply(&*s, &push.data);
            None
        }
        PushKind::Disconnection => Some(Outcome::Lost),
        // The marker's confirmation, messages nobody sends.
        _ => None,
    }
}

/// Applies an invalidation push: `[keys]`, or `[nil]` for a flush.
fn apply(sink: &dyn Sink, data: &[Value]) {
    match data.first() {
        Some(Value::Array(keys) | Value::Set(keys)) => {
            for key in keys {
                match key {
                    Value::BulkString(bytes) => {
                        // Not UTF-8: not a key of ours (the L1 holds only `str` keys).
                        if let Ok(key) = std::str::from_utf8(bytes) {
                            sink.invalidate(Invalidated::Key(key));
                        }
                    }
                    Value::SimpleString(key) => sink.invalidate(Invalidated::Key(key)),
                    _ => sink.invalidate(Invalidated::All),
                }
            }
        }
        // FLUSHDB / FLUSHALL (and anything not understood): everything.
        _ => sink.invalidate(Invalidated::All),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::invalidation::Recorder;

    #[test]
    fn pushes_become_invalidations() {
        let r = Recorder::default();
        apply(
            &r,
            &[Value::Array(vec![
                Value::BulkString(b"p:a".to_vec()),
                Value::BulkString(vec![0xff]),
                Value::BulkString(b"p:b".to_vec()),
            ])],
        );
        apply(&r, &[Value::Nil]);
        assert_eq!(
            *r.0.lock().unwrap(),
            [r#"Key("p:a")"#, r#"Key("p:b")"#, "All"]
        );
    }

    #[test]
    fn refusals_are_told_from_faults() {
        let nop: RedisError = (ErrorKind::Server(ServerErrorKind::NoPerm), "no permission").into();
        assert!(refusal(&nop));
        assert!(refusal(&(ErrorKind::RESP3NotSupported, "old").into()));
        assert!(!refusal(&timed_out()));
        assert!(!refusal(&(ErrorKind::Io, "reset").into()));
        // At connect, only RESP3 itself being refused counts: a full server or a wrong
        // password is retried, never a fallback for the listener's lifetime.
        assert!(refusal_at_connect(&nop));
        assert!(refusal_at_connect(
            &(ErrorKind::RESP3NotSupported, "old").into()
        ));
        let full: RedisError = (
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "max number of clients reached",
        )
            .into();
        assert!(refusal(&full), "a refusal of CLIENT TRACKING");
        assert!(!refusal_at_connect(&full), "not a refusal of tracking");
        assert!(!refusal_at_connect(&timed_out()));
    }

    #[test]
    fn cluster_primaries_are_what_matters() {
        let text = "\
a 127.0.0.1:7001@17001 master - 0 0 1 connected 0-8000
b 127.0.0.1:7002@17002 master - 0 0 2 connected 8001-16383
c 127.0.0.1:7003@17003 slave a 0 0 1 connected
d 127.0.0.1:7004@17004 master,fail - 0 0 3 connected
";
        let p = primaries_of(text);
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|(_, serves)| *serves));
    }
}
