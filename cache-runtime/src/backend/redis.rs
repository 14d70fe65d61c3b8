//! Redis standalone over TCP or TLS (rustls), through a bounded set of auto-reconnecting
//! multiplexed connections ("lanes").
//!
//! Why lanes: one multiplexed connection answers in order, so a 32 MiB value in flight
//! stalls every small request queued behind it. Each request takes the least-loaded lane
//! that is not stalled (requests in flight, no completion for 2 ms); when the best lane is
//! stalled or very busy and fewer than `REDIS_CONNECTION_POOL_MAX_SIZE` exist, another
//! opens in the background. One lane pipelines small requests best, so lanes are not
//! added merely because requests overlap. Each lane is
//! a `ConnectionManager`, which reconnects after a server restart (a bare
//! `MultiplexedConnection` never does).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, Value};

use super::breaker::{Breaker, Permit};
use super::KeyTtl;
use crate::config::{CertReqs, RedisConfig};
use crate::error::CacheError;

/// Keys per SCAN / ZSCAN page and per UNLINK batch.
const BATCH: usize = 500;

/// A lane with requests in flight and no completion for this long is stalled (e.g. a
/// large value is streaming through it): new requests avoid it. The bound grows with the
/// observed round trip (`STALL_RTTS` times its moving average), so a distant server
/// (Redis Cloud, several ms away) is not mistaken for a stalled one.
const STALL_AFTER: Duration = Duration::from_millis(2);
const STALL_RTTS: u64 = 8;
/// A lane this busy gets a sibling even when it makes progress.
const GROW_AT_IN_FLIGHT: usize = 128;

struct Lane {
    conn: ConnectionManager,
    in_flight: AtomicUsize,
    /// Microseconds since the pool's epoch of the last completion (or start from idle).
    progress_us: AtomicU64,
}

impl Lane {
    fn stalled(&self, now_us: u64, stall_us: u64) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
            && now_us.saturating_sub(self.progress_us.load(Ordering::Relaxed)) > stall_us
    }
}

/// Counts a request on a lane however it ends (also on cancel), recording progress and
/// the round trip.
struct InFlight<'a> {
    lane: &'a Lane,
    epoch: Instant,
    started_us: u64,
    rtt_us: &'a AtomicU64,
}

impl<'a> InFlight<'a> {
    fn start(lane: &'a Lane, epoch: Instant, rtt_us: &'a AtomicU64) -> Self {
        let now = micros(epoch);
        if lane.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            lane.progress_us.store(now, Ordering::Relaxed);
        }
        Self {
            lane,
            epoch,
            started_us: now,
            rtt_us,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let now = micros(self.epoch);
        self.lane.progress_us.store(now, Ordering::Relaxed);
        self.lane.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Moving average (1/8 weight); a lost race between threads only loses a sample.
        let sample = now.saturating_sub(self.started_us);
        let avg = self.rtt_us.load(Ordering::Relaxed);
        let next = avg - avg / 8 + sample / 8;
        self.rtt_us.store(next, Ordering::Relaxed);
    }
}

fn micros(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy)]
enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

/// Result of [`RedisBackend::count_namespaces`].
#[derive(Default)]
pub(crate) struct NamespaceCount {
    pub(crate) by_namespace: std::collections::HashMap<String, u64>,
    pub(crate) scanned: u64,
    pub(crate) complete: bool,
}

/// Pool statistics for the health report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// `REDIS_CONNECTION_POOL_MAX_SIZE`.
    pub max_connections: usize,
    /// Connections opened so far.
    pub created_connections: usize,
    /// Connections that could take a request without sharing it: `max - busy`.
    pub available_connections: usize,
}

pub(crate) struct RedisBackend {
    client: Client,
    config: Arc<RedisConfig>,
    /// Read on every request, written when a lane opens: copy-on-write.
    lanes: ArcSwap<Vec<Arc<Lane>>>,
    /// A connect (first or extra lane) runs in the background.
    opening: AtomicBool,
    /// Wakes callers waiting for a connect in progress (success or failure).
    connect_done: tokio::sync::Notify,
    breaker: Breaker,
    /// Where stores, deletes and clears are announced when an L1 is enabled.
    invalidation_channel: Option<String>,
    epoch: Instant,
    /// The last connection fault, for health reports while the breaker hides it.
    last_fault: std::sync::Mutex<Option<String>>,
    /// Moving average of request durations, in microseconds.
    rtt_us: AtomicU64,
}

impl RedisBackend {
    pub(crate) fn new(
        config: &RedisConfig,
        invalidation_channel: Option<String>,
    ) -> Result<Self, CacheError> {
        install_crypto_provider();
        let client = build_client(config)?;
        if let Some(tls) = &config.tls {
            match tls.cert_reqs {
                CertReqs::Required => {}
                CertReqs::Optional => tracing::warn!(
                    target: "cache_runtime::connection",
                    endpoint = %config.endpoint(),
                    "REDIS_SSL_CERT_REQS=optional: the certificate chain is verified but the host name is NOT; use required in production"
                ),
                CertReqs::None => tracing::warn!(
                    target: "cache_runtime::connection",
                    endpoint = %config.endpoint(),
                    "REDIS_SSL_CERT_REQS=none: TLS certificates are NOT verified, anyone on the path can impersonate the server; never use this in production"
                ),
            }
        }
        Ok(Self {
            client,
            config: Arc::new(config.clone()),
            lanes: ArcSwap::from_pointee(Vec::new()),
            opening: AtomicBool::new(false),
            connect_done: tokio::sync::Notify::new(),
            breaker: Breaker::default(),
            invalidation_channel,
            epoch: Instant::now(),
            last_fault: std::sync::Mutex::new(None),
            rtt_us: AtomicU64::new(0),
        })
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Appends a PUBLISH of `message` to `pipe` when an L1 is enabled.
    fn announce(&self, pipe: &mut redis::Pipeline, message: impl FnOnce() -> Vec<u8>) {
        if let Some(channel) = &self.invalidation_channel {
            pipe.cmd("PUBLISH").arg(channel).arg(message()).ignore();
        }
    }

    pub(crate) fn pool_stats(&self) -> PoolStats {
        let lanes = self.lanes.load();
        let busy = lanes
            .iter()
            .filter(|l| l.in_flight.load(Ordering::Relaxed) > 0)
            .count();
        PoolStats {
            max_connections: self.config.pool_max_size,
            created_connections: lanes.len(),
            available_connections: self.config.pool_max_size.saturating_sub(busy),
        }
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            // Requests are bounded once, in `guarded` (one timer per request, and it also
            // covers waiting for a connection).
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
    }

    async fn open_lane(&self) -> Result<Arc<Lane>, CacheError> {
        let connect =
            ConnectionManager::new_with_config(self.client.clone(), self.manager_config());
        // The driver bounds each attempt; this bounds the whole, retries included.
        let conn = match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(map_error(&e, &self.config)),
            Err(_) => return Err(self.diagnose_connect_timeout().await),
        };
        let lane = Arc::new(Lane {
            conn,
            in_flight: AtomicUsize::new(0),
            progress_us: AtomicU64::new(micros(self.epoch)),
        });
        let lanes = self.lanes.rcu(|lanes| {
            let mut next = Vec::clone(lanes);
            next.push(Arc::clone(&lane));
            next
        });
        tracing::debug!(
            target: "cache_runtime::connection",
            endpoint = %self.config.endpoint(),
            connections = lanes.len() + 1,
            "opened connection"
        );
        Ok(lane)
    }

    /// A connect that timed out: with TLS on, a server that accepts TCP but never answers
    /// the handshake is most likely plain Redis on this port.
    async fn diagnose_connect_timeout(&self) -> CacheError {
        let timeout = self.config.connect_timeout;
        if self.config.tls.is_some() {
            let probe =
                tokio::net::TcpStream::connect((self.config.host.as_str(), self.config.port));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                return CacheError::Tls {
                    endpoint: self.config.endpoint(),
                    detail: format!(
                        "TCP connected but the TLS handshake got no answer within {timeout:?}: the port probably serves plain Redis (use redis://, or the TLS port)"
                    ),
                };
            }
        }
        CacheError::Unreachable {
            endpoint: self.config.endpoint(),
            detail: format!("no connection within REDIS_SOCKET_CONNECT_TIMEOUT ({timeout:?})"),
        }
    }

    /// Opens a lane in a spawned task, so a caller's timeout cannot cancel the connect
    /// half-way. At most one connect runs at a time; `false` when one is running already.
    fn spawn_open(
        self: &Arc<Self>,
    ) -> Option<tokio::task::JoinHandle<Result<Arc<Lane>, CacheError>>> {
        if self.opening.swap(true, Ordering::AcqRel) {
            return None;
        }
        let this = Arc::clone(self);
        Some(tokio::spawn(async move {
            let result = this.open_lane().await;
            this.opening.store(false, Ordering::Release);
            this.connect_done.notify_waiters();
            result
        }))
    }

    /// The first lane: opened on first use, so an application starts while Redis is down.
    /// Callers arriving while it connects wait for that connect (bounded by the connect
    /// timeout; decorated calls are bounded by the socket timeout on top).
    async fn first_lane(self: &Arc<Self>) -> Result<Arc<Lane>, CacheError> {
        let notified = self.connect_done.notified();
        tokio::pin!(notified);
        // Registered before checking, so a connect finishing in between still wakes us.
        notified.as_mut().enable();
        if let Some((lane, _)) = self.pick() {
            return Ok(lane);
        }
        let Some(task) = self.spawn_open() else {
            if let Some((lane, _)) = self.pick() {
                return Ok(lane);
            }
            let _ = tokio::time::timeout(self.config.connect_timeout, notified).await;
            return self
                .pick()
                .map(|(l, _)| l)
                .ok_or_else(|| CacheError::Unreachable {
                    endpoint: self.config.endpoint(),
                    detail: "the connection attempt in progress did not succeed".to_owned(),
                });
        };
        match task.await {
            Ok(Ok(lane)) => Ok(lane),
            Ok(Err(e)) => {
                tracing::warn!(
                    target: "cache_runtime::connection",
                    endpoint = %self.config.endpoint(),
                    error = %e,
                    "cannot connect to Redis; calls run without the cache until it is reachable"
                );
                Err(e)
            }
            Err(_) => Err(CacheError::Unavailable),
        }
    }

    /// Waits for a connection (bounded by the connect timeout, not the socket timeout), so
    /// that a failure reports why it failed: refused, TLS, authentication.
    pub(crate) async fn connect(self: &Arc<Self>) -> Result<(), CacheError> {
        if self.pick().is_some() {
            return Ok(());
        }
        self.first_lane().await.map(|_| ())
    }

    /// Whether no request is in flight on any lane (then there is nothing to coalesce with).
    pub(crate) fn idle(&self) -> bool {
        self.lanes
            .load()
            .iter()
            .all(|l| l.in_flight.load(Ordering::Relaxed) == 0)
    }

    /// The least-loaded lane that is not stalled (any lane if all are), and whether the
    /// pool should grow.
    fn pick(&self) -> Option<(Arc<Lane>, bool)> {
        let lanes = self.lanes.load();
        if let [only] = lanes.as_slice() {
            // The common case: skip the clock unless the lane is busy.
            if only.in_flight.load(Ordering::Relaxed) == 0 {
                return Some((Arc::clone(only), false));
            }
        }
        let now = micros(self.epoch);
        let stall_us =
            (STALL_RTTS * self.rtt_us.load(Ordering::Relaxed)).max(STALL_AFTER.as_micros() as u64);
        let best = lanes.iter().min_by_key(|l| {
            (
                l.stalled(now, stall_us),
                l.in_flight.load(Ordering::Relaxed),
            )
        })?;
        let grow = best.stalled(now, stall_us)
            || best.in_flight.load(Ordering::Relaxed) >= GROW_AT_IN_FLIGHT;
        Some((Arc::clone(best), grow))
    }

    fn grow_in_background(self: &Arc<Self>) {
        let len = self.lanes.load().len();
        if len < self.config.pool_max_size {
            // Detached: the lane registers itself; a failure only means fewer lanes.
            drop(self.spawn_open());
        }
    }

    async fn lane(self: &Arc<Self>) -> Result<Arc<Lane>, CacheError> {
        match self.pick() {
            Some((lane, grow)) => {
                if grow {
                    self.grow_in_background();
                }
                Ok(lane)
            }
            None => self.first_lane().await,
        }
    }

    /// The last connection fault seen (message only; never credentials).
    pub(crate) fn last_fault(&self) -> Option<String> {
        self.last_fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the circuit breaker currently bypasses Redis.
    pub(crate) fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Runs a request under the circuit breaker: connection faults count, server replies
    /// (even errors like WRONGTYPE) prove the connection works.
    async fn guarded<T, F>(self: &Arc<Self>, request: F) -> Result<T, CacheError>
    where
        F: std::future::Future<Output = Result<T, CacheError>>,
    {
        if crate::backend::faults::should_fail() {
            return Err(CacheError::Redis(
                "injected fault (fault injection is on)".to_owned(),
            ));
        }
        let Some(permit) = self.breaker.permit() else {
            return Err(CacheError::Unavailable);
        };
        // Releases a probe if the caller's timeout drops us mid-request.
        struct Abandon<'a>(&'a Breaker, Option<Permit>);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                if let Some(p) = self.1.take() {
                    self.0.abandon(&p);
                }
            }
        }
        let mut guard = Abandon(&self.breaker, Some(permit));
        let result = match tokio::time::timeout(self.config.socket_timeout, request).await {
            Ok(result) => result,
            Err(_) => Err(CacheError::Timeout(self.config.socket_timeout)),
        };
        if let Some(permit) = guard.1.take() {
            match &result {
                Err(e) if e.is_connection_fault() && !matches!(e, CacheError::Unavailable) => {
                    self.breaker.failure(&permit);
                    *self
                        .last_fault
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                }
                Err(CacheError::Unavailable) => self.breaker.abandon(&permit),
                _ => self.breaker.success(&permit),
            }
        }
        result
    }

    /// Runs one command or pipeline on the least-loaded lane, under the breaker and timeout.
    async fn send<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        request: Request<'_>,
    ) -> Result<T, CacheError> {
        self.guarded(async {
            let lane = self.lane().await?;
            let _in_flight = InFlight::start(&lane, self.epoch, &self.rtt_us);
            let mut conn = lane.conn.clone();
            match request {
                Request::Cmd(cmd) => cmd.query_async(&mut conn).await,
                Request::Pipe(pipe) => pipe.query_async(&mut conn).await,
            }
            .map_err(|e| map_error(&e, &self.config))
        })
        .await
    }

    async fn query<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        cmd: &redis::Cmd,
    ) -> Result<T, CacheError> {
        self.send(Request::Cmd(cmd)).await
    }

    async fn query_pipe<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        pipe: &redis::Pipeline,
    ) -> Result<T, CacheError> {
        self.send(Request::Pipe(pipe)).await
    }

    pub(crate) async fn get(self: &Arc<Self>, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    /// GET and PTTL in one round trip (for filling an L1).
    pub(crate) async fn get_with_ttl(
        self: &Arc<Self>,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, i64), CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        self.query_pipe(&pipe).await
    }

    pub(crate) async fn set(
        self: &Arc<Self>,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        index: Option<&str>,
    ) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        let set = pipe.cmd("SET").arg(key).arg(value);
        if let Some(ttl) = ttl {
            set.arg("PX").arg(duration_ms(ttl));
        }
        set.ignore();
        if let Some(index) = index {
            // A sorted set scored by expiry (ms since the epoch), so members whose keys have
            // expired are pruned on the next write instead of piling up with the user's
            // history. Pruning lags by PRUNE_GRACE so that clock skew between application
            // servers can never drop a member whose key is still alive.
            let now = unix_ms();
            let score = ttl.map_or(f64::INFINITY, |t| (now + duration_ms(t)) as f64);
            pipe.cmd("ZADD").arg(index).arg(score).arg(key).ignore();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(index)
                .arg("-inf")
                .arg(format!("({}", now.saturating_sub(PRUNE_GRACE_MS)))
                .ignore();
            if let Some(ttl) = ttl {
                // The index lives as long as its longest-lived key (NX: first set, GT: longer).
                let ms = duration_ms(ttl);
                pipe.cmd("PEXPIRE").arg(index).arg(ms).arg("NX").ignore();
                pipe.cmd("PEXPIRE").arg(index).arg(ms).arg("GT").ignore();
            } else {
                pipe.cmd("PERSIST").arg(index).ignore();
            }
        }
        self.announce(&mut pipe, || crate::l1::keys_message([key]));
        self.query_pipe::<()>(&pipe).await
    }

    pub(crate) async fn delete(self: &Arc<Self>, key: &str) -> Result<bool, CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK").arg(key);
        self.announce(&mut pipe, || crate::l1::keys_message([key]));
        let (n,): (u64,) = self.query_pipe(&pipe).await?;
        Ok(n > 0)
    }

    pub(crate) async fn exists(self: &Arc<Self>, key: &str) -> Result<bool, CacheError> {
        let n: u64 = self.query(redis::cmd("EXISTS").arg(key)).await?;
        Ok(n > 0)
    }

    pub(crate) async fn ttl(self: &Arc<Self>, key: &str) -> Result<KeyTtl, CacheError> {
        let ms: i64 = self.query(redis::cmd("PTTL").arg(key)).await?;
        Ok(match ms {
            -2 => KeyTtl::Missing,
            -1 => KeyTtl::Persistent,
            ms => KeyTtl::ExpiresIn(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        })
    }

    pub(crate) async fn incr(self: &Arc<Self>, key: &str, amount: i64) -> Result<i64, CacheError> {
        self.query(redis::cmd("INCRBY").arg(key).arg(amount))
            .await
            .map_err(|e| match e {
                CacheError::Redis(detail)
                    if detail.contains("not an integer") || detail.contains("overflow") =>
                {
                    CacheError::NotACounter(detail)
                }
                CacheError::Decode { detail, .. } => CacheError::NotACounter(detail),
                other => other,
            })
    }

    /// SCAN + UNLINK in batches (never KEYS, never FLUSHDB); returns how many were deleted.
    pub(crate) async fn clear_prefix(self: &Arc<Self>, prefix: &str) -> Result<u64, CacheError> {
        let pattern = format!("{prefix}*");
        let mut deleted = 0u64;
        let scanned = async {
            let mut cursor: u64 = 0;
            loop {
                // Bytes: a non-UTF-8 key under our prefix must not stop the clear.
                let (next, keys): (u64, Vec<Vec<u8>>) = self
                    .query(
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(BATCH),
                    )
                    .await?;
                if !keys.is_empty() {
                    let n: u64 = self.query(redis::cmd("UNLINK").arg(&keys)).await?;
                    deleted += n;
                }
                if next == 0 {
                    return Ok::<_, CacheError>(());
                }
                cursor = next;
            }
        }
        .await;
        // Announced even when the clear stopped half-way: what was deleted is gone.
        if self.invalidation_channel.is_some() {
            let mut pipe = redis::pipe();
            self.announce(&mut pipe, || crate::l1::prefix_message(prefix));
            let announced = self.query_pipe::<()>(&pipe).await;
            scanned?;
            announced?;
        } else {
            scanned?;
        }
        Ok(deleted)
    }

    /// Deletes the keys listed in a user index (only those starting with `member_prefix`
    /// when given). Costs in proportion to that user's keys, whatever the database holds.
    pub(crate) async fn clear_index(
        self: &Arc<Self>,
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
                let mut pipe = redis::pipe();
                pipe.cmd("UNLINK").arg(&keys);
                pipe.cmd("ZREM").arg(index).arg(&keys).ignore();
                self.announce(&mut pipe, || {
                    crate::l1::keys_message(keys.iter().map(String::as_str))
                });
                let (n,): (u64,) = self.query_pipe(&pipe).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Counts our keys per namespace with one SCAN pass, stopping at `max_keys` examined or
    /// after `max_time`, whichever comes first.
    pub(crate) async fn count_namespaces(
        self: &Arc<Self>,
        prefix: &str,
        max_keys: u64,
        max_time: Duration,
    ) -> Result<NamespaceCount, CacheError> {
        let start = Instant::now();
        let mut count = NamespaceCount::default();
        let mut cursor: u64 = 0;
        loop {
            // Bytes, not String: one non-UTF-8 key elsewhere must not spoil the count.
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .query(redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000))
                .await?;
            count.scanned += keys.len() as u64;
            for key in keys.iter().filter_map(|k| std::str::from_utf8(k).ok()) {
                if let Some((ns, _)) = key.strip_prefix(prefix).and_then(|r| r.split_once(':')) {
                    if crate::namespace::is_valid(ns) {
                        *count.by_namespace.entry(ns.to_owned()).or_insert(0) += 1;
                    }
                }
            }
            if next == 0 {
                count.complete = true;
                return Ok(count);
            }
            if count.scanned >= max_keys || start.elapsed() >= max_time {
                return Ok(count);
            }
            cursor = next;
        }
    }

    /// Round trip of a PING.
    pub(crate) async fn ping(self: &Arc<Self>) -> Result<Duration, CacheError> {
        let start = Instant::now();
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(start.elapsed())
    }

    /// `INFO <section>` as text (health and stats).
    pub(crate) async fn info(self: &Arc<Self>, section: &str) -> Result<String, CacheError> {
        self.query(redis::cmd("INFO").arg(section)).await
    }

    /// Any command, for health and tools. Not for values.
    pub(crate) async fn raw(self: &Arc<Self>, cmd: &redis::Cmd) -> Result<Value, CacheError> {
        self.query(cmd).await
    }
}

/// Index members are pruned this long after their expiry (tolerates clock skew between
/// application servers writing the same user's index).
const PRUNE_GRACE_MS: u64 = 60_000;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// rustls needs a process-wide crypto provider; ring keeps the build free of cmake.
pub(crate) fn install_crypto_provider() {
    // Err means one is installed already (by us or by the application): keep it.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_file(var: &'static str, path: &std::path::Path) -> Result<Vec<u8>, CacheError> {
    std::fs::read(path).map_err(|e| {
        CacheError::Config(crate::config::ConfigError::Unreadable {
            var,
            path: path.to_owned(),
            reason: e.to_string(),
        })
    })
}

/// Keepalive and a TCP user timeout, so a silently dead connection (NAT timeout, failover)
/// errors out and is replaced instead of hanging until the kernel gives up.
fn tcp_settings(config: &RedisConfig) -> redis::io::tcp::TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(15))
        .with_interval(Duration::from_secs(5));
    redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(config.socket_timeout.max(Duration::from_secs(10)) * 3)
}

pub(crate) fn build_client(config: &RedisConfig) -> Result<Client, CacheError> {
    let mut redis_info = redis::RedisConnectionInfo::default().set_db(config.db);
    if let Some(user) = &config.username {
        redis_info = redis_info.set_username(user);
    }
    if let Some(password) = &config.password {
        redis_info = redis_info.set_password(password.expose());
    }
    let Some(tls) = &config.tls else {
        let info = ConnectionAddr::Tcp(config.host.clone(), config.port)
            .into_connection_info()
            .map_err(|e| map_error(&e, config))?
            .set_redis_settings(redis_info)
            .set_tcp_settings(tcp_settings(config));
        return Client::open(info).map_err(|e| map_error(&e, config));
    };
    let addr = ConnectionAddr::TcpTls {
        host: config.host.clone(),
        port: config.port,
        insecure: tls.cert_reqs == CertReqs::None,
        tls_params: None,
    };
    let info = addr
        .into_connection_info()
        .map_err(|e| map_error(&e, config))?
        .set_redis_settings(redis_info)
        .set_tcp_settings(tcp_settings(config));
    let client_tls = match (&tls.certfile, &tls.keyfile) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read_file("REDIS_SSL_CERTFILE", cert)?,
            client_key: read_file("REDIS_SSL_KEYFILE", key)?,
        }),
        _ => None,
    };
    let root_cert = tls
        .ca_certs
        .as_deref()
        .map(|p| read_file("REDIS_SSL_CA_CERTS", p))
        .transpose()?;
    if let (Some(pem), Some(path)) = (&root_cert, &tls.ca_certs) {
        use rustls::pki_types::pem::PemObject as _;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .filter(Result::is_ok)
            .count();
        if certs == 0 {
            return Err(CacheError::Config(crate::config::ConfigError::Invalid {
                var: "REDIS_SSL_CA_CERTS",
                value: path.display().to_string(),
                fix: "the file holds no PEM certificate (-----BEGIN CERTIFICATE-----); point it at the CA file, e.g. Redis Cloud's redis_ca.pem".to_owned(),
            }));
        }
    }
    let certs = redis::TlsCertificates {
        client_tls,
        root_cert,
    };
    let client = Client::build_with_tls(info, certs).map_err(|e| CacheError::Tls {
        endpoint: config.endpoint(),
        detail: format!("{e}; check that REDIS_SSL_CA_CERTS, REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE are PEM files"),
    })?;
    if tls.cert_reqs != CertReqs::Optional {
        return Ok(client);
    }
    // Optional: verify the chain, accept any host name.
    let info = client.get_connection_info().clone();
    let mut addr = info.addr().clone();
    addr.set_danger_accept_invalid_hostnames(true);
    Client::open(info.set_addr(addr)).map_err(|e| map_error(&e, config))
}

fn looks_like_tls(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "ssl",
        "handshake",
        "unknownissuer",
        "notvalidforname",
        "invalid peer",
    ]
    .iter()
    .any(|n| t.contains(n))
}

/// Turns a driver error into one that says what to do. Never includes the password: the
/// driver's messages do not carry it, and we add only host and port.
pub(crate) fn map_error(e: &RedisError, config: &RedisConfig) -> CacheError {
    let text = e.to_string();
    // Inside a pipeline, `code()` only knows the codes redis-rs knows; read each reply's.
    let server_codes: Vec<String> = e
        .clone()
        .into_server_errors()
        .map(|errs| errs.iter().map(|(_, se)| se.code().to_owned()).collect())
        .unwrap_or_default();
    let code = e
        .code()
        .map(str::to_owned)
        .or_else(|| {
            ["WRONGPASS", "NOAUTH", "NOPERM", "WRONGTYPE"]
                .into_iter()
                .find(|c| server_codes.iter().any(|s| s == c))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let code = code.as_str();
    if matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
        || e.kind() == ErrorKind::AuthenticationFailed
    {
        return CacheError::Auth { detail: text };
    }
    if code == "WRONGTYPE" {
        return CacheError::Decode {
            codec: "redis",
            detail: "the key holds a non-string Redis type".to_owned(),
        };
    }
    if e.is_timeout() {
        return CacheError::Timeout(config.socket_timeout);
    }
    if config.tls.is_some() && looks_like_tls(&text) {
        return CacheError::Tls {
            endpoint: config.endpoint(),
            detail: text,
        };
    }
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        let lower = text.to_ascii_lowercase();
        // A TLS-only port resets a plaintext client: the classic Redis Cloud mistake.
        let detail = if config.tls.is_none()
            && (lower.contains("reset")
                || lower.contains("closed")
                || lower.contains("broken pipe"))
        {
            format!("{text} (the server closed the connection: if it requires TLS, as Redis Cloud does, use a rediss:// URL)")
        } else {
            text
        };
        return CacheError::Unreachable {
            endpoint: config.endpoint(),
            detail,
        };
    }
    CacheError::Redis(text)
}
