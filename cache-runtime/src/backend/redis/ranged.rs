//! Large values read in ranges (standalone servers, `REDIS_READ_RANGE`).
//!
//! Redis is single-threaded and copies a whole reply into its output buffers before it
//! serves the next client: one GET of a 10 MB value holds it for 4-5 ms (SLOWLOG, this
//! machine), so every small request of every client waits behind each large GET, and a
//! few tasks fetching large values keep it that way. Keys seen to hold large values
//! (`batch.rs` remembers them) are therefore read as GETRANGEs of `REDIS_READ_RANGE` bytes,
//! one read at a time per process ([`STREAMS`]) on a connection of its own, with one range
//! in flight while other requests of this process are (two, [`DEPTH`], while none is):
//! Redis serves other clients between two ranges. A lone large read is then as fast as a
//! GET; concurrent ones take turns, which is the price (`REDIS_READ_RANGE=0` reads them
//! whole and at once).
//!
//! A value read in pieces must still be one value: the first round trip WATCHes the key,
//! and the last carries an empty MULTI/EXEC, which Redis aborts if anything wrote, deleted
//! or expired the key in between. Such a read (rare: a write during a large read) is read
//! again whole, never returned torn. WATCH is per connection, so a connection is held by
//! one read at a time; each is a bare multiplexed connection that never reconnects by itself
//! (a reconnect between WATCH and EXEC would lose the WATCH and hide a write): a fault
//! drops it and the next read opens another.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::PoisonError;
use std::time::Instant;

use futures_util::stream::{FuturesOrdered, StreamExt as _};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::errors::refuses_command;
use super::RedisBackend;
use crate::error::CacheError;

/// Ranged reads at once, each on its own connection. More stream large values faster and
/// stall others more: with 4 tasks fetching 10 MB values, 1 gave small hits a p99 of
/// 7-11x their p99 alone and 39-43 fetches, 2 gave 16-17x and 67-73 fetches, whole
/// reads 114-132x and 500-675 fetches (release, 2 cores; BENCHMARKS.md, row j).
const STREAMS: usize = 1;
/// Ranges in flight per read while no other request of this process is: the next is asked
/// before the last arrives, so a lone large read is as fast as a GET (0.77-0.84x of one,
/// for 10 MB), but Redis may copy two ranges back to back. While other requests are in
/// flight, one range at a time: with 4 tasks fetching 10 MB values, small hits' p99 was
/// 11-20x their p99 alone with two, 6.5-12x with one (release, 2 cores).
const DEPTH: usize = 2;
/// A read waiting for a stream reads whole after this many of the pool's stall bounds
/// without a range read (the stall bound is a few round trips; a range is one).
const STALLS: u32 = 4;

/// The commands of a ranged read (an ACL refusing one turns ranged reads off).
const RANGED_COMMANDS: [&str; 7] = [
    "unwatch", "watch", "strlen", "pttl", "getrange", "multi", "exec",
];

/// The ranged reader's state: its idle connections, each held by one read at a time.
pub(super) struct Ranged {
    /// A permit per stream, granted in arrival order.
    streams: tokio::sync::Semaphore,
    /// Connections not held by a read (at most [`STREAMS`]).
    idle: std::sync::Mutex<Vec<MultiplexedConnection>>,
    /// Ranges read so far: waiting reads see whether the holders move.
    progress: AtomicU64,
    /// The server refused a command of the ranged read (an ACL allowing GET only): large
    /// values are read whole from then on.
    refused: AtomicBool,
}

/// A value and its PTTL (`-1`: no expiry), read together.
pub(super) type WithTtl = (Vec<u8>, i64);

/// How a ranged read ended.
enum Outcome {
    Value(Option<WithTtl>),
    /// A write landed between the ranges (or the key changed length): read it whole.
    Changed,
}

impl Ranged {
    pub(super) fn new() -> Self {
        Self {
            streams: tokio::sync::Semaphore::new(STREAMS),
            idle: std::sync::Mutex::new(Vec::with_capacity(STREAMS)),
            refused: AtomicBool::new(false),
            progress: AtomicU64::new(0),
        }
    }
}

impl RedisBackend {
    /// Reads `key`, whose value was large, and its PTTL (the L1 keeps an entry no longer
    /// than the key lives), in ranges; whole when ranges are off or refused, when other
    /// large reads keep the stream without moving, or when a write raced the ranges.
    pub(super) async fn get_large(&self, key: &str) -> Result<Option<WithTtl>, CacheError> {
        let range = self.config.read_range;
        if range == 0 || self.ranged.refused.load(Ordering::Relaxed) {
            return self.get_whole(key).await;
        }
        let Some(_permit) = self.stream_turn().await else {
            return self.get_whole(key).await;
        };
        let idle = self
            .ranged
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let reused = idle.is_some();
        let mut held = idle;
        let read = self.read_ranges(&mut held, key, range).await;
        match read {
            Ok(outcome) => {
                if let Some(conn) = held {
                    self.ranged
                        .idle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(conn);
                }
                match outcome {
                    Outcome::Value(value) => Ok(value),
                    Outcome::Changed => {
                        tracing::debug!(target: "cache_runtime::connection", "a write landed during a ranged read: reading the value whole");
                        self.get_whole(key).await
                    }
                }
            }
            Err(e) => {
                // Its state is unknown (a WATCH, a late reply): dropped, and the next read
                // opens another. (A read dropped by its caller drops its connection too.)
                drop(held);
                // A fault of a fresh connection is the server's; one of a kept connection
                // may be only that connection's (its runtime ended, the server restarted):
                // the whole read through the pool, which reconnects, answers then.
                if e.is_connection_fault() && !reused {
                    return Err(e);
                }
                if refuses_command(&e, &RANGED_COMMANDS)
                    && !self.ranged.refused.swap(true, Ordering::Relaxed)
                {
                    tracing::debug!(target: "cache_runtime::connection", error = %e, "the server refused a ranged read: large values are read whole");
                }
                // A server error (a refused command, a key-level NOPERM, WRONGTYPE): the
                // whole GET gives the answer a read would have had.
                self.get_whole(key).await
            }
        }
    }

    /// Waits for a stream, in arrival order: `None` (read whole) once no range was read for
    /// [`STALLS`] stall bounds (a holder parked by its caller, not polled, never moves) or
    /// after the socket timeout in all.
    async fn stream_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let slice = self.pool.stall_after() * STALLS;
        let deadline = Instant::now() + self.config.socket_timeout;
        let acquire = self.ranged.streams.acquire();
        tokio::pin!(acquire);
        let mut seen = self.ranged.progress.load(Ordering::Relaxed);
        loop {
            match tokio::time::timeout(slice, &mut acquire).await {
                Ok(permit) => return permit.ok(),
                Err(_) => {
                    let now = self.ranged.progress.load(Ordering::Relaxed);
                    if now == seen || Instant::now() >= deadline {
                        return None;
                    }
                    seen = now;
                }
            }
        }
    }

    /// A value and its PTTL in one round trip (GET + PTTL) through the pool.
    pub(super) async fn get_whole(&self, key: &str) -> Result<Option<WithTtl>, CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let (value, pttl): (Option<Vec<u8>>, i64) = self.query_pipe(&pipe).await?;
        Ok(value.map(|v| (v, pttl)))
    }

    /// The ranged read proper, on the held connection (opened if there is none).
    async fn read_ranges(
        &self,
        held: &mut Option<MultiplexedConnection>,
        key: &str,
        range: usize,
    ) -> Result<Outcome, CacheError> {
        let mut conn = match held {
            Some(conn) => conn.clone(),
            None => {
                // Under the guard: fails fast while the breaker is open.
                let conn = self.guard.run(self.open_ranged()).await?;
                *held = Some(conn.clone());
                conn
            }
        };
        // UNWATCH: a read that stopped at a short range kept its connection and its WATCH.
        let mut first = redis::pipe();
        first
            .cmd("UNWATCH")
            .ignore()
            .cmd("WATCH")
            .arg(key)
            .ignore()
            .cmd("STRLEN")
            .arg(key)
            // Valid with the value: the WATCH also sees a change of the expiry.
            .cmd("PTTL")
            .arg(key)
            .cmd("GETRANGE")
            .arg(key)
            .arg(0)
            .arg(range - 1);
        let (len, pttl, piece): (usize, i64, Vec<u8>) = self.on_ranged(&mut conn, &first).await?;
        if len == 0 {
            // No such key (no build of this crate writes an empty value).
            return Ok(Outcome::Value(None));
        }
        if piece.len() >= len {
            // One range held it all: one command, nothing to check.
            return Ok(Outcome::Value(Some((piece, pttl))));
        }
        let mut value = Vec::with_capacity(len);
        value.extend_from_slice(&piece);
        drop(piece);
        // Ranges in flight (see [`DEPTH`]), answered in order on the one connection, so the
        // last one's EXEC runs after every range it vouches for.
        let mut next = value.len();
        let mut request = |pending: &mut FuturesOrdered<_>| {
            let depth = if self.pool.busy() { 1 } else { DEPTH };
            while next < len && pending.len() < depth {
                let end = (next + range).min(len);
                pending.push_back(self.range_at(conn.clone(), key, next, end, end == len));
                next = end;
            }
        };
        let mut pending = FuturesOrdered::new();
        request(&mut pending);
        while let Some(piece) = pending.next().await {
            let Some(piece) = piece? else {
                return Ok(Outcome::Changed);
            };
            value.extend_from_slice(&piece);
            request(&mut pending);
        }
        Ok(Outcome::Value(Some((value, pttl))))
    }

    /// The range `start..end` of `key`; with `last`, the empty transaction that checks the
    /// WATCH. `None`: the key changed (a short range, or an aborted EXEC).
    async fn range_at(
        &self,
        mut conn: MultiplexedConnection,
        key: &str,
        start: usize,
        end: usize,
        last: bool,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GETRANGE").arg(key).arg(start).arg(end - 1);
        let piece = if last {
            pipe.cmd("MULTI").ignore().cmd("EXEC");
            let (piece, exec): (Vec<u8>, redis::Value) = self.on_ranged(&mut conn, &pipe).await?;
            // A nil EXEC: the WATCHed key was written, deleted or expired meanwhile.
            if matches!(exec, redis::Value::Nil) {
                return Ok(None);
            }
            piece
        } else {
            let (piece,): (Vec<u8>,) = self.on_ranged(&mut conn, &pipe).await?;
            piece
        };
        Ok((piece.len() == end - start).then_some(piece))
    }

    /// One round trip of a ranged read, under the guard (socket timeout, breaker).
    async fn on_ranged<T: redis::FromRedisValue>(
        &self,
        conn: &mut MultiplexedConnection,
        pipe: &redis::Pipeline,
    ) -> Result<T, CacheError> {
        let reply = self
            .guard
            .run(async {
                pipe.query_async(conn)
                    .await
                    .map_err(|e| self.classifier.classify(&e))
            })
            .await;
        self.ranged.progress.fetch_add(1, Ordering::Relaxed);
        reply
    }

    /// The ranged reads' own connection, with the pool's client (credentials, TLS).
    async fn open_ranged(&self) -> Result<MultiplexedConnection, CacheError> {
        let timeout = self.config.connect_timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            // Each round trip runs under the guard's timer.
            .set_response_timeout(None);
        let connect = self
            .pool
            .client()
            .get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.classifier.classify(&e)),
            Err(_) => Err(self.classifier.connect_timed_out(timeout).await),
        }
    }
}
