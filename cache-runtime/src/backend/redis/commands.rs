//! The operations of [`Store`] as Redis commands, each one request (a command or a
//! pipeline) through the guard and the pool.
//!
//! Writes announce themselves on the invalidation channel (when an L1 is configured) in
//! the same pipeline, so coherence costs no extra round trip.

use std::sync::Weak;
use std::time::{Duration, Instant};

use super::pool::InFlight;
use super::RedisBackend;
use crate::backend::invalidation::Sink;
use crate::backend::{
    namespace_of, parse_info, Bytes, Endpoint, KeyTtl, MemoryFacts, NamespaceCount, PoolStats,
    ScanBudget, ServerFacts, Store, Write,
};
use crate::error::CacheError;

/// Keys per SCAN / ZSCAN page and per UNLINK batch.
const BATCH: usize = 500;

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

#[derive(Clone, Copy)]
enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

impl RedisBackend {
    /// Runs one command or pipeline on a lane, under the guard.
    async fn send<T: redis::FromRedisValue>(&self, request: Request<'_>) -> Result<T, CacheError> {
        self.guard
            .run(async {
                let lane = self.pool.lane().await?;
                let _in_flight = InFlight::start(&self.pool, &lane);
                let mut conn = lane.conn.clone();
                match request {
                    Request::Cmd(cmd) => cmd.query_async(&mut conn).await,
                    Request::Pipe(pipe) => pipe.query_async(&mut conn).await,
                }
                .map_err(|e| self.classifier.classify(&e))
            })
            .await
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, CacheError> {
        self.send(Request::Cmd(cmd)).await
    }

    async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, CacheError> {
        self.send(Request::Pipe(pipe)).await
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
        Some(self.pool.stats())
    }

    fn busy(&self) -> bool {
        self.pool.busy()
    }

    async fn connect(&self) -> Result<(), CacheError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(CacheError::NoRuntime);
        }
        self.pool.connect().await
    }

    async fn ping(&self) -> Result<Duration, CacheError> {
        let start = Instant::now();
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(start.elapsed())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        let value: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(key)).await?;
        Ok(value.map(Bytes::Owned))
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, KeyTtl)>, CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let (value, pttl): (Option<Vec<u8>>, i64) = self.query_pipe(&pipe).await?;
        Ok(value.map(|v| (Bytes::Owned(v), KeyTtl::from_pttl(pttl))))
    }

    async fn set(&self, write: Write<'_>) -> Result<(), CacheError> {
        let Write {
            key,
            value,
            ttl,
            index,
        } = write;
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
        if let Some(pubsub) = &self.pubsub {
            pubsub.announce_keys(&mut pipe, [key]);
        }
        self.query_pipe::<()>(&pipe).await
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK").arg(key);
        if let Some(pubsub) = &self.pubsub {
            pubsub.announce_keys(&mut pipe, [key]);
        }
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

    async fn incr(&self, key: &str, amount: i64) -> Result<i64, CacheError> {
        self.query(redis::cmd("INCRBY").arg(key).arg(amount))
            .await
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

    /// SCAN + UNLINK in batches (never KEYS, never FLUSHDB).
    async fn clear_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
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
        if let Some(pubsub) = &self.pubsub {
            let mut pipe = redis::pipe();
            pubsub.announce_prefix(&mut pipe, prefix);
            let announced = self.query_pipe::<()>(&pipe).await;
            scanned?;
            announced?;
        } else {
            scanned?;
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
                let mut pipe = redis::pipe();
                pipe.cmd("UNLINK").arg(&keys);
                pipe.cmd("ZREM").arg(index).arg(&keys).ignore();
                if let Some(pubsub) = &self.pubsub {
                    pubsub.announce_keys(&mut pipe, keys.iter().map(String::as_str));
                }
                let (n,): (u64,) = self.query_pipe(&pipe).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// One SCAN pass, stopping at the budget's keys examined or time, whichever first.
    async fn count_namespaces(
        &self,
        prefix: &str,
        budget: ScanBudget,
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
                if let Some(ns) = namespace_of(key, prefix) {
                    *count.by_namespace.entry(ns.to_owned()).or_insert(0) += 1;
                }
            }
            if next == 0 {
                count.complete = true;
                return Ok(count);
            }
            if count.scanned >= budget.max_keys || start.elapsed() >= budget.max_time {
                return Ok(count);
            }
            cursor = next;
        }
    }

    async fn key_total(&self) -> Result<Option<u64>, CacheError> {
        let n: i64 = self.query(&redis::cmd("DBSIZE")).await?;
        Ok(u64::try_from(n).ok())
    }

    async fn server_facts(&self) -> Result<ServerFacts, CacheError> {
        let server = self.info("server").await?;
        let f = parse_info(&server);
        let mut facts = ServerFacts {
            version: f.get("redis_version").map(|s| (*s).to_owned()),
            mode: f.get("redis_mode").map(|s| (*s).to_owned()),
            uptime_secs: f.get("uptime_in_seconds").and_then(|s| s.parse().ok()),
            ..ServerFacts::default()
        };
        // A managed service may withhold sections: what it withholds stays unknown.
        if let Ok(clients) = self.info("clients").await {
            let f = parse_info(&clients);
            facts.clients_connected = f.get("connected_clients").and_then(|s| s.parse().ok());
            facts.clients_blocked = f.get("blocked_clients").and_then(|s| s.parse().ok());
        }
        Ok(facts)
    }

    async fn memory_facts(&self) -> Result<MemoryFacts, CacheError> {
        let text = self.info("memory").await?;
        let f = parse_info(&text);
        let used = f.get("used_memory").and_then(|s| s.parse().ok());
        Ok(MemoryFacts {
            used,
            used_human: f
                .get("used_memory_human")
                .map(|s| (*s).to_owned())
                .or_else(|| used.map(crate::backend::human_bytes)),
            max: f.get("maxmemory").and_then(|s| s.parse().ok()),
            policy: f.get("maxmemory_policy").map(|s| (*s).to_owned()),
        })
    }

    fn invalidation_mode(&self) -> Option<&'static str> {
        self.pubsub.as_ref().map(|_| "pubsub")
    }

    fn listen(&self, sink: Weak<dyn Sink>) {
        match &self.pubsub {
            Some(pubsub) => pubsub.listen(sink),
            None => {
                if let Some(sink) = sink.upgrade() {
                    sink.ended();
                }
            }
        }
    }
}
