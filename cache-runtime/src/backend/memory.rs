//! The embedded in-process store, used when no Redis is configured.
//!
//! moka (TinyLFU admission, LRU eviction) bounded by bytes; an entry weighs at least
//! `max_bytes / max_entries`, which bounds the number of entries too. TTLs are per entry
//! and honoured on read. Semantics follow Redis for every operation the runtime uses.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::policy::Expiry;
use moka::sync::Cache;

use super::KeyTtl;
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
}

impl MemoryBackend {
    pub(crate) fn new(config: &MemoryConfig) -> Self {
        let min_weight = (config.max_bytes / config.max_entries.max(1)).max(1);
        let indexes: Indexes = Arc::default();
        let listener_indexes = Arc::clone(&indexes);
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
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
        }
    }

    pub(crate) fn config(&self) -> &MemoryConfig {
        &self.config
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

    pub(crate) fn get(&self, key: &str) -> Option<Arc<[u8]>> {
        self.live(key).map(|e| e.value)
    }

    pub(crate) fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>, index: Option<&str>) {
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

    pub(crate) fn delete(&self, key: &str) -> bool {
        self.live(key).is_some() && self.cache.remove(key).is_some()
    }

    pub(crate) fn exists(&self, key: &str) -> bool {
        self.live(key).is_some()
    }

    pub(crate) fn ttl(&self, key: &str) -> KeyTtl {
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

    /// INCRBY: a missing key starts at 0 without TTL; an existing TTL is kept.
    pub(crate) fn incr(&self, key: &str, amount: i64) -> Result<i64, CacheError> {
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
                        expires_at,
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
    pub(crate) fn clear_prefix(&self, prefix: &str) -> u64 {
        let now = Instant::now();
        let doomed: Vec<Arc<String>> = self
            .cache
            .iter()
            .filter(|(k, e)| k.starts_with(prefix) && e.expires_at.is_none_or(|at| at > now))
            .map(|(k, _)| k)
            .collect();
        doomed
            .iter()
            .filter(|k| self.cache.remove(k.as_str()).is_some())
            .count() as u64
    }

    /// Deletes the keys listed in a user index (those starting with `member_prefix` when
    /// given); returns how many existed.
    pub(crate) fn clear_index(&self, index: &str, member_prefix: Option<&str>) -> u64 {
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
        members.iter().filter(|k| self.delete(k)).count() as u64
    }

    /// Entries and bytes held now (approximate until moka's pending work runs).
    pub(crate) fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// Live keys per namespace under `prefix` (`{prefix}{namespace}:…`): exact, the store
    /// is in this process.
    pub(crate) fn namespaces(&self, prefix: &str) -> HashMap<String, u64> {
        let now = Instant::now();
        let mut out = HashMap::new();
        for (key, entry) in self.cache.iter() {
            if entry.expires_at.is_some_and(|at| at <= now) {
                continue;
            }
            if let Some((ns, _)) = key
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_once(':'))
            {
                if crate::namespace::is_valid(ns) {
                    *out.entry(ns.to_owned()).or_insert(0) += 1;
                }
            }
        }
        out
    }
}
