//! The operations of [`Store`] as Redis commands, each one request (a command or a
//! pipeline) through the guard and the pool.
//!
//! Writes announce themselves on the invalidation channel in the same pipeline (so
//! coherence costs no extra round trip), with or without an L1 here: a peer's L1 may be on
//! the pub/sub fallback (`pubsub.rs`), which hears only announcements.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use super::batch::{Entry, Queued, Reply, Waiter};
use super::cluster::{Cluster, NodeLine};
use super::errors::refuses_command;
use super::pool::InFlight;
use super::pubsub::hash_tag;
use super::topology::Topology;
use super::tracking::Tracking;
use super::RedisBackend;
use crate::backend::invalidation::Sink;
use crate::backend::{
    namespace_of, parse_info, unix_ms, Bytes, Endpoint, KeyTtl, MemoryFacts, NamespaceCount,
    NodeFacts, PoolStats, ScanBudget, ServerFacts, Store, Write,
};
use crate::config::NodeAddr;
use crate::error::CacheError;

/// Keys per SCAN / ZSCAN page and per UNLINK batch.
const BATCH: usize = 500;

/// Index members are pruned this long after their expiry (tolerates clock skew between
/// application servers writing the same user's index).
const PRUNE_GRACE_MS: u64 = 60_000;

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Lists `key` in `index` (a user index or a tag's set): a sorted set scored by expiry (ms
/// since the epoch), so members whose keys have expired are pruned on the next write
/// instead of piling up. Pruning lags by [`PRUNE_GRACE_MS`] so that clock skew between
/// application servers can never drop a member whose key is still alive. The index lives
/// as long as its longest-lived key.
fn add_to_index(
    pipe: &mut redis::Pipeline,
    index: &str,
    key: &str,
    ttl: Option<Duration>,
    now: u64,
) {
    let score = ttl.map_or(f64::INFINITY, |t| (now + duration_ms(t)) as f64);
    pipe.cmd("ZADD").arg(index).arg(score).arg(key).ignore();
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(index)
        .arg("-inf")
        .arg(format!("({}", now.saturating_sub(PRUNE_GRACE_MS)))
        .ignore();
    if let Some(ttl) = ttl {
        // NX: the first set; GT: a longer-lived key.
        let ms = duration_ms(ttl);
        pipe.cmd("PEXPIRE").arg(index).arg(ms).arg("NX").ignore();
        pipe.cmd("PEXPIRE").arg(index).arg(ms).arg("GT").ignore();
    } else {
        pipe.cmd("PERSIST").arg(index).ignore();
    }
}

/// A SCAN in progress (see `RedisBackend::scanner`).
struct Scan {
    pattern: Option<String>,
    count: usize,
    cursor: u64,
    /// Cluster primaries still to scan (the next is last).
    nodes: Vec<NodeAddr>,
    /// The connection to the primary being scanned.
    node: Option<redis::aio::MultiplexedConnection>,
    cluster: Option<Arc<Cluster>>,
    started: bool,
}

/// Whether this client may PUBLISH invalidation announcements (`RedisBackend::announce`).
const ANNOUNCE_UNKNOWN: u8 = 0;
const ANNOUNCE_ALLOWED: u8 = 1;
const ANNOUNCE_DENIED: u8 = 2;

#[derive(Clone, Copy)]
enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

impl RedisBackend {
    /// One request through the cluster connection (which routes it by its keys' slot).
    async fn send_cluster<T: redis::FromRedisValue>(
        &self,
        cluster: &Cluster,
        request: Request<'_>,
    ) -> Result<T, CacheError> {
        let mut conn = cluster.connection().await?;
        let _in_flight = cluster.start();
        match request {
            Request::Cmd(cmd) => cmd.query_async(&mut conn).await,
            Request::Pipe(pipe) => pipe.query_async(&mut conn).await,
        }
        .map_err(|e| self.classifier.classify(&e))
    }

    /// Runs one command or pipeline, under the guard: on a lane of the server, or through
    /// the cluster connection (which routes it by its keys' slot).
    async fn send<T: redis::FromRedisValue>(&self, request: Request<'_>) -> Result<T, CacheError> {
        // A child of the call's span (DEBUG: nothing to pay for a subscriber at INFO).
        let span = crate::metrics::spans::redis_request(&self.config, || match request {
            Request::Cmd(cmd) => vec![cmd],
            Request::Pipe(pipe) => pipe.cmd_iter().collect(),
        });
        // Only the standalone request is inline: discovering the topology, opening the
        // first lane and the cluster's path are boxed, so the future every request moves
        // through its callers (and into `dispatch_async!`'s box) stays small; measured,
        // its copies were a quarter of a concurrent hit's instructions.
        let request = self.guard.run(async {
            let topology = match self.topology.get() {
                Some(t) => t,
                None => Box::pin(self.topology()).await?,
            };
            match topology {
                Topology::Standalone => {
                    let lane = match self.pool.pick_now() {
                        Some(lane) => lane,
                        None => Box::pin(self.pool.lane()).await?,
                    };
                    let _in_flight = InFlight::start(&self.pool, &lane);
                    let mut conn = lane.conn.clone();
                    match request {
                        Request::Cmd(cmd) => cmd.query_async(&mut conn).await,
                        Request::Pipe(pipe) => pipe.query_async(&mut conn).await,
                    }
                    .map_err(|e| {
                        lane.failed(&e);
                        self.classifier.classify(&e)
                    })
                }
                Topology::Cluster(cluster) => Box::pin(self.send_cluster(cluster, request)).await,
                Topology::Refused(why) => Err(CacheError::WrongTopology(why.clone())),
            }
        });
        // Entering a disabled span on every poll is a few hundred instructions a request.
        let result = if span.is_disabled() {
            request.await
        } else {
            request.instrument(span.clone()).await
        };
        crate::metrics::spans::failed(&span, &result);
        if let (Err(e), Some(cluster)) = (&result, self.cluster()) {
            // Requests that only ever reach a node that is gone never get the redirect
            // that would teach the driver the new primary: a fresh connection (at most
            // every 2 s while faults go on) reads the slot map again.
            if e.is_connection_fault() && !matches!(e, CacheError::Unavailable) {
                cluster.reset();
            }
        }
        result
    }

    /// A request to one node of a cluster, under the guard (per-node work: SCAN, INFO).
    async fn on_node<T: redis::FromRedisValue>(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        cmd: &redis::Cmd,
    ) -> Result<T, CacheError> {
        self.guard
            .run(async {
                cmd.query_async(conn)
                    .await
                    .map_err(|e| self.classifier.classify(&e))
            })
            .await
    }

    /// Announces on the invalidation channel that `keys` changed (every writer does: see
    /// the module's notes). The channel depends on the topology, so it is known first (the
    /// first write may be the first contact).
    async fn announce_keys<'a>(
        &self,
        pipe: &mut redis::Pipeline,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), CacheError> {
        if !self.may_announce().await {
            return Ok(());
        }
        let pubsub = &self.pubsub;
        // The first contact's discovery boxed, as the permission check below: every write's
        // future (boxed by the dispatch) stays under 1 KiB, glibc's fast path.
        let topology = match self.topology.get() {
            Some(t) => t,
            None => Box::pin(self.guard.run(self.topology())).await?,
        };
        pubsub.announce_keys(pipe, keys, matches!(topology, Topology::Cluster(_)));
        Ok(())
    }

    /// Whether this client may PUBLISH on the invalidation channel, asked once with an
    /// announcement of no keys (which listeners ignore). An ACL user without the channel
    /// (Redis 7's `acl-pubsub-default resetchannels`) would otherwise fail every write's
    /// pipeline: its writes then go unannounced, with one warning (peers' L1s on the
    /// pub/sub fallback miss them; tracking sees them anyway).
    async fn may_announce(&self) -> bool {
        match self.announce.load(std::sync::atomic::Ordering::Relaxed) {
            ANNOUNCE_ALLOWED => true,
            ANNOUNCE_DENIED => false,
            _ => Box::pin(self.ask_may_announce()).await,
        }
    }

    /// [`Self::may_announce`]'s question to the server (once, unless a fault hid the
    /// answer).
    async fn ask_may_announce(&self) -> bool {
        use std::sync::atomic::Ordering;
        let mut pipe = redis::pipe();
        self.pubsub
            .announce_keys(&mut pipe, std::iter::empty(), false);
        match self.query_pipe::<()>(&pipe).await {
            Ok(()) => {
                self.announce.store(ANNOUNCE_ALLOWED, Ordering::Relaxed);
                true
            }
            Err(CacheError::Auth {
                cause: crate::error::AuthCause::Permission,
                detail,
            }) => {
                if self.announce.swap(ANNOUNCE_DENIED, Ordering::Relaxed) == ANNOUNCE_UNKNOWN {
                    tracing::warn!(target: "cache_runtime::l1", error = %detail, "this Redis user may not PUBLISH on the invalidation channel: writes are not announced, so other processes' L1 on the pub/sub fallback will not see them (client tracking still does); grant the channel (ACL SETUSER <user> &<prefix>:__invalidate*) to announce");
                }
                false
            }
            // Unknown yet (a connection fault): announce, and ask again next time.
            Err(_) => true,
        }
    }

    /// A SCAN over the server, or over every primary of a cluster, page by page.
    async fn scanner(&self, pattern: Option<&str>, count: usize) -> Result<Scan, CacheError> {
        let mut scan = Scan {
            pattern: pattern.map(str::to_owned),
            count,
            cursor: 0,
            nodes: Vec::new(),
            node: None,
            cluster: None,
            started: false,
        };
        if let Topology::Cluster(cluster) = self.guard.run(self.topology()).await? {
            let nodes = self.guard.run(cluster.nodes()).await?;
            self.listen_on(cluster, &nodes);
            scan.nodes = nodes
                .into_iter()
                .filter(|n| n.primary && n.slots > 0)
                .map(|n| n.addr)
                .rev()
                .collect();
            scan.cluster = Some(Arc::clone(cluster));
        }
        Ok(scan)
    }

    /// The next page of `scan`, `None` once every key was visited.
    async fn next_page(&self, scan: &mut Scan) -> Result<Option<Vec<Vec<u8>>>, CacheError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(scan.cursor);
        if let Some(p) = &scan.pattern {
            cmd.arg("MATCH").arg(p);
        }
        cmd.arg("COUNT").arg(scan.count);
        // Bytes: a non-UTF-8 key must not stop a scan.
        let (next, keys): (u64, Vec<Vec<u8>>) = match scan.cluster.clone() {
            None => {
                if scan.started && scan.cursor == 0 {
                    return Ok(None);
                }
                self.query(&cmd).await?
            }
            Some(cluster) => {
                if scan.node.is_none() || (scan.started && scan.cursor == 0) {
                    let Some(node) = scan.nodes.pop() else {
                        return Ok(None);
                    };
                    scan.node = Some(self.guard.run(cluster.node_connection(&node)).await?);
                    scan.cursor = 0;
                    cmd = redis::cmd("SCAN");
                    cmd.arg(0);
                    if let Some(p) = &scan.pattern {
                        cmd.arg("MATCH").arg(p);
                    }
                    cmd.arg("COUNT").arg(scan.count);
                }
                let Some(conn) = scan.node.as_mut() else {
                    return Ok(None);
                };
                self.on_node(conn, &cmd).await?
            }
        };
        scan.started = true;
        scan.cursor = next;
        Ok(Some(keys))
    }

    /// Whether `scan` visited every key (its last page was the last of the last node).
    fn scan_done(scan: &Scan) -> bool {
        scan.started && scan.cursor == 0 && scan.nodes.is_empty()
    }

    /// Tells the L1 listener where it may subscribe: the cluster's current nodes.
    fn listen_on(&self, cluster: &Cluster, nodes: &[NodeLine]) {
        if self.tracking.is_none() {
            // Nothing listens here.
            return;
        }
        let clients = nodes
            .iter()
            .filter(|n| !n.failing)
            .filter_map(|n| cluster.node_client(&n.addr).ok())
            .collect();
        self.pubsub.set_nodes(clients);
    }

    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, CacheError> {
        self.send(Request::Cmd(cmd)).await
    }

    pub(super) async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, CacheError> {
        self.send(Request::Pipe(pipe)).await
    }

    /// A GET on a standalone server, alone or in the next MGET (see `batch.rs`).
    async fn get_batched(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let stall = self.pool.stall_after();
        // One GET below for every way that reads alone: a single await of it keeps this
        // future small (no branch holds a second copy of its state).
        let slot = match self.batch.enter(key, stall) {
            Entry::Alone(slot) => Some(slot),
            Entry::Direct => None,
            // Boxed: the ranged read's state would make every read's future larger.
            Entry::Large => {
                return Box::pin(self.get_large(key))
                    .await
                    .map(|v| v.map(|(v, _)| v))
            }
            Entry::Queued(queued) => match self.wait_queued(queued, stall).await {
                Some(reply) => return reply,
                // Withdrawn, or the collector went away (its caller dropped it), or the
                // server refused the MGET: read alone.
                None => None,
            },
            Entry::Collect(collector) => {
                let (slot, waiters) = collector.turn(stall).await;
                if !waiters.is_empty() {
                    // Boxed: one allocation per batch, and every read's future stays
                    // small (an MGET's state doubled it).
                    let value = Box::pin(self.mget(key, waiters)).await;
                    drop(slot);
                    return value;
                }
                Some(slot)
            }
        };
        let value = self.get_one(key).await;
        drop(slot);
        match &value {
            Ok(Some(v)) => self.batch.saw(key, v.len()),
            // Perhaps a value too large to arrive in time: never batch it with others.
            Err(CacheError::Timeout(_)) => self.batch.alone_from_now(key),
            _ => {}
        }
        value
    }

    /// A queued read's answer from its batch, or `None` when it must read alone: taken by
    /// the collector within the stall bound, or withdrawn (a late collector, whose caller
    /// no longer polls it, holds no read).
    async fn wait_queued(&self, mut queued: Queued<'_>, stall: Duration) -> Option<Reply> {
        let answer = match tokio::time::timeout(stall, &mut queued.answer).await {
            Ok(answer) => answer,
            Err(_) if queued.withdraw() => return None,
            // In the batch sent: its MGET has the socket timeout.
            Err(_) => {
                let timeout = self.config.socket_timeout;
                match tokio::time::timeout(timeout, &mut queued.answer).await {
                    Ok(answer) => answer,
                    Err(_) => return Some(Err(CacheError::Timeout(timeout))),
                }
            }
        };
        // An error: the collector went away or the server refused the MGET.
        answer.ok()
    }

    /// One GET.
    async fn get_one(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    /// One MGET for the collector's key and its waiters'; each waiter gets its answer.
    async fn mget(&self, key: &str, waiters: Vec<Waiter>) -> Result<Option<Vec<u8>>, CacheError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(key);
        for w in &waiters {
            cmd.arg(&w.key);
        }
        let values: Result<Vec<Option<Vec<u8>>>, CacheError> = self.query(&cmd).await;
        match values {
            Ok(values) if values.len() == waiters.len() + 1 => {
                let mut values = values.into_iter();
                let own = values.next().flatten();
                for (w, v) in waiters.into_iter().zip(values) {
                    if let Some(v) = &v {
                        self.batch.saw(&w.key, v.len());
                    }
                    let _ = w.reply.send(Ok(v));
                }
                if let Some(v) = &own {
                    self.batch.saw(key, v.len());
                }
                Ok(own)
            }
            Ok(values) => {
                let e = CacheError::Server {
                    code: "PROTOCOL".to_owned(),
                    detail: format!(
                        "MGET of {} keys answered {} values",
                        waiters.len() + 1,
                        values.len()
                    ),
                };
                for w in waiters {
                    let _ = w.reply.send(Err(e.copy()));
                }
                Err(e)
            }
            // The request failed to reach the server, got no answer, or was bypassed by
            // the open breaker: each read would have failed so.
            Err(e) if e.is_connection_fault() => {
                for w in waiters {
                    self.guard.shared_fault(&e);
                    let _ = w.reply.send(Err(e.copy()));
                }
                Err(e)
            }
            // The server answered with an error: the waiters (their senders dropped) and
            // this read go alone. If it refused MGET itself (an ACL user allowed GET only,
            // a renamed command), reads stop being batched.
            Err(e) => {
                // Only a refusal of the command: a NOPERM on one key (an ACL by key
                // pattern) leaves batching on for the others.
                let refused = refuses_command(&e, &["mget"]);
                tracing::debug!(target: "cache_runtime::connection", error = %e, refused, "MGET failed");
                if refused {
                    self.batch.refuse();
                }
                drop(waiters);
                let value: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(key)).await?;
                Ok(value)
            }
        }
    }

    async fn info(&self, section: &str) -> Result<String, CacheError> {
        self.query(redis::cmd("INFO").arg(section)).await
    }
}

impl Store for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            shown: self.shown.clone(),
            tls: self.config.tls.is_some(),
        }
    }

    fn circuit_open(&self) -> bool {
        self.guard.circuit_open()
    }

    fn last_fault(&self) -> Option<String> {
        self.guard.last_fault()
    }

    fn pool_stats(&self) -> Option<PoolStats> {
        match self.cluster() {
            // One multiplexed connection per node inside the driver.
            Some(cluster) => Some(PoolStats {
                max_connections: self.config.pool_max_size.get(),
                created_connections: usize::from(cluster.connected()),
                available_connections: self
                    .config
                    .pool_max_size
                    .get()
                    .saturating_sub(usize::from(cluster.in_flight() > 0)),
            }),
            None => Some(self.pool.stats()),
        }
    }

    fn busy(&self) -> bool {
        match self.cluster() {
            Some(cluster) => cluster.busy(),
            None => self.pool.busy(),
        }
    }

    async fn connect(&self) -> Result<(), CacheError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(CacheError::NoRuntime);
        }
        if self.topology.get().is_none() {
            // The first contact: the configured server, which also says what it is.
            self.pool.connect().await?;
        }
        match self.guard.run(self.topology()).await? {
            Topology::Standalone => self.pool.connect().await,
            Topology::Cluster(cluster) => cluster.connection().await.map(|_| ()),
            Topology::Refused(why) => Err(CacheError::WrongTopology(why.clone())),
        }
    }

    fn shared_by_processes(&self) -> bool {
        true
    }

    async fn try_lock(&self, key: &str, token: &str, lease: Duration) -> Result<bool, CacheError> {
        self.take_lock(key, token, lease).await
    }

    async fn unlock(&self, key: &str, token: &str) -> Result<(), CacheError> {
        self.release_lock(key, token).await
    }

    async fn ping(&self) -> Result<Duration, CacheError> {
        let start = Instant::now();
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(start.elapsed())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        // Not outside a runtime: the batch's timers need one (the request then fails
        // with `NoRuntime` instead).
        let batched = self.config.batch_reads
            && matches!(self.topology.get(), Some(Topology::Standalone))
            && !self.guard.circuit_open()
            && tokio::runtime::Handle::try_current().is_ok();
        let value = if batched {
            self.get_batched(key).await?
        } else if matches!(self.topology.get(), Some(Topology::Standalone))
            && self.batch.is_large(key)
        {
            Box::pin(self.get_large(key)).await?.map(|(v, _)| v)
        } else {
            let value: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(key)).await?;
            if let Some(v) = &value {
                // Large keys are read in ranges next time, batching or not.
                self.batch.saw(key, v.len());
            }
            value
        };
        Ok(value.map(Bytes::Owned))
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, KeyTtl)>, CacheError> {
        let standalone = matches!(self.topology.get(), Some(Topology::Standalone));
        let read = if standalone && self.batch.is_large(key) {
            Box::pin(self.get_large(key)).await?
        } else {
            let read = self.get_whole(key).await?;
            if let Some((v, _)) = &read {
                // Large keys are read in ranges next time (the L1's reads come here).
                self.batch.saw(key, v.len());
            }
            read
        };
        Ok(read.map(|(v, pttl)| (Bytes::Owned(v), KeyTtl::from_pttl(pttl))))
    }

    async fn set(&self, write: Write<'_>) -> Result<(), CacheError> {
        let Write {
            key,
            value,
            ttl,
            index,
            tags,
        } = write;
        let mut pipe = redis::pipe();
        let set = pipe.cmd("SET").arg(key).arg(value);
        if let Some(ttl) = ttl {
            set.arg("PX").arg(duration_ms(ttl));
        }
        set.ignore();
        self.announce_keys(&mut pipe, [key]).await?;
        if index.is_none() && tags.is_empty() {
            return self.query_pipe::<()>(&pipe).await;
        }
        // One round trip, unless a cluster keeps an index in another slot (a tag's set,
        // or a user index in the seed's layout, `json-plain`): then the value first, and
        // each index elsewhere after it, concurrently.
        let now = unix_ms();
        let mut elsewhere = Vec::new();
        for index in index.into_iter().chain(tags.iter().map(String::as_str)) {
            if self.cluster().is_some() && hash_tag(key) != hash_tag(index) {
                let mut own = redis::pipe();
                add_to_index(&mut own, index, key, ttl, now);
                elsewhere.push(own);
            } else {
                add_to_index(&mut pipe, index, key, ttl, now);
            }
        }
        self.query_pipe::<()>(&pipe).await?;
        let added =
            futures_util::future::join_all(elsewhere.iter().map(|own| self.query_pipe::<()>(own)))
                .await;
        added.into_iter().collect()
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK").arg(key);
        self.announce_keys(&mut pipe, [key]).await?;
        let (n,): (u64,) = self.query_pipe(&pipe).await?;
        Ok(n > 0)
    }

    async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        let n: u64 = self.query(redis::cmd("EXISTS").arg(key)).await?;
        Ok(n > 0)
    }

    async fn ttl(&self, key: &str) -> Result<KeyTtl, CacheError> {
        let ms: i64 = self.query(redis::cmd("PTTL").arg(key)).await?;
        Ok(KeyTtl::from_pttl(ms))
    }

    async fn incr(&self, key: &str, amount: i64, ttl: Option<Duration>) -> Result<i64, CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("INCRBY").arg(key).arg(amount);
        if let Some(ttl) = ttl {
            // Only a key without an expiry gets one (a new counter, or one made by `set`).
            pipe.cmd("PEXPIRE")
                .arg(key)
                .arg(duration_ms(ttl))
                .arg("NX")
                .ignore();
        }
        self.announce_keys(&mut pipe, [key]).await?;
        self.query_pipe::<(i64,)>(&pipe)
            .await
            .map(|(n,)| n)
            .map_err(|e| match e {
                // INCRBY's only ERR replies: not an integer, or out of range.
                CacheError::Server { code, detail } if code == "ERR" => {
                    CacheError::NotACounter(detail)
                }
                CacheError::WrongType => {
                    CacheError::NotACounter("the key holds a non-string Redis type".to_owned())
                }
                other => other,
            })
    }

    /// SCAN + UNLINK in batches (never KEYS, never FLUSHDB), on every primary of a
    /// cluster (the UNLINK of a page goes through the cluster connection, which splits it by
    /// slot and adds up the counts).
    async fn clear_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        let pattern = format!("{prefix}*");
        let mut deleted = 0u64;
        let scanned = async {
            let mut scan = self.scanner(Some(&pattern), BATCH).await?;
            while let Some(keys) = self.next_page(&mut scan).await? {
                if !keys.is_empty() {
                    let n: u64 = self.query(redis::cmd("UNLINK").arg(&keys)).await?;
                    deleted += n;
                }
            }
            Ok::<_, CacheError>(())
        }
        .await;
        // Announced even when the clear stopped half-way: what was deleted is gone.
        if self.may_announce().await {
            let mut pipe = redis::pipe();
            self.pubsub.announce_prefix(&mut pipe, prefix);
            let announced = self.query_pipe::<()>(&pipe).await;
            scanned?;
            announced?;
        } else {
            scanned?;
        }
        Ok(deleted)
    }

    /// SCAN (every primary of a cluster) with `pattern`, UNLINK what `wanted` keeps.
    async fn clear_matching(
        &self,
        pattern: &str,
        wanted: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<u64, CacheError> {
        let mut deleted = 0u64;
        let mut scan = self.scanner(Some(pattern), BATCH).await?;
        while let Some(keys) = self.next_page(&mut scan).await? {
            let doomed: Vec<&str> = keys
                .iter()
                .filter_map(|k| std::str::from_utf8(k).ok())
                .filter(|k| wanted(k))
                .collect();
            if doomed.is_empty() {
                continue;
            }
            let n: u64 = self.query(redis::cmd("UNLINK").arg(&doomed)).await?;
            deleted += n;
            if self.may_announce().await {
                let mut pipe = redis::pipe();
                self.pubsub
                    .announce_keys(&mut pipe, doomed.iter().copied(), false);
                self.query_pipe::<()>(&pipe).await?;
            }
        }
        Ok(deleted)
    }

    /// Costs in proportion to that user's keys, whatever the database holds.
    async fn clear_index(
        &self,
        index: &str,
        member_prefix: Option<&str>,
    ) -> Result<u64, CacheError> {
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let mut scan = redis::cmd("ZSCAN");
            scan.arg(index).arg(cursor);
            if let Some(p) = member_prefix {
                scan.arg("MATCH").arg(format!("{p}*"));
            }
            scan.arg("COUNT").arg(BATCH);
            // ZSCAN replies member, score, member, score, ...
            let (next, pairs): (u64, Vec<String>) = self.query(&scan).await?;
            let keys: Vec<String> = pairs.into_iter().step_by(2).collect();
            if !keys.is_empty() {
                let same_slot =
                    self.cluster().is_none() || keys.iter().all(|k| hash_tag(k) == hash_tag(index));
                if same_slot {
                    // A user's keys and index share a hash tag: one slot, one pipeline.
                    let mut pipe = redis::pipe();
                    pipe.cmd("UNLINK").arg(&keys);
                    pipe.cmd("ZREM").arg(index).arg(&keys).ignore();
                    self.announce_keys(&mut pipe, keys.iter().map(String::as_str))
                        .await?;
                    let (n,): (u64,) = self.query_pipe(&pipe).await?;
                    deleted += n;
                } else {
                    // Members in other slots (the seed's layout on a cluster): UNLINK goes
                    // through the cluster connection, which splits it by slot.
                    let n: u64 = self.query(redis::cmd("UNLINK").arg(&keys)).await?;
                    deleted += n;
                    self.query::<()>(redis::cmd("ZREM").arg(index).arg(&keys))
                        .await?;
                    for key in &keys {
                        let mut pipe = redis::pipe();
                        self.announce_keys(&mut pipe, [key.as_str()]).await?;
                        if pipe.cmd_iter().next().is_some() {
                            self.query_pipe::<()>(&pipe).await?;
                        }
                    }
                }
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// ZSCAN the tag's set page by page: the members may live in any slot, so each page
    /// is UNLINKed through the cluster connection (split by slot), then removed from the
    /// set and announced.
    async fn clear_tag(
        &self,
        index: &str,
        forget: &(dyn Fn(&str) + Sync),
    ) -> Result<u64, CacheError> {
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let mut scan = redis::cmd("ZSCAN");
            scan.arg(index).arg(cursor).arg("COUNT").arg(BATCH);
            // ZSCAN replies member, score, member, score, ...
            let (next, pairs): (u64, Vec<String>) = self.query(&scan).await?;
            let keys: Vec<String> = pairs.into_iter().step_by(2).collect();
            if !keys.is_empty() {
                keys.iter().for_each(|k| forget(k));
                let n: u64 = self.query(redis::cmd("UNLINK").arg(&keys)).await?;
                deleted += n;
                self.query::<()>(redis::cmd("ZREM").arg(index).arg(&keys))
                    .await?;
                // One announcement for the page: a cluster delivers a PUBLISH to every
                // node, so its channel need not follow the keys' slots.
                if self.may_announce().await {
                    let mut pipe = redis::pipe();
                    self.pubsub
                        .announce_keys(&mut pipe, keys.iter().map(String::as_str), false);
                    self.query_pipe::<()>(&pipe).await?;
                }
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// One SCAN pass (over every primary of a cluster), stopping at the budget's keys
    /// examined or time, whichever first.
    async fn count_namespaces(
        &self,
        prefix: &str,
        budget: ScanBudget,
    ) -> Result<NamespaceCount, CacheError> {
        let start = Instant::now();
        let mut count = NamespaceCount::default();
        let mut scan = self.scanner(None, 1000).await?;
        while let Some(keys) = self.next_page(&mut scan).await? {
            count.scanned += keys.len() as u64;
            for key in keys.iter().filter_map(|k| std::str::from_utf8(k).ok()) {
                if let Some(ns) = namespace_of(key, prefix) {
                    *count.by_namespace.entry(ns.to_owned()).or_insert(0) += 1;
                }
            }
            if count.scanned >= budget.max_keys || start.elapsed() >= budget.max_time {
                break;
            }
        }
        count.complete = Self::scan_done(&scan);
        Ok(count)
    }

    /// DBSIZE (summed over the primaries of a cluster).
    async fn key_total(&self) -> Result<Option<u64>, CacheError> {
        let n: i64 = self.query(&redis::cmd("DBSIZE")).await?;
        Ok(u64::try_from(n).ok())
    }

    async fn server_facts(&self) -> Result<ServerFacts, CacheError> {
        if let Topology::Cluster(cluster) = self.guard.run(self.topology()).await? {
            return self.cluster_facts(cluster).await.map(|(facts, _)| facts);
        }
        let text = self.info("server").await?;
        let mut facts = server_facts_of(&parse_info(&text));
        // A managed service may withhold sections: what it withholds stays unknown.
        if let Ok(clients) = self.info("clients").await {
            let f = parse_info(&clients);
            facts.clients_connected = f.get("connected_clients").and_then(|s| s.parse().ok());
            facts.clients_blocked = f.get("blocked_clients").and_then(|s| s.parse().ok());
        }
        Ok(facts)
    }

    async fn memory_facts(&self) -> Result<MemoryFacts, CacheError> {
        if let Topology::Cluster(cluster) = self.guard.run(self.topology()).await? {
            return self.cluster_facts(cluster).await.map(|(_, memory)| memory);
        }
        let text = self.info("memory").await?;
        Ok(memory_facts_of(&parse_info(&text)))
    }

    fn invalidation_mode(&self) -> Option<&'static str> {
        self.tracking.as_ref().map(Tracking::mode)
    }

    fn listen(&self, sink: Weak<dyn Sink>) {
        match &self.tracking {
            Some(tracking) => tracking.listen(sink, self.pubsub.listener()),
            None => {
                if let Some(sink) = sink.upgrade() {
                    sink.ended();
                }
            }
        }
    }

    /// SCAN MATCH over the server (every primary of a cluster) until `limit` keys or the
    /// budget, then their PTTLs: one pipeline on a single server, one request per key on a
    /// cluster (the keys live in any slot). `scanned` is about the keys examined: SCAN's
    /// COUNT per page is a hint.
    async fn list_keys(
        &self,
        prefix: &str,
        limit: usize,
        budget: ScanBudget,
    ) -> Result<crate::backend::KeyList, CacheError> {
        const PAGE: usize = 1000;
        let start = Instant::now();
        let pattern = format!("{}*", crate::key::glob_literal(prefix));
        let mut scan = self.scanner(Some(&pattern), PAGE).await?;
        let mut list = crate::backend::KeyList::default();
        let mut found: Vec<String> = Vec::new();
        let mut cut = false;
        while let Some(keys) = self.next_page(&mut scan).await? {
            list.scanned += PAGE as u64;
            for key in keys.into_iter().filter_map(|k| String::from_utf8(k).ok()) {
                if !key.starts_with(prefix) {
                    continue;
                }
                if found.len() >= limit {
                    cut = true;
                    break;
                }
                found.push(key);
            }
            if cut || list.scanned >= budget.max_keys || start.elapsed() >= budget.max_time {
                break;
            }
        }
        list.complete = !cut && Self::scan_done(&scan);
        found.sort();
        found.dedup(); // SCAN may return a key twice (a rehash during the pass)
        let mut ttls = Vec::with_capacity(found.len());
        for chunk in found.chunks(BATCH) {
            if self.cluster().is_some() {
                let each = chunk.iter().map(|k| async move {
                    let mut cmd = redis::cmd("PTTL");
                    cmd.arg(k);
                    self.query::<i64>(&cmd).await
                });
                ttls.extend(futures_util::future::try_join_all(each).await?);
            } else {
                let mut pipe = redis::pipe();
                for k in chunk {
                    pipe.cmd("PTTL").arg(k);
                }
                ttls.extend(self.query_pipe::<Vec<i64>>(&pipe).await?);
            }
        }
        // A key that expired since the scan is no longer there to list.
        list.keys = found
            .into_iter()
            .zip(ttls)
            .map(|(k, ms)| (k, KeyTtl::from_pttl(ms)))
            .filter(|(_, ttl)| *ttl != KeyTtl::Missing)
            .collect();
        Ok(list)
    }

    /// ZCARD and ZRANGE (soonest expiry first) in one round trip, then the members' PTTLs:
    /// in the index's pipeline when they share its slot, else one request each.
    async fn index_members(
        &self,
        index: &str,
        limit: usize,
    ) -> Result<crate::backend::KeyList, CacheError> {
        if limit == 0 {
            let total: u64 = self.query(redis::cmd("ZCARD").arg(index)).await?;
            return Ok(crate::backend::KeyList {
                total: Some(total),
                complete: total == 0,
                ..crate::backend::KeyList::default()
            });
        }
        let mut pipe = redis::pipe();
        pipe.cmd("ZCARD").arg(index);
        pipe.cmd("ZRANGE")
            .arg(index)
            .arg(0)
            .arg(i64::try_from(limit).unwrap_or(i64::MAX) - 1);
        let (total, members): (u64, Vec<String>) = self.query_pipe(&pipe).await?;
        let same_slot =
            self.cluster().is_none() || members.iter().all(|k| hash_tag(k) == hash_tag(index));
        let ttls: Vec<i64> = if members.is_empty() {
            Vec::new()
        } else if same_slot {
            let mut pipe = redis::pipe();
            for k in &members {
                pipe.cmd("PTTL").arg(k);
            }
            self.query_pipe(&pipe).await?
        } else {
            let each = members.iter().map(|k| async move {
                let mut cmd = redis::cmd("PTTL");
                cmd.arg(k);
                self.query::<i64>(&cmd).await
            });
            futures_util::future::try_join_all(each).await?
        };
        Ok(crate::backend::KeyList {
            scanned: members.len() as u64,
            complete: members.len() as u64 >= total,
            total: Some(total),
            keys: members
                .into_iter()
                .zip(ttls)
                .map(|(k, ms)| (k, KeyTtl::from_pttl(ms)))
                .collect(),
        })
    }

    /// HSET of the snapshot (with an expiry only if this write created the hash, i.e. its
    /// watcher is gone), then HEXISTS of the watch mark, in one round trip; with no
    /// snapshot, only the HEXISTS. One key: one slot on a cluster.
    async fn publish_stats(
        &self,
        stats: crate::backend::StatsKey<'_>,
        field: &str,
        snapshot: Option<&[u8]>,
    ) -> Result<bool, CacheError> {
        let mut pipe = redis::pipe();
        if let Some(bytes) = snapshot {
            pipe.cmd("HSET")
                .arg(stats.key)
                .arg(field)
                .arg(bytes)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(stats.key)
                .arg(duration_ms(stats.ttl))
                .arg("NX")
                .ignore();
        }
        pipe.cmd("HEXISTS").arg(stats.key).arg(stats.watch_field);
        let (watched,): (bool,) = self.query_pipe(&pipe).await?;
        Ok(watched)
    }

    /// HSET of the watch mark, PEXPIRE, HDEL of the processes gone, HGETALL: one round
    /// trip.
    async fn watch_stats(
        &self,
        stats: crate::backend::StatsKey<'_>,
        forget: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<u8>>, CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(stats.key)
            .arg(stats.watch_field)
            .arg(unix_ms())
            .ignore();
        pipe.cmd("PEXPIRE")
            .arg(stats.key)
            .arg(duration_ms(stats.ttl))
            .ignore();
        if !forget.is_empty() {
            pipe.cmd("HDEL").arg(stats.key).arg(forget).ignore();
        }
        pipe.cmd("HGETALL").arg(stats.key);
        let (fields,): (std::collections::HashMap<String, Vec<u8>>,) =
            self.query_pipe(&pipe).await?;
        Ok(fields)
    }
}

/// Server facts from `INFO server`.
fn server_facts_of(f: &std::collections::HashMap<&str, &str>) -> ServerFacts {
    ServerFacts {
        version: f.get("redis_version").map(|s| (*s).to_owned()),
        mode: f.get("redis_mode").map(|s| (*s).to_owned()),
        uptime_secs: f.get("uptime_in_seconds").and_then(|s| s.parse().ok()),
        ..ServerFacts::default()
    }
}

/// Memory facts from `INFO memory`.
fn memory_facts_of(f: &std::collections::HashMap<&str, &str>) -> MemoryFacts {
    let used = f.get("used_memory").and_then(|s| s.parse().ok());
    MemoryFacts {
        used,
        used_human: f
            .get("used_memory_human")
            .map(|s| (*s).to_owned())
            .or_else(|| used.map(crate::backend::human_bytes)),
        max: f.get("maxmemory").and_then(|s| s.parse().ok()),
        policy: f.get("maxmemory_policy").map(|s| (*s).to_owned()),
        nodes: Vec::new(),
    }
}

impl RedisBackend {
    /// Asks every node of the cluster about itself (concurrently, each bounded by the
    /// guard), and adds it up: server facts with the node list and any problem, and memory.
    async fn cluster_facts(
        &self,
        cluster: &Cluster,
    ) -> Result<(ServerFacts, MemoryFacts), CacheError> {
        let lines = self.guard.run(cluster.nodes()).await?;
        self.listen_on(cluster, &lines);
        let problem = self
            .guard
            .run(async { Ok(cluster.problem(&lines).await) })
            .await?;
        let survey = lines.iter().map(|line| async move {
            let started = Instant::now();
            let mut pipe = redis::pipe();
            pipe.cmd("INFO").arg("server");
            pipe.cmd("INFO").arg("memory");
            pipe.cmd("INFO").arg("clients");
            pipe.cmd("DBSIZE");
            let answer = self
                .guard
                .run(async {
                    let mut conn = cluster.node_connection(&line.addr).await?;
                    pipe.query_async::<(String, String, String, u64)>(&mut conn)
                        .await
                        .map_err(|e| self.classifier.classify(&e))
                })
                .await;
            (line, answer, started.elapsed())
        });
        let answers = futures_util::future::join_all(survey).await;
        let mut server = ServerFacts {
            mode: Some("cluster".to_owned()),
            problem,
            ..ServerFacts::default()
        };
        let mut memory = MemoryFacts::default();
        let mut max_total = Some(0u64);
        for (line, answer, elapsed) in answers {
            let mut node = NodeFacts {
                address: line.addr.to_string(),
                role: if line.primary { "primary" } else { "replica" },
                status: if line.failing {
                    "failing".to_owned()
                } else {
                    "ok".to_owned()
                },
                slots: line.slots,
                ..NodeFacts::default()
            };
            match answer {
                Ok((info_server, info_memory, info_clients, keys)) => {
                    let s = server_facts_of(&parse_info(&info_server));
                    let m = memory_facts_of(&parse_info(&info_memory));
                    let c = parse_info(&info_clients);
                    node.version.clone_from(&s.version);
                    node.latency_ms = Some(elapsed.as_secs_f64() * 1000.0);
                    node.used_memory = m.used;
                    node.maxmemory = m.max;
                    node.keys = Some(keys);
                    if server.version.is_none() {
                        server.version = s.version;
                    }
                    if line.primary {
                        server.uptime_secs = match (server.uptime_secs, s.uptime_secs) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        memory.used = Some(memory.used.unwrap_or(0) + m.used.unwrap_or(0));
                        // The limit of the whole: the sum of the primaries', unless one has none.
                        max_total = match (max_total, m.max) {
                            (Some(t), Some(n)) if n > 0 => Some(t + n),
                            _ => None,
                        };
                        if memory.policy.is_none() {
                            memory.policy = m.policy;
                        }
                    }
                    let add = |total: Option<u64>, field: &str| {
                        c.get(field)
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(|n| total.unwrap_or(0) + n)
                            .or(total)
                    };
                    server.clients_connected = add(server.clients_connected, "connected_clients");
                    server.clients_blocked = add(server.clients_blocked, "blocked_clients");
                }
                Err(e) => {
                    node.status = format!("unreachable: {e}");
                    if line.primary {
                        max_total = None;
                    }
                }
            }
            server.nodes.push(node);
        }
        memory.max = max_total.or(Some(0));
        memory.used_human = memory.used.map(crate::backend::human_bytes);
        memory.nodes = server.nodes.clone();
        Ok((server, memory))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc serves allocations up to 1032 bytes from its per-thread cache; a larger box
    /// takes its slow path, a few hundred instructions a request.
    const GLIBC_FAST: usize = 1032;

    #[test]
    fn a_read_and_a_write_fit_glibcs_thread_cache() {
        let config = crate::config::CacheConfig::builder()
            .url("redis://127.0.0.1:1")
            .build()
            .unwrap();
        let crate::config::BackendConfig::Redis(redis) = &config.backend else {
            panic!("a redis:// URL configures Redis");
        };
        let b = RedisBackend::new(redis, "p", false).unwrap();
        // The futures `dispatch_async!` boxes on every read and write.
        let get = std::mem::size_of_val(&b.get("k"));
        assert!(get <= GLIBC_FAST, "a GET's future is {get} bytes");
        let write = Write {
            key: "k",
            value: b"v",
            ttl: None,
            index: None,
            tags: &[],
        };
        let set = std::mem::size_of_val(&b.set(write));
        assert!(set <= GLIBC_FAST, "a SET's future is {set} bytes");
    }
}
