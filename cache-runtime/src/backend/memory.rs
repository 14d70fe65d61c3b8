//! The embedded in-process store, used when no Redis is configured.
//!
//! moka (TinyLFU admission, LRU eviction) bounded by bytes; an entry weighs at least
//! `max_bytes / max_entries`, which bounds the number of entries too. TTLs are per entry
//! and honoured on read. Semantics follow Redis for every operation the runtime uses.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::policy::Expiry;
use moka::sync::Cache;

use super::invalidation::Sink;
use super::{
    human_bytes, namespace_of, Bytes, Endpoint, KeyTtl, MemoryFacts, NamespaceCount, PoolStats,
    ScanBudget, ServerFacts, Store, Write,
};
use crate::config::MemoryConfig;
use crate::error::CacheError;

#[derive(Clone)]
struct Entry {
    value: Arc<[u8]>,
    expires_at: Option<Instant>,
    /// The user index that lists this key, so eviction can drop it from there.
    index: Option<Arc<str>>,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, value: &Entry, now: Instant) -> Option<Duration> {
        value.expires_at.map(|at| at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        value.expires_at.map(|at| at.saturating_duration_since(now))
    }
}

type Indexes = Arc<Mutex<HashMap<Arc<str>, HashSet<String>>>>;

/// The embedded store.
pub(crate) struct MemoryBackend {
    cache: Cache<String, Entry>,
    indexes: Indexes,
    config: MemoryConfig,
    started: Instant,
}

impl MemoryBackend {
    pub(crate) fn new(config: &MemoryConfig) -> Self {
        tracing::info!(
            target: "cache_runtime::connection",
            max_entries = config.max_entries,
            max_bytes = config.max_bytes,
            "no REDIS_URL or REDIS_HOST set: using the embedded in-process cache (not shared between processes)"
        );
        let (max_entries, max_bytes) = (config.max_entries.get(), config.max_bytes.get());
        let min_weight = (max_bytes / max_entries).max(1);
        let indexes: Indexes = Arc::default();
        let listener_indexes = Arc::clone(&indexes);
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |key: &String, entry: &Entry| {
                let bytes = (key.len() + entry.value.len()) as u64;
                u32::try_from(bytes.max(min_weight)).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(move |key: Arc<String>, entry: Entry, cause| {
                // Replaced entries re-register themselves; only drop keys that are gone.
                if cause == moka::notification::RemovalCause::Replaced {
                    return;
                }
                if let Some(index) = entry.index {
                    let mut indexes = listener_indexes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if let Some(set) = indexes.get_mut(&index) {
                        set.remove(key.as_str());
                        if set.is_empty() {
                            indexes.remove(&index);
                        }
                    }
                }
            })
            .build();
        Self {
            cache,
            indexes,
            config: config.clone(),
            started: Instant::now(),
        }
    }

    fn live(&self, key: &str) -> Option<Entry> {
        let entry = self.cache.get(key)?;
        // moka expires lazily on its own clock; check ours too so a TTL holds to the instant.
        match entry.expires_at {
            Some(at) if at <= Instant::now() => {
                // Remove only if it is still expired: a concurrent set may have replaced it.
                let _ = self.cache.entry_by_ref(key).and_compute_with(|current| {
                    match current.map(moka::Entry::into_value) {
                        Some(e) if e.expires_at.is_some_and(|at| at <= Instant::now()) => {
                            Op::Remove
                        }
                        _ => Op::Nop,
                    }
                });
                None
            }
            _ => Some(entry),
        }
    }

    fn get_now(&self, key: &str) -> Option<Arc<[u8]>> {
        self.live(key).map(|e| e.value)
    }

    fn set_now(&self, key: &str, value: &[u8], ttl: Option<Duration>, index: Option<&str>) {
        let index: Option<Arc<str>> = index.map(Arc::from);
        if let Some(index) = &index {
            self.indexes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(Arc::clone(index))
                .or_default()
                .insert(key.to_owned());
        }
        self.cache.insert(
            key.to_owned(),
            Entry {
                value: Arc::from(value),
                // A TTL beyond the clock's range (e.g. Duration::MAX) means "no expiry".
                expires_at: ttl.and_then(|t| Instant::now().checked_add(t)),
                index,
            },
        );
    }

    fn delete_now(&self, key: &str) -> bool {
        self.live(key).is_some() && self.cache.remove(key).is_some()
    }

    fn exists_now(&self, key: &str) -> bool {
        self.live(key).is_some()
    }

    fn ttl_now(&self, key: &str) -> KeyTtl {
        match self.live(key) {
            None => KeyTtl::Missing,
            Some(Entry {
                expires_at: None, ..
            }) => KeyTtl::Persistent,
            Some(Entry {
                expires_at: Some(at),
                ..
            }) => KeyTtl::ExpiresIn(at.saturating_duration_since(Instant::now())),
        }
    }

    /// INCRBY: a missing key starts at 0; an existing TTL is kept, `ttl` is given to a key
    /// that has none (as `PEXPIRE … NX`).
    fn incr_now(&self, key: &str, amount: i64, ttl: Option<Duration>) -> Result<i64, CacheError> {
        let mut outcome: Result<i64, CacheError> = Ok(0);
        let now = Instant::now();
        self.cache.entry_by_ref(key).and_compute_with(|current| {
            let current = current
                .map(moka::Entry::into_value)
                .filter(|e| e.expires_at.is_none_or(|at| at > now));
            let (base, expires_at, index) = match current {
                None => (0, None, None),
                Some(e) => match std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    Some(n) => (n, e.expires_at, e.index),
                    None => {
                        outcome = Err(CacheError::NotACounter(
                            "value is not an integer or out of range".to_owned(),
                        ));
                        return Op::Nop;
                    }
                },
            };
            match base.checked_add(amount) {
                Some(next) => {
                    outcome = Ok(next);
                    Op::Put(Entry {
                        value: Arc::from(next.to_string().as_bytes()),
                        expires_at: expires_at
                            .or_else(|| ttl.and_then(|t| Instant::now().checked_add(t))),
                        index,
                    })
                }
                None => {
                    outcome = Err(CacheError::NotACounter(
                        "increment or decrement would overflow".to_owned(),
                    ));
                    Op::Nop
                }
            }
        });
        outcome
    }

    /// Deletes every key starting with `prefix`; returns how many existed.
    fn clear_prefix_now(&self, prefix: &str) -> u64 {
        self.clear_where(&|k| k.starts_with(prefix))
    }

    /// Deletes every live key `wanted` says yes to; returns how many existed.
    fn clear_where(&self, wanted: &dyn Fn(&str) -> bool) -> u64 {
        let now = Instant::now();
        let doomed: Vec<Arc<String>> = self
            .cache
            .iter()
            .filter(|(k, e)| wanted(k) && e.expires_at.is_none_or(|at| at > now))
            .map(|(k, _)| k)
            .collect();
        doomed
            .iter()
            .filter(|k| self.cache.remove(k.as_str()).is_some())
            .count() as u64
    }

    /// Deletes the keys listed in a user index (those starting with `member_prefix` when
    /// given); returns how many existed.
    fn clear_index_now(&self, index: &str, member_prefix: Option<&str>) -> u64 {
        let members: Vec<String> = {
            let mut indexes = self.indexes.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(set) = indexes.get_mut(index) else {
                return 0;
            };
            let taken: Vec<String> = match member_prefix {
                None => set.drain().collect(),
                Some(p) => {
                    let taken: Vec<String> =
                        set.iter().filter(|k| k.starts_with(p)).cloned().collect();
                    for k in &taken {
                        set.remove(k);
                    }
                    taken
                }
            };
            if set.is_empty() {
                indexes.remove(index);
            }
            taken
        };
        members.iter().filter(|k| self.delete_now(k)).count() as u64
    }

    /// Entries and bytes held now (approximate until moka's pending work runs).
    fn usage_now(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// Live keys per namespace under `prefix` (`{prefix}{namespace}:…`): exact, the store
    /// is in this process.
    fn namespaces_now(&self, prefix: &str) -> HashMap<String, u64> {
        let now = Instant::now();
        let mut out = HashMap::new();
        for (key, entry) in self.cache.iter() {
            if entry.expires_at.is_some_and(|at| at <= now) {
                continue;
            }
            if let Some(ns) = namespace_of(&key, prefix) {
                *out.entry(ns.to_owned()).or_insert(0) += 1;
            }
        }
        out
    }
}

impl Store for MemoryBackend {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            shown: "embedded in-process store".to_owned(),
            tls: false,
        }
    }

    fn circuit_open(&self) -> bool {
        false
    }

    fn last_fault(&self) -> Option<String> {
        None
    }

    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }

    fn busy(&self) -> bool {
        // Nothing to share: every read is in this process.
        false
    }

    async fn connect(&self) -> Result<(), CacheError> {
        Ok(())
    }

    async fn ping(&self) -> Result<Duration, CacheError> {
        Ok(Duration::ZERO)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        // Nothing here waits: a loop of reads must still let other tasks run.
        tokio::task::consume_budget().await;
        Ok(self.get_now(key).map(Bytes::Shared))
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, KeyTtl)>, CacheError> {
        Ok(self.live(key).map(|e| {
            let ttl = e.expires_at.map_or(KeyTtl::Persistent, |at| {
                KeyTtl::ExpiresIn(at.saturating_duration_since(Instant::now()))
            });
            (Bytes::Shared(e.value), ttl)
        }))
    }

    async fn set(&self, write: Write<'_>) -> Result<(), CacheError> {
        tokio::task::consume_budget().await;
        self.set_now(write.key, write.value, write.ttl, write.index);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        Ok(self.delete_now(key))
    }

    async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        Ok(self.exists_now(key))
    }

    async fn ttl(&self, key: &str) -> Result<KeyTtl, CacheError> {
        Ok(self.ttl_now(key))
    }

    async fn incr(&self, key: &str, amount: i64, ttl: Option<Duration>) -> Result<i64, CacheError> {
        self.incr_now(key, amount, ttl)
    }

    async fn clear_matching(
        &self,
        _pattern: &str,
        wanted: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<u64, CacheError> {
        Ok(self.clear_where(wanted))
    }

    async fn clear_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        Ok(self.clear_prefix_now(prefix))
    }

    async fn clear_index(
        &self,
        index: &str,
        member_prefix: Option<&str>,
    ) -> Result<u64, CacheError> {
        Ok(self.clear_index_now(index, member_prefix))
    }

    async fn count_namespaces(
        &self,
        prefix: &str,
        _budget: ScanBudget,
    ) -> Result<NamespaceCount, CacheError> {
        let (entries, _) = self.usage_now();
        Ok(NamespaceCount {
            by_namespace: self.namespaces_now(prefix),
            scanned: entries,
            complete: true,
        })
    }

    async fn key_total(&self) -> Result<Option<u64>, CacheError> {
        Ok(Some(self.usage_now().0))
    }

    async fn server_facts(&self) -> Result<ServerFacts, CacheError> {
        Ok(ServerFacts {
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            mode: Some("embedded".to_owned()),
            uptime_secs: Some(self.started.elapsed().as_secs()),
            ..ServerFacts::default()
        })
    }

    async fn memory_facts(&self) -> Result<MemoryFacts, CacheError> {
        let (_, bytes) = self.usage_now();
        Ok(MemoryFacts {
            used: Some(bytes),
            used_human: Some(human_bytes(bytes)),
            max: Some(self.config.max_bytes.get()),
            policy: Some("tinylfu".to_owned()),
            nodes: Vec::new(),
        })
    }

    fn invalidation_mode(&self) -> Option<&'static str> {
        // Every writer is in this process: there is nothing to hear about.
        None
    }

    fn listen(&self, sink: Weak<dyn Sink>) {
        if let Some(sink) = sink.upgrade() {
            sink.ended();
        }
    }
}
