//! The connection pool of a standalone Redis: a bounded set of auto-reconnecting
//! multiplexed connections ("lanes").
//!
//! Why lanes: one multiplexed connection answers in order, so a 32 MiB value in flight
//! stalls every small request queued behind it. Each request takes the least-loaded lane
//! that is not stalled (requests in flight, no completion for a few round trips); when the
//! best lane is stalled or very busy and fewer than `REDIS_CONNECTION_POOL_MAX_SIZE` exist,
//! another opens in the background. One lane pipelines small requests best, so lanes are
//! not added merely because requests overlap. Each lane is a bare `MultiplexedConnection`:
//! a request that finds its connection gone (the server restarted, the socket was reset)
//! retires the lane, and the next request opens a fresh one. (A `ConnectionManager` does
//! the same in the background, at ~450 instructions per request for its indirection:
//! BENCHMARKS.md.)

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

use super::errors::Classifier;
use crate::backend::PoolStats;
use crate::error::CacheError;

/// A lane with requests in flight and no completion for this long is stalled (e.g. a
/// large value is streaming through it): new requests avoid it. The bound grows with the
/// observed round trip (`STALL_RTTS` times its moving average), so a distant server
/// (Redis Cloud, several ms away) is not mistaken for a stalled one.
const STALL_AFTER: Duration = Duration::from_millis(2);
const STALL_RTTS: u64 = 8;
/// A lane this busy gets a sibling even when it makes progress.
const GROW_AT_IN_FLIGHT: usize = 128;
/// With TLS on, a connect still running after this long checks whether the port serves
/// plain Redis (which never answers a ClientHello: the handshake would only time out). A
/// handshake with a TLS server takes a few round trips, well below this even from far
/// away; a TLS server that gets the check meanwhile just refuses one more connection.
const PLAIN_CHECK_AFTER: Duration = Duration::from_millis(250);

pub(super) struct Lane {
    pub(super) conn: MultiplexedConnection,
    /// Set when a request found the connection gone: the lane is then retired.
    broken: AtomicBool,
    in_flight: AtomicUsize,
    /// Microseconds since the pool's epoch of the last completion (or start from idle).
    progress_us: AtomicU64,
    /// Cleared when the runtime that drives this connection shuts down (a test's runtime,
    /// say, while the cache is a `static` used by the next test): the lane is then dead.
    runtime_alive: Arc<AtomicBool>,
    /// Dropping the lane ends its watcher task.
    _watcher: tokio::sync::oneshot::Sender<()>,
}

/// Clears its flag when dropped: by a task that only waits, so when its runtime shuts down.
struct RuntimeAlive(Arc<AtomicBool>);

impl Drop for RuntimeAlive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Lane {
    fn alive(&self) -> bool {
        self.runtime_alive.load(Ordering::Acquire) && !self.broken.load(Ordering::Relaxed)
    }

    /// Notes a request's error: one that says the connection is gone (closed, reset, a
    /// restarted server; not a timeout or a server's error reply) retires the lane, so the
    /// next request connects afresh.
    pub(super) fn failed(&self, e: &redis::RedisError) {
        if e.is_unrecoverable_error() && !self.broken.swap(true, Ordering::Relaxed) {
            tracing::debug!(target: "cache_runtime::connection", error = %e, "connection lost: the next request opens another");
        }
    }

    fn stalled(&self, now_us: u64, stall_us: u64) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
            && now_us.saturating_sub(self.progress_us.load(Ordering::Relaxed)) > stall_us
    }
}

/// Counts a request on a lane however it ends (also on cancel), recording progress and
/// the round trip.
pub(super) struct InFlight<'a> {
    lane: &'a Lane,
    pool: &'a Pool,
    started_us: u64,
}

impl<'a> InFlight<'a> {
    pub(super) fn start(pool: &'a Pool, lane: &'a Lane) -> Self {
        let now = micros(pool.epoch);
        if lane.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            lane.progress_us.store(now, Ordering::Relaxed);
        }
        Self {
            lane,
            pool,
            started_us: now,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let now = micros(self.pool.epoch);
        self.lane.progress_us.store(now, Ordering::Relaxed);
        self.lane.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Moving average (1/8 weight); a lost race between threads only loses a sample.
        let sample = now.saturating_sub(self.started_us);
        let avg = self.pool.rtt_us.load(Ordering::Relaxed);
        let next = avg - avg / 8 + sample / 8;
        self.pool.rtt_us.store(next, Ordering::Relaxed);
    }
}

fn micros(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

pub(super) struct Pool {
    client: Client,
    classifier: Classifier,
    max_size: usize,
    connect_timeout: Duration,
    /// Read on every request, written when a lane opens: copy-on-write.
    lanes: ArcSwap<Vec<Arc<Lane>>>,
    /// A connect (first or extra lane) runs in the background.
    opening: AtomicBool,
    /// Wakes callers waiting for a connect in progress (success or failure).
    connect_done: tokio::sync::Notify,
    epoch: Instant,
    /// Moving average of request durations, in microseconds.
    rtt_us: AtomicU64,
    /// The last connect found plain Redis on this TLS port: the next one checks that
    /// first, so the breaker's probes pay a round trip, not [`PLAIN_CHECK_AFTER`].
    plain_port: AtomicBool,
}

impl Pool {
    pub(super) fn new(
        client: Client,
        classifier: Classifier,
        max_size: usize,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            client,
            classifier,
            max_size,
            connect_timeout,
            lanes: ArcSwap::from_pointee(Vec::new()),
            opening: AtomicBool::new(false),
            connect_done: tokio::sync::Notify::new(),
            epoch: Instant::now(),
            rtt_us: AtomicU64::new(0),
            plain_port: AtomicBool::new(false),
        }
    }

    /// The driver's client of the lanes (credentials, TLS), for connections of their own.
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn stats(&self) -> PoolStats {
        let lanes = self.lanes.load();
        let busy = lanes
            .iter()
            .filter(|l| l.in_flight.load(Ordering::Relaxed) > 0)
            .count();
        PoolStats {
            max_connections: self.max_size,
            created_connections: lanes.len(),
            available_connections: self.max_size.saturating_sub(busy),
        }
    }

    /// Closes every lane (the server turned out to be a cluster node).
    pub(super) fn close(&self) {
        self.lanes.store(Arc::new(Vec::new()));
    }

    /// Whether any request is in flight (then a read may share another's round trip).
    pub(super) fn busy(&self) -> bool {
        self.lanes
            .load()
            .iter()
            .any(|l| l.in_flight.load(Ordering::Relaxed) > 0)
    }

    fn connection_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            // Requests are bounded once, by the request guard (one timer per request, and it
            // also covers waiting for a connection).
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.connect_timeout))
    }

    /// Resolves with a TLS error if the port turns out to serve plain Redis (see
    /// `PLAIN_CHECK_AFTER`); never resolves otherwise, or without TLS.
    async fn plain_port_check(&self) -> CacheError {
        if self.classifier.tls() {
            if !self.plain_port.load(Ordering::Acquire) {
                tokio::time::sleep(PLAIN_CHECK_AFTER.min(self.connect_timeout / 2)).await;
            }
            let found = self.classifier.plain_redis_on_tls_port().await;
            self.plain_port.store(found.is_some(), Ordering::Release);
            if let Some(e) = found {
                return e;
            }
        }
        std::future::pending().await
    }

    async fn open_lane(&self) -> Result<Arc<Lane>, CacheError> {
        let config = self.connection_config();
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        // The driver bounds the TCP connect; this bounds the whole, TLS and AUTH included.
        let connect = tokio::time::timeout(self.connect_timeout, connect);
        let conn = tokio::select! {
            connected = connect => match connected {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(self.classifier.classify(&e)),
                Err(_) => {
                    return Err(self
                        .classifier
                        .connect_timed_out(self.connect_timeout)
                        .await)
                }
            },
            plain = self.plain_port_check() => return Err(plain),
        };
        let runtime_alive = Arc::new(AtomicBool::new(true));
        let watch = RuntimeAlive(Arc::clone(&runtime_alive));
        let (watcher, lane_dropped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _watch = watch;
            let _ = lane_dropped.await;
        });
        let lane = Arc::new(Lane {
            conn,
            broken: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            progress_us: AtomicU64::new(micros(self.epoch)),
            runtime_alive,
            _watcher: watcher,
        });
        let lanes = self.lanes.rcu(|lanes| {
            let mut next = Vec::clone(lanes);
            next.push(Arc::clone(&lane));
            next
        });
        tracing::debug!(
            target: "cache_runtime::connection",
            endpoint = %self.classifier.endpoint(),
            connections = lanes.len() + 1,
            "opened connection"
        );
        Ok(lane)
    }

    /// Opens a lane in a spawned task, so a caller's timeout cannot cancel the connect
    /// half-way. At most one connect runs at a time; `None` when one is running already.
    fn spawn_open(
        self: &Arc<Self>,
    ) -> Option<tokio::task::JoinHandle<Result<Arc<Lane>, CacheError>>> {
        if self.opening.swap(true, Ordering::AcqRel) {
            return None;
        }
        // Cleared however the connect ends: completion, error, or the task being dropped
        // with its runtime.
        struct Opening(Arc<Pool>);
        impl Drop for Opening {
            fn drop(&mut self) {
                self.0.opening.store(false, Ordering::Release);
                self.0.connect_done.notify_waiters();
            }
        }
        let opening = Opening(Arc::clone(self));
        Some(tokio::spawn(async move {
            let result = opening.0.open_lane().await;
            drop(opening);
            result
        }))
    }

    /// The first lane: opened on first use, so an application starts while Redis is down.
    /// Callers arriving while it connects wait for that connect (bounded by the connect
    /// timeout; requests are bounded by the socket timeout on top).
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
            let _ = tokio::time::timeout(self.connect_timeout, notified).await;
            return self
                .pick()
                .map(|(l, _)| l)
                .ok_or_else(|| CacheError::Unreachable {
                    endpoint: self.classifier.endpoint().to_owned(),
                    detail: "the connection attempt in progress did not succeed".to_owned(),
                });
        };
        match task.await {
            Ok(Ok(lane)) => Ok(lane),
            // A lasting fault (refused credentials, TLS) is reported once, by the request
            // guard, when it opens the breaker: not again by every probe's connect.
            Ok(Err(e)) if e.is_lasting() => {
                tracing::debug!(
                    target: "cache_runtime::connection",
                    endpoint = %self.classifier.endpoint(),
                    error = %e,
                    "cannot connect to Redis"
                );
                Err(e)
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    target: "cache_runtime::connection",
                    endpoint = %self.classifier.endpoint(),
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
    pub(super) async fn connect(self: &Arc<Self>) -> Result<(), CacheError> {
        if self.pick().is_some() {
            return Ok(());
        }
        self.first_lane().await.map(|_| ())
    }

    /// How long a request may go without a completion before it counts as stalled.
    fn stall_us(&self) -> u64 {
        (STALL_RTTS * self.rtt_us.load(Ordering::Relaxed))
            .max(u64::try_from(STALL_AFTER.as_micros()).unwrap_or(u64::MAX))
    }

    /// [`stall_us`](Self::stall_us) as a duration: how long a read batch waits for the
    /// read in flight before it goes anyway.
    pub(super) fn stall_after(&self) -> Duration {
        Duration::from_micros(self.stall_us())
    }

    /// The least-loaded lane that is not stalled (any lane if all are), and whether the
    /// pool should grow.
    fn pick(&self) -> Option<(Arc<Lane>, bool)> {
        if self.classifier.take_credentials_refused() && !self.lanes.load().is_empty() {
            // Their connects failed authentication for good (see `Classifier`): fresh
            // connections authenticate again, so the breaker's probe can find out when the
            // password works.
            self.close();
            tracing::debug!(target: "cache_runtime::connection", "credentials refused: replacing the connections");
        }
        let mut lanes = self.lanes.load();
        if lanes.iter().any(|l| !l.alive()) {
            self.lanes.rcu(|lanes| {
                lanes
                    .iter()
                    .filter(|l| l.alive())
                    .cloned()
                    .collect::<Vec<_>>()
            });
            tracing::debug!(target: "cache_runtime::connection", "dropped connections that were lost or whose runtime shut down");
            lanes = self.lanes.load();
        }
        if let [only] = lanes.as_slice() {
            // The common case: skip the clock unless the lane is busy.
            if only.in_flight.load(Ordering::Relaxed) == 0 {
                return Some((Arc::clone(only), false));
            }
        }
        let now = micros(self.epoch);
        let stall_us = self.stall_us();
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

    /// A lane for one request, opening the first one if needed.
    /// A lane at once when one is open (growing the pool in the background if asked),
    /// without the future of [`lane`](Self::lane), which may connect.
    pub(super) fn pick_now(self: &Arc<Self>) -> Option<Arc<Lane>> {
        let (lane, grow) = self.pick()?;
        if grow && self.lanes.load().len() < self.max_size {
            // Detached: the lane registers itself; a failure only means fewer lanes.
            drop(self.spawn_open());
        }
        Some(lane)
    }

    pub(super) async fn lane(self: &Arc<Self>) -> Result<Arc<Lane>, CacheError> {
        match self.pick() {
            Some((lane, grow)) => {
                if grow && self.lanes.load().len() < self.max_size {
                    // Detached: the lane registers itself; a failure only means fewer lanes.
                    drop(self.spawn_open());
                }
                Ok(lane)
            }
            None => self.first_lane().await,
        }
    }
}
