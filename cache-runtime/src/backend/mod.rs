//! Stores behind the cache, behind one interface ([`Store`]): the embedded in-process store
//! and Redis.
//!
//! Nothing above this module knows which store it talks to: reads, writes, clears, key
//! counts, server facts for health, pool statistics and the invalidation stream are all
//! asked of the [`Backend`]. Dispatch is by enum rather than trait object (no boxed future
//! on the hot path); adding a store means one module implementing [`Store`], one variant,
//! and one line in [`dispatch!`].

pub(crate) mod invalidation;
pub(crate) mod memory;
pub(crate) mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::config::{BackendConfig, CacheConfig};
use crate::error::CacheError;
use invalidation::Sink;

/// The remaining lifetime of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyTtl {
    /// The key does not exist (Redis TTL -2).
    Missing,
    /// The key exists without an expiry (Redis TTL -1).
    Persistent,
    /// The key expires after this long.
    ExpiresIn(Duration),
}

impl KeyTtl {
    /// Seconds as Redis' `TTL` reports them: -2 missing, -1 no expiry.
    pub fn as_redis_secs(self) -> i64 {
        match self {
            Self::Missing => -2,
            Self::Persistent => -1,
            Self::ExpiresIn(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// From Redis' `PTTL` reply: -2 missing, -1 no expiry, else milliseconds.
    pub(crate) fn from_pttl(ms: i64) -> Self {
        match ms {
            -2 => Self::Missing,
            -1 => Self::Persistent,
            ms => Self::ExpiresIn(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        }
    }
}

/// Connection pool statistics for the health report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// `REDIS_CONNECTION_POOL_MAX_SIZE`.
    pub max_connections: usize,
    /// Connections opened so far.
    pub created_connections: usize,
    /// Connections that could take a request without sharing it: `max - busy`.
    pub available_connections: usize,
}

/// A stored value as the backend returns it.
pub(crate) enum Bytes {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Bytes {
    pub(crate) fn into_shared(self) -> Arc<[u8]> {
        match self {
            Self::Shared(b) => b,
            Self::Owned(v) => v.into(),
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            Self::Shared(v) => v,
        }
    }
}

/// One value to store.
#[derive(Clone, Copy)]
pub(crate) struct Write<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: &'a [u8],
    pub(crate) ttl: Option<Duration>,
    /// The user index that lists the key (user-scoped keys).
    pub(crate) index: Option<&'a str>,
    /// The tag sets that list the key ([`KeyBuilder::tag_index`](crate::key::KeyBuilder::tag_index)).
    pub(crate) tags: &'a [String],
}

/// How long a key count may run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScanBudget {
    pub(crate) max_keys: u64,
    pub(crate) max_time: Duration,
}

/// Keys per namespace, from one bounded pass.
#[derive(Default)]
pub(crate) struct NamespaceCount {
    pub(crate) by_namespace: HashMap<String, u64>,
    /// Keys examined.
    pub(crate) scanned: u64,
    /// Whether the pass covered every key.
    pub(crate) complete: bool,
}

/// Keys with their remaining lifetimes, from one bounded listing (`cachectl keys`).
#[derive(Debug, Default)]
pub(crate) struct KeyList {
    /// At most the listing's limit, in the store's order.
    pub(crate) keys: Vec<(String, KeyTtl)>,
    /// How many there are in all, when the store knows without a scan (an index's size).
    pub(crate) total: Option<u64>,
    /// Keys examined (a scan's; an index listing examines only its members).
    pub(crate) scanned: u64,
    /// Whether every match is listed: neither the limit nor the scan budget cut it short.
    pub(crate) complete: bool,
}

/// Where this cache's processes publish their figures for `cachectl top`
/// (`crate::stats_publisher`): one hash, one field per process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StatsKey<'a> {
    /// `{prefix}:__stats`.
    pub(crate) key: &'a str,
    /// The field a watching `cachectl top` sets; processes publish only while it exists.
    pub(crate) watch_field: &'a str,
    /// How long the hash outlives its last watcher's refresh.
    pub(crate) ttl: Duration,
}

/// What the store says about itself (health).
#[derive(Clone, Debug, Default)]
pub(crate) struct ServerFacts {
    pub(crate) version: Option<String>,
    pub(crate) mode: Option<String>,
    pub(crate) uptime_secs: Option<u64>,
    pub(crate) clients_connected: Option<u64>,
    pub(crate) clients_blocked: Option<u64>,
    /// Each node of a cluster (empty for a single server).
    pub(crate) nodes: Vec<NodeFacts>,
    /// Why the store cannot serve every key although it answers (a cluster with slots not
    /// served or a node failing).
    pub(crate) problem: Option<String>,
}

/// The store's memory (stats).
#[derive(Clone, Debug, Default)]
pub(crate) struct MemoryFacts {
    pub(crate) used: Option<u64>,
    pub(crate) used_human: Option<String>,
    pub(crate) max: Option<u64>,
    pub(crate) policy: Option<String>,
    /// Each node of a cluster (empty for a single server).
    pub(crate) nodes: Vec<NodeFacts>,
}

/// One node of a cluster.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeFacts {
    /// `host:port`.
    pub(crate) address: String,
    /// `primary` or `replica`.
    pub(crate) role: &'static str,
    /// `ok`, `failing` (other nodes cannot reach it), or `unreachable: <why>`.
    pub(crate) status: String,
    /// Hash slots it serves.
    pub(crate) slots: u32,
    pub(crate) version: Option<String>,
    pub(crate) latency_ms: Option<f64>,
    pub(crate) used_memory: Option<u64>,
    pub(crate) maxmemory: Option<u64>,
    pub(crate) keys: Option<u64>,
}

/// Where the store is, for messages.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// A URL without the password, or "embedded in-process store".
    pub(crate) shown: String,
    pub(crate) tls: bool,
}

/// What every store answers, with Redis semantics.
pub(crate) trait Store: Send + Sync {
    /// `"embedded"` or `"redis"`.
    fn kind(&self) -> &'static str;
    fn endpoint(&self) -> Endpoint;
    /// Whether calls currently bypass the store after repeated failures.
    fn circuit_open(&self) -> bool;
    /// The last connection fault (health reports it while the breaker hides it).
    fn last_fault(&self) -> Option<String>;
    fn pool_stats(&self) -> Option<PoolStats>;
    /// Whether requests are in flight, so that a read may share another's round trip.
    fn busy(&self) -> bool;

    /// Entries evicted for room since start, when the store can tell which are ours (the
    /// embedded store; Redis's `evicted_keys` is server-wide).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn evictions(&self) -> Option<u64> {
        None
    }
    /// Whether other processes use this store too (so a distributed lock means something).
    fn shared_by_processes(&self) -> bool {
        false
    }
    /// Takes the lock `key` for at most `lease`, owned by `token`; `true` when taken.
    /// A store no other process uses has nothing to coordinate: always taken.
    async fn try_lock(
        &self,
        _key: &str,
        _token: &str,
        _lease: Duration,
    ) -> Result<bool, CacheError> {
        Ok(true)
    }
    /// Releases the lock `key` if `token` still owns it (a lock whose lease ran out may
    /// belong to another process by now).
    async fn unlock(&self, _key: &str, _token: &str) -> Result<(), CacheError> {
        Ok(())
    }

    async fn connect(&self) -> Result<(), CacheError>;
    async fn ping(&self) -> Result<Duration, CacheError>;
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError>;
    /// The value and its remaining lifetime, in one round trip (for filling an L1).
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, KeyTtl)>, CacheError>;
    async fn set(&self, write: Write<'_>) -> Result<(), CacheError>;
    /// Deletes; `true` when the key existed.
    async fn delete(&self, key: &str) -> Result<bool, CacheError>;
    async fn exists(&self, key: &str) -> Result<bool, CacheError>;
    async fn ttl(&self, key: &str) -> Result<KeyTtl, CacheError>;
    /// INCRBY; a missing key starts at 0. `ttl` applies when the key is created (or has no
    /// expiry): a counter that never expires is the memory bloat the seed warns about.
    async fn incr(&self, key: &str, amount: i64, ttl: Option<Duration>) -> Result<i64, CacheError>;
    /// Deletes every key starting with `prefix`; returns how many.
    async fn clear_prefix(&self, prefix: &str) -> Result<u64, CacheError>;
    /// Deletes the keys that match the SCAN pattern `pattern` (a prefilter) and for which
    /// `wanted` says yes (the exact test); returns how many existed.
    async fn clear_matching(
        &self,
        pattern: &str,
        wanted: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<u64, CacheError>;
    /// Deletes the keys a user index lists (those starting with `member_prefix` when
    /// given); returns how many existed.
    async fn clear_index(
        &self,
        index: &str,
        member_prefix: Option<&str>,
    ) -> Result<u64, CacheError>;
    /// Deletes the keys a tag's set lists (wherever they live) and empties the set;
    /// `forget` hears each key before it is deleted (the caller's local fence). Returns how
    /// many existed. Costs in proportion to the tagged keys.
    async fn clear_tag(
        &self,
        index: &str,
        forget: &(dyn Fn(&str) + Sync),
    ) -> Result<u64, CacheError> {
        let _ = forget;
        self.clear_index(index, None).await
    }
    /// Our keys per namespace (`{prefix}{namespace}:…`).
    async fn count_namespaces(
        &self,
        prefix: &str,
        budget: ScanBudget,
    ) -> Result<NamespaceCount, CacheError>;
    /// Keys in the database, ours or not.
    async fn key_total(&self) -> Result<Option<u64>, CacheError>;
    async fn server_facts(&self) -> Result<ServerFacts, CacheError>;
    async fn memory_facts(&self) -> Result<MemoryFacts, CacheError>;

    /// Whether the store can tell this process about writes made elsewhere (so an L1 may
    /// sit in front of it), and how (`"pubsub"`).
    fn invalidation_mode(&self) -> Option<&'static str>;
    /// Starts feeding `sink` the invalidations of this store (see
    /// `invalidation::Sink`).
    fn listen(&self, sink: Weak<dyn Sink>);

    /// Our keys starting with `prefix` and their TTLs: at most `limit`, from one pass that
    /// stops at the budget's keys examined or time (`cachectl keys --namespace`).
    async fn list_keys(
        &self,
        prefix: &str,
        limit: usize,
        budget: ScanBudget,
    ) -> Result<KeyList, CacheError>;
    /// The keys a user index (or a tag's set) lists and their TTLs, at most `limit`, with
    /// the index's size; members whose key is gone show as [`KeyTtl::Missing`]
    /// (`cachectl keys --user`).
    async fn index_members(&self, index: &str, limit: usize) -> Result<KeyList, CacheError>;
    /// Writes this process's figures `snapshot` into `stats` under `field`, or with `None`
    /// only asks; returns whether a `cachectl top` watches (`stats.watch_field` exists).
    /// Never announced: nothing caches it. A store no other process reads has no watcher.
    async fn publish_stats(
        &self,
        stats: StatsKey<'_>,
        field: &str,
        snapshot: Option<&[u8]>,
    ) -> Result<bool, CacheError> {
        let _ = (stats, field, snapshot);
        Ok(false)
    }
    /// Marks `stats` watched (for `stats.ttl`), removes the fields `forget` (processes gone),
    /// and returns every field: each process's snapshot, and the watch mark.
    async fn watch_stats(
        &self,
        stats: StatsKey<'_>,
        forget: &[String],
    ) -> Result<HashMap<String, Vec<u8>>, CacheError> {
        let _ = (stats, forget);
        Ok(HashMap::new())
    }
}

/// The store of one cache.
// One per cache, inside its `Arc`: the size difference costs nothing, boxing would cost
// an indirection on every request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    Memory(memory::MemoryBackend),
    Redis(redis::RedisBackend),
}

/// Runs `$call` on whichever store `$backend` is: the one place that lists the variants.
macro_rules! dispatch {
    ($backend:expr, $store:ident => $call:expr) => {
        match $backend {
            Backend::Memory($store) => $call,
            Backend::Redis($store) => $call,
        }
    };
}

/// Awaits the future `$call` of whichever store `$backend` is. Redis' futures are boxed
/// as `dyn Future`: their types nest redis-rs' deeply, and without the erasure every
/// caller's future (a decorated function's, and its callers') inherits that depth, up to
/// rustc's query depth limit ("queries overflow the depth limit") in ordinary user code.
/// One allocation beside a network round trip; the embedded store is not boxed.
macro_rules! dispatch_async {
    ($backend:expr, $store:ident => $call:expr) => {
        match $backend {
            Backend::Memory($store) => $call.await,
            Backend::Redis($store) => {
                let boxed: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>> =
                    Box::pin($call);
                boxed.await
            }
        }
    };
}

impl Backend {
    pub(crate) fn new(config: &CacheConfig) -> Result<Self, CacheError> {
        Ok(match &config.backend {
            BackendConfig::Memory(m) => Self::Memory(memory::MemoryBackend::new(m)),
            BackendConfig::Redis(r) => Self::Redis(redis::RedisBackend::new(
                r,
                &config.key_prefix,
                config.l1.is_some(),
            )?),
        })
    }
}

impl Store for Backend {
    fn kind(&self) -> &'static str {
        dispatch!(self, s => s.kind())
    }
    fn endpoint(&self) -> Endpoint {
        dispatch!(self, s => s.endpoint())
    }
    fn circuit_open(&self) -> bool {
        dispatch!(self, s => s.circuit_open())
    }
    fn last_fault(&self) -> Option<String> {
        dispatch!(self, s => s.last_fault())
    }
    fn pool_stats(&self) -> Option<PoolStats> {
        dispatch!(self, s => s.pool_stats())
    }
    fn busy(&self) -> bool {
        dispatch!(self, s => s.busy())
    }
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn evictions(&self) -> Option<u64> {
        dispatch!(self, s => s.evictions())
    }
    fn shared_by_processes(&self) -> bool {
        dispatch!(self, s => s.shared_by_processes())
    }
    async fn try_lock(&self, key: &str, token: &str, lease: Duration) -> Result<bool, CacheError> {
        dispatch_async!(self, s => s.try_lock(key, token, lease))
    }
    async fn unlock(&self, key: &str, token: &str) -> Result<(), CacheError> {
        dispatch_async!(self, s => s.unlock(key, token))
    }
    async fn connect(&self) -> Result<(), CacheError> {
        dispatch_async!(self, s => s.connect())
    }
    async fn ping(&self) -> Result<Duration, CacheError> {
        dispatch_async!(self, s => s.ping())
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        dispatch_async!(self, s => s.get(key))
    }
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, KeyTtl)>, CacheError> {
        dispatch_async!(self, s => s.get_with_ttl(key))
    }
    async fn set(&self, write: Write<'_>) -> Result<(), CacheError> {
        dispatch_async!(self, s => s.set(write))
    }
    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        dispatch_async!(self, s => s.delete(key))
    }
    async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        dispatch_async!(self, s => s.exists(key))
    }
    async fn ttl(&self, key: &str) -> Result<KeyTtl, CacheError> {
        dispatch_async!(self, s => s.ttl(key))
    }
    async fn incr(&self, key: &str, amount: i64, ttl: Option<Duration>) -> Result<i64, CacheError> {
        dispatch_async!(self, s => s.incr(key, amount, ttl))
    }
    async fn clear_matching(
        &self,
        pattern: &str,
        wanted: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<u64, CacheError> {
        dispatch_async!(self, s => s.clear_matching(pattern, wanted))
    }
    async fn clear_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        dispatch_async!(self, s => s.clear_prefix(prefix))
    }
    async fn clear_index(
        &self,
        index: &str,
        member_prefix: Option<&str>,
    ) -> Result<u64, CacheError> {
        dispatch_async!(self, s => s.clear_index(index, member_prefix))
    }
    async fn clear_tag(
        &self,
        index: &str,
        forget: &(dyn Fn(&str) + Sync),
    ) -> Result<u64, CacheError> {
        dispatch_async!(self, s => s.clear_tag(index, forget))
    }
    async fn count_namespaces(
        &self,
        prefix: &str,
        budget: ScanBudget,
    ) -> Result<NamespaceCount, CacheError> {
        dispatch_async!(self, s => s.count_namespaces(prefix, budget))
    }
    async fn key_total(&self) -> Result<Option<u64>, CacheError> {
        dispatch_async!(self, s => s.key_total())
    }
    async fn server_facts(&self) -> Result<ServerFacts, CacheError> {
        dispatch_async!(self, s => s.server_facts())
    }
    async fn memory_facts(&self) -> Result<MemoryFacts, CacheError> {
        dispatch_async!(self, s => s.memory_facts())
    }
    fn invalidation_mode(&self) -> Option<&'static str> {
        dispatch!(self, s => s.invalidation_mode())
    }
    fn listen(&self, sink: Weak<dyn Sink>) {
        dispatch!(self, s => s.listen(sink))
    }
    async fn list_keys(
        &self,
        prefix: &str,
        limit: usize,
        budget: ScanBudget,
    ) -> Result<KeyList, CacheError> {
        dispatch_async!(self, s => s.list_keys(prefix, limit, budget))
    }
    async fn index_members(&self, index: &str, limit: usize) -> Result<KeyList, CacheError> {
        dispatch_async!(self, s => s.index_members(index, limit))
    }
    async fn publish_stats(
        &self,
        stats: StatsKey<'_>,
        field: &str,
        snapshot: Option<&[u8]>,
    ) -> Result<bool, CacheError> {
        dispatch_async!(self, s => s.publish_stats(stats, field, snapshot))
    }
    async fn watch_stats(
        &self,
        stats: StatsKey<'_>,
        forget: &[String],
    ) -> Result<HashMap<String, Vec<u8>>, CacheError> {
        dispatch_async!(self, s => s.watch_stats(stats, forget))
    }
}

/// Parses `INFO` text into `field -> value`.
pub(crate) fn parse_info(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end().split_once(':'))
        .collect()
}

/// Bytes as Redis' `used_memory_human` shows them.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.2}{}", UNITS[unit])
    }
}

/// The namespace of one of our keys, when it is one (`{prefix}{namespace}:…`).
/// Now, in milliseconds since the Unix epoch: the clock of what processes share (index
/// scores, timed envelopes, stats snapshots), so a monotonic clock would not do.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn namespace_of<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let (ns, _) = key.strip_prefix(prefix)?.split_once(':')?;
    cache_grammar::check_name(ns).is_ok().then_some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 200 * 1024), "5.20M");
    }

    #[test]
    fn info_parsing_ignores_sections() {
        let f = parse_info("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n");
        assert_eq!(f.get("redis_version"), Some(&"7.0.15"));
        assert_eq!(f.get("redis_mode"), Some(&"standalone"));
    }

    #[test]
    fn namespaces_of_keys() {
        assert_eq!(namespace_of("p:users:x", "p:"), Some("users"));
        assert_eq!(namespace_of("p:__index:{user:1}", "p:"), None);
        assert_eq!(namespace_of("q:users:x", "p:"), None);
    }
}
