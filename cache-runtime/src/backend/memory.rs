//! The embedded in-process store, used when no Redis is configured.
//!
//! **Policy: LRU, like Redis' `allkeys-lru`** (exact here, where Redis samples). Every write
//! is stored. When a write takes the store past either bound (`CACHE_MEMORY_MAX_ENTRIES`
//! entries, `CACHE_MEMORY_MAX_BYTES` bytes of keys and values), the least recently used
//! entries are evicted until both hold again, whatever their TTL. A use is a write (`set`,
//! `incr`) or a read (`get`); `exists` and `ttl` are not, as in Redis. A value larger than
//! the whole byte bound is not kept (nor is the value it replaces). TTLs are per entry and
//! checked on every access; an expired entry goes when it is next accessed, evicted or
//! counted. Whatever removes an entry (delete, expiry, eviction, clear) drops it from the
//! sets that list it (its user's index, its tags' sets). Semantics follow Redis for every
//! operation the runtime uses.
//!
//! Layout, for many tasks at once: [`SHARDS`] shards chosen by key hash, each a `Mutex`
//! over a map and its keys in order of use (a `BTreeMap` from use stamp to key). Stamps
//! come from one global counter, so the smallest of the shards' oldest stamps (each
//! published in an atomic) is the least recently used entry of the whole store: eviction
//! is global LRU while every operation locks one shard for a map probe and a B-tree update.
//! No lock is held across an `.await`; the lock of the sets (user indexes, tags) is only
//! ever taken inside a shard's, never the other way round.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::invalidation::Sink;
use super::{
    human_bytes, namespace_of, Bytes, Endpoint, KeyTtl, MemoryFacts, NamespaceCount, PoolStats,
    ScanBudget, ServerFacts, Store, Write,
};
use crate::config::MemoryConfig;
use crate::error::CacheError;
use crate::fasthash::KeyedHash;

/// Shards (a power of two): tasks on different cores rarely want the same lock.
const SHARDS: usize = 16;
/// The oldest stamp an empty shard publishes.
const EMPTY: u64 = u64::MAX;

/// One stored value.
struct Entry {
    value: Arc<[u8]>,
    expires_at: Option<Instant>,
    /// The sets that list this key (its user's index, its tags' sets), so removing the
    /// key can drop it from there.
    lists: Box<[Arc<str>]>,
    /// Stamp of its last use: its place in its shard's order.
    used: u64,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    fn ttl(&self, now: Instant) -> KeyTtl {
        self.expires_at.map_or(KeyTtl::Persistent, |at| {
            KeyTtl::ExpiresIn(at.saturating_duration_since(now))
        })
    }
}

/// What an entry counts for against `CACHE_MEMORY_MAX_BYTES`: its key and its value.
fn weight(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// One shard's entries and their keys in order of use.
#[derive(Default)]
struct Shard {
    entries: HashMap<Arc<str>, Entry>,
    /// Use stamp -> key, least recently used first.
    order: BTreeMap<u64, Arc<str>>,
}

/// A shard, and its oldest stamp readable without its lock.
#[derive(Default)]
struct Slot {
    shard: Mutex<Shard>,
    /// Stamp of the shard's least recently used entry ([`EMPTY`] when it has none), written
    /// whenever its lock is released.
    oldest: AtomicU64,
}

/// Set (a user index or a tag's set) -> the keys it lists.
type Indexes = HashMap<Arc<str>, HashSet<Arc<str>>>;

/// The embedded store.
pub(crate) struct MemoryBackend {
    slots: Box<[Slot]>,
    /// Picks a key's shard; keyed, since keys carry user ids.
    hash: KeyedHash,
    /// The next use stamp.
    clock: AtomicU64,
    /// Entries and bytes held; changed only under the lock of the shard that changes.
    entries: AtomicU64,
    bytes: AtomicU64,
    /// Entries evicted for room (`cache_evictions_total`).
    evictions: AtomicU64,
    /// Taken only while holding a shard's lock, or alone.
    indexes: Mutex<Indexes>,
    config: MemoryConfig,
    started: Instant,
}

/// A locked shard. Every change of entries goes through it, so that the counters, the
/// order of use, the sets that list keys and the published oldest stamp change together.
struct Locked<'a> {
    store: &'a MemoryBackend,
    slot: &'a Slot,
    shard: MutexGuard<'a, Shard>,
}

impl Locked<'_> {
    /// `key`'s entry if it is live (an expired one is removed); `touch` makes it the most
    /// recently used.
    fn live(&mut self, key: &str, touch: bool, now: Instant) -> Option<&Entry> {
        if !self.shard.entries.get(key)?.live(now) {
            self.remove(key);
            return None;
        }
        if touch {
            let stamp = self.store.next_stamp();
            let shard = &mut *self.shard;
            let entry = shard.entries.get_mut(key)?;
            if let Some(k) = shard.order.remove(&entry.used) {
                shard.order.insert(stamp, k);
            }
            entry.used = stamp;
        }
        self.shard.entries.get(key)
    }

    /// Stores a value as the most recently used entry, replacing `key`'s.
    fn insert(&mut self, key: &str, value: Arc<[u8]>, expires_at: Option<Instant>, lists: &[&str]) {
        // Removing first keeps the counters and the old entry's sets right in one place.
        self.remove(key);
        let key: Arc<str> = Arc::from(key);
        let lists = self.store.list(lists, &key);
        let used = self.store.next_stamp();
        self.store.entries.fetch_add(1, Relaxed);
        self.store.bytes.fetch_add(weight(&key, &value), Relaxed);
        self.shard.order.insert(used, Arc::clone(&key));
        self.shard.entries.insert(
            key,
            Entry {
                value,
                expires_at,
                lists,
                used,
            },
        );
    }

    /// Removes `key`'s entry (live or not) and drops it from the sets that list it.
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let (key, entry) = self.shard.entries.remove_entry(key)?;
        self.shard.order.remove(&entry.used);
        self.store.entries.fetch_sub(1, Relaxed);
        self.store
            .bytes
            .fetch_sub(weight(&key, &entry.value), Relaxed);
        self.store.unlist(&entry.lists, &key);
        Some(entry)
    }

    /// Removes the shard's least recently used entry; `false` when it has none.
    fn evict_oldest(&mut self) -> bool {
        let Some(key) = self
            .shard
            .order
            .first_key_value()
            .map(|(_, k)| Arc::clone(k))
        else {
            return false;
        };
        self.remove(&key).is_some()
    }

    /// Removes the entries whose key `doomed` says yes to; returns how many were live.
    fn remove_where(&mut self, doomed: impl Fn(&str, &Entry) -> bool, now: Instant) -> u64 {
        let keys: Vec<Arc<str>> = self
            .shard
            .entries
            .iter()
            .filter(|(k, e)| doomed(k, e))
            .map(|(k, _)| Arc::clone(k))
            .collect();
        keys.iter()
            .filter_map(|k| self.remove(k))
            .filter(|e| e.live(now))
            .count() as u64
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Still under the lock: what evictors read is what the shard holds.
        let oldest = self
            .shard
            .order
            .first_key_value()
            .map_or(EMPTY, |(s, _)| *s);
        self.slot.oldest.store(oldest, Relaxed);
    }
}

impl MemoryBackend {
    pub(crate) fn new(config: &MemoryConfig) -> Self {
        tracing::info!(
            target: "cache_runtime::connection",
            max_entries = config.max_entries,
            max_bytes = config.max_bytes,
            "no REDIS_URL or REDIS_HOST set: using the embedded in-process cache (not shared between processes)"
        );
        Self {
            slots: (0..SHARDS)
                .map(|_| Slot {
                    oldest: AtomicU64::new(EMPTY),
                    ..Slot::default()
                })
                .collect(),
            hash: KeyedHash::new(),
            clock: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            indexes: Mutex::default(),
            config: config.clone(),
            started: Instant::now(),
        }
    }

    fn lock_slot<'a>(&'a self, slot: &'a Slot) -> Locked<'a> {
        Locked {
            store: self,
            slot,
            // A panic under the lock leaves the shard consistent (no step can fail midway
            // but allocation), so a poisoned lock is still usable.
            shard: slot.shard.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Locks `key`'s shard.
    fn lock(&self, key: &str) -> Locked<'_> {
        let i = (self.hash.hash(key.as_bytes()) >> 32) as usize & (SHARDS - 1);
        self.lock_slot(&self.slots[i])
    }

    /// A stamp later than every stamp taken before under the same shard's lock.
    fn next_stamp(&self) -> u64 {
        self.clock.fetch_add(1, Relaxed)
    }

    fn indexes(&self) -> MutexGuard<'_, Indexes> {
        self.indexes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists `key` in each of the sets `names`; returns their names, each shared by all
    /// its entries.
    fn list(&self, names: &[&str], key: &Arc<str>) -> Box<[Arc<str>]> {
        if names.is_empty() {
            return Box::default();
        }
        let mut indexes = self.indexes();
        names
            .iter()
            .map(|&name| {
                let name = match indexes.get_key_value(name) {
                    Some((shared, _)) => Arc::clone(shared),
                    None => Arc::from(name),
                };
                indexes
                    .entry(Arc::clone(&name))
                    .or_default()
                    .insert(Arc::clone(key));
                name
            })
            .collect()
    }

    /// Drops `key` from the sets `names`, and each set once it lists nothing.
    fn unlist(&self, names: &[Arc<str>], key: &str) {
        if names.is_empty() {
            return;
        }
        let mut indexes = self.indexes();
        for name in names {
            if let Some(set) = indexes.get_mut(name) {
                set.remove(key);
                if set.is_empty() {
                    indexes.remove(name);
                }
            }
        }
    }

    fn over_budget(&self) -> bool {
        self.entries.load(Relaxed) > self.config.max_entries.get()
            || self.bytes.load(Relaxed) > self.config.max_bytes.get()
    }

    /// Evicts the least recently used entries of the whole store until both bounds hold.
    fn make_room(&self) {
        while self.over_budget() {
            let Some(slot) = self
                .slots
                .iter()
                .min_by_key(|s| s.oldest.load(Relaxed))
                .filter(|s| s.oldest.load(Relaxed) != EMPTY)
            else {
                return;
            };
            let mut shard = self.lock_slot(slot);
            // Another task may have made room meanwhile (an emptied shard publishes EMPTY
            // on unlock, so the next round looks elsewhere).
            if self.over_budget() && shard.evict_oldest() {
                self.evictions.fetch_add(1, Relaxed);
            }
        }
    }

    fn get_now(&self, key: &str) -> Option<Arc<[u8]>> {
        let now = Instant::now();
        self.lock(key)
            .live(key, true, now)
            .map(|e| Arc::clone(&e.value))
    }

    fn get_with_ttl_now(&self, key: &str) -> Option<(Arc<[u8]>, KeyTtl)> {
        let now = Instant::now();
        self.lock(key)
            .live(key, true, now)
            .map(|e| (Arc::clone(&e.value), e.ttl(now)))
    }

    /// SET, listing the key in its user's index and its tags' sets.
    fn set_now(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        index: Option<&str>,
        tags: &[String],
    ) {
        // A TTL beyond the clock's range (e.g. Duration::MAX) means "no expiry".
        let expires_at = ttl.and_then(|t| Instant::now().checked_add(t));
        if weight(key, value) > self.config.max_bytes.get() {
            // It could never fit; the value it replaces must not be served instead.
            self.lock(key).remove(key);
            return;
        }
        // Copied before locking: a large value's copy is no reason to hold the shard.
        let value: Arc<[u8]> = Arc::from(value);
        let lists: Vec<&str> = index
            .into_iter()
            .chain(tags.iter().map(String::as_str))
            .collect();
        self.lock(key).insert(key, value, expires_at, &lists);
        self.make_room();
    }

    fn delete_now(&self, key: &str) -> bool {
        let now = Instant::now();
        self.lock(key).remove(key).is_some_and(|e| e.live(now))
    }

    /// Whether `key` is live; not a use (Redis' `EXISTS` does not touch either).
    fn exists_now(&self, key: &str) -> bool {
        self.lock(key).live(key, false, Instant::now()).is_some()
    }

    /// `key`'s remaining lifetime; not a use.
    fn ttl_now(&self, key: &str) -> KeyTtl {
        let now = Instant::now();
        self.lock(key)
            .live(key, false, now)
            .map_or(KeyTtl::Missing, |e| e.ttl(now))
    }

    /// INCRBY: a missing key starts at 0; an existing TTL is kept, `ttl` is given to a key
    /// that has none (as `PEXPIRE … NX`).
    fn incr_now(&self, key: &str, amount: i64, ttl: Option<Duration>) -> Result<i64, CacheError> {
        let now = Instant::now();
        let mut shard = self.lock(key);
        let (base, expires_at, lists) = match shard.live(key, false, now) {
            None => (0, None, Box::default()),
            Some(e) => match std::str::from_utf8(&e.value)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(n) => (n, e.expires_at, e.lists.clone()),
                None => {
                    return Err(CacheError::NotACounter(
                        "value is not an integer or out of range".to_owned(),
                    ))
                }
            },
        };
        let next = base.checked_add(amount).ok_or_else(|| {
            CacheError::NotACounter("increment or decrement would overflow".to_owned())
        })?;
        let expires_at = expires_at.or_else(|| ttl.and_then(|t| now.checked_add(t)));
        shard.insert(
            key,
            Arc::from(next.to_string().as_bytes()),
            expires_at,
            &lists.iter().map(|l| &**l).collect::<Vec<&str>>(),
        );
        drop(shard);
        self.make_room();
        Ok(next)
    }

    /// Deletes every key starting with `prefix`; returns how many existed.
    fn clear_prefix_now(&self, prefix: &str) -> u64 {
        self.clear_where(&|k| k.starts_with(prefix))
    }

    /// Deletes every key `wanted` says yes to; returns how many were live.
    fn clear_where(&self, wanted: &dyn Fn(&str) -> bool) -> u64 {
        let now = Instant::now();
        self.slots
            .iter()
            .map(|slot| self.lock_slot(slot).remove_where(|k, _| wanted(k), now))
            .sum()
    }

    /// Deletes the keys listed in a user index or a tag's set (those starting with
    /// `member_prefix` when given); `forget` hears each before it goes. Returns how many
    /// existed.
    fn clear_index_now(
        &self,
        index: &str,
        member_prefix: Option<&str>,
        forget: &dyn Fn(&str),
    ) -> u64 {
        let members: Vec<Arc<str>> = {
            let mut indexes = self.indexes();
            let Some(set) = indexes.get_mut(index) else {
                return 0;
            };
            let taken: Vec<Arc<str>> = match member_prefix {
                None => set.drain().collect(),
                Some(p) => {
                    let taken: Vec<Arc<str>> =
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
        // The indexes' lock is released: deleting takes shard locks, which come first.
        members.iter().for_each(|k| forget(k));
        members.iter().filter(|k| self.delete_now(k)).count() as u64
    }

    /// Removes every expired entry (Redis' active expiry; here when the store is counted).
    fn purge_expired(&self) {
        let now = Instant::now();
        for slot in &self.slots {
            self.lock_slot(slot).remove_where(|_, e| !e.live(now), now);
        }
    }

    /// Live entries and their bytes.
    fn usage_now(&self) -> (u64, u64) {
        self.purge_expired();
        (self.entries.load(Relaxed), self.bytes.load(Relaxed))
    }

    /// Live keys per namespace under `prefix` (`{prefix}{namespace}:…`): exact, the store
    /// is in this process.
    fn namespaces_now(&self, prefix: &str) -> HashMap<String, u64> {
        let now = Instant::now();
        let mut out = HashMap::new();
        for slot in &self.slots {
            let shard = self.lock_slot(slot);
            for (key, entry) in &shard.shard.entries {
                if !entry.live(now) {
                    continue;
                }
                if let Some(ns) = namespace_of(key, prefix) {
                    *out.entry(ns.to_owned()).or_insert(0) += 1;
                }
            }
        }
        out
    }
}

impl Store for MemoryBackend {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn evictions(&self) -> Option<u64> {
        Some(self.evictions.load(Relaxed))
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
        Ok(self
            .get_with_ttl_now(key)
            .map(|(value, ttl)| (Bytes::Shared(value), ttl)))
    }

    async fn set(&self, write: Write<'_>) -> Result<(), CacheError> {
        tokio::task::consume_budget().await;
        self.set_now(write.key, write.value, write.ttl, write.index, write.tags);
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
        Ok(self.clear_index_now(index, member_prefix, &|_| {}))
    }

    async fn clear_tag(
        &self,
        index: &str,
        forget: &(dyn Fn(&str) + Sync),
    ) -> Result<u64, CacheError> {
        Ok(self.clear_index_now(index, None, forget))
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
            policy: Some("allkeys-lru".to_owned()),
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

    /// Exact, and unbounded by the budget: the store is in this process.
    async fn list_keys(
        &self,
        prefix: &str,
        limit: usize,
        _budget: ScanBudget,
    ) -> Result<crate::backend::KeyList, CacheError> {
        let now = Instant::now();
        let mut list = crate::backend::KeyList {
            complete: true,
            ..crate::backend::KeyList::default()
        };
        'slots: for slot in &self.slots {
            let shard = self.lock_slot(slot);
            for (key, entry) in &shard.shard.entries {
                list.scanned += 1;
                if !entry.live(now) || !key.starts_with(prefix) {
                    continue;
                }
                if list.keys.len() >= limit {
                    list.complete = false;
                    break 'slots;
                }
                list.keys.push((key.to_string(), entry.ttl(now)));
            }
        }
        list.keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(list)
    }

    async fn index_members(
        &self,
        index: &str,
        limit: usize,
    ) -> Result<crate::backend::KeyList, CacheError> {
        let mut members: Vec<Arc<str>> = self
            .indexes()
            .get(index)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        let total = members.len() as u64;
        members.sort();
        members.truncate(limit);
        // The sets' lock is released: reading TTLs takes shard locks, which come first.
        let keys: Vec<(String, KeyTtl)> = members
            .iter()
            .map(|k| (k.to_string(), self.ttl_now(k)))
            .collect();
        Ok(crate::backend::KeyList {
            scanned: keys.len() as u64,
            complete: keys.len() as u64 >= total,
            total: Some(total),
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;

    fn store(max_entries: u64, max_bytes: u64) -> MemoryBackend {
        MemoryBackend::new(&MemoryConfig {
            max_entries: NonZeroU64::new(max_entries).unwrap(),
            max_bytes: NonZeroU64::new(max_bytes).unwrap(),
        })
    }

    fn set(store: &MemoryBackend, key: &str) {
        store.set_now(key, b"v", None, None, &[]);
    }

    /// The keys of `keys` that are live, in order.
    fn alive<'k>(store: &MemoryBackend, keys: &[&'k str]) -> Vec<&'k str> {
        keys.iter()
            .copied()
            .filter(|k| store.exists_now(k))
            .collect()
    }

    /// Entries and bytes as the shards hold them, to check the running counters against.
    fn recount(store: &MemoryBackend) -> (u64, u64) {
        let mut counted = (0, 0);
        for slot in &store.slots {
            let shard = store.lock_slot(slot);
            assert_eq!(shard.shard.entries.len(), shard.shard.order.len());
            for (key, entry) in &shard.shard.entries {
                assert_eq!(shard.shard.order.get(&entry.used), Some(key));
                counted.0 += 1;
                counted.1 += weight(key, &entry.value);
            }
        }
        counted
    }

    #[test]
    fn evicts_the_least_recently_used_read_or_written() {
        let s = store(3, 1 << 20);
        for k in ["a", "b", "c"] {
            set(&s, k);
        }
        assert!(s.get_now("a").is_some());
        set(&s, "d");
        assert_eq!(alive(&s, &["a", "b", "c", "d"]), ["a", "c", "d"]);
        assert!(s.get_now("c").is_some());
        set(&s, "e");
        assert_eq!(alive(&s, &["a", "c", "d", "e"]), ["c", "d", "e"]);
    }

    #[test]
    fn exists_and_ttl_are_not_uses() {
        let s = store(3, 1 << 20);
        for k in ["a", "b", "c"] {
            set(&s, k);
        }
        assert!(s.exists_now("a"));
        assert_eq!(s.ttl_now("a"), KeyTtl::Persistent);
        set(&s, "d");
        assert_eq!(alive(&s, &["a", "b", "c", "d"]), ["b", "c", "d"]);
    }

    #[test]
    fn overwrites_and_increments_are_uses() {
        let s = store(3, 1 << 20);
        s.incr_now("a", 1, None).unwrap();
        for k in ["b", "c"] {
            set(&s, k);
        }
        set(&s, "b");
        assert_eq!(s.incr_now("a", 1, None).unwrap(), 2);
        set(&s, "d");
        assert_eq!(alive(&s, &["a", "b", "c", "d"]), ["a", "b", "d"]);
    }

    #[test]
    fn bytes_bound_evicts_too() {
        // Keys of 1 byte and values of 10: three fit in 35 bytes.
        let s = store(100, 35);
        for k in ["a", "b", "c", "d"] {
            s.set_now(k, &[0; 10], None, None, &[]);
        }
        assert_eq!(alive(&s, &["a", "b", "c", "d"]), ["b", "c", "d"]);
        assert_eq!(s.usage_now(), (3, 33));
        // A value that could never fit is not kept, and neither is the one it replaces.
        s.set_now("d", &[0; 40], None, None, &[]);
        assert_eq!(alive(&s, &["b", "c", "d"]), ["b", "c"]);
        assert_eq!(s.usage_now(), recount(&s));
    }

    #[test]
    fn removal_of_any_kind_unlists_the_key_from_its_sets() {
        let s = store(2, 1 << 20);
        s.set_now("u:a", b"v", None, Some("idx"), &[]);
        s.set_now("u:b", b"v", None, Some("idx"), &[]);
        set(&s, "x");
        set(&s, "y");
        assert!(s.indexes().is_empty(), "evicted keys are unlisted");

        s.set_now(
            "u:a",
            b"v",
            Some(Duration::from_millis(1)),
            Some("idx"),
            &[],
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(!s.exists_now("u:a"));
        assert!(s.indexes().is_empty(), "expired keys are unlisted");

        s.set_now("u:a", b"v", None, Some("idx"), &[]);
        s.set_now("u:a", b"w", None, Some("other"), &[]);
        assert!(!s.indexes().contains_key("idx"), "a rewrite moves the key");
        assert_eq!(s.clear_index_now("other", None, &|_| {}), 1);
        assert!(s.indexes().is_empty());

        // A key in a user index and two tags' sets: clearing one tag unlists it everywhere.
        let tags = ["tag:a".to_owned(), "tag:b".to_owned()];
        s.set_now("u:a", b"v", None, Some("idx"), &tags);
        s.set_now("u:b", b"v", None, None, &tags[1..]);
        let heard = Mutex::new(Vec::new());
        let forget = |k: &str| heard.lock().unwrap().push(k.to_owned());
        assert_eq!(s.clear_index_now("tag:a", None, &forget), 1);
        assert_eq!(*heard.lock().unwrap(), ["u:a"], "told before the delete");
        assert!(!s.indexes().contains_key("idx"));
        assert_eq!(s.indexes().get("tag:b").map(HashSet::len), Some(1));
        s.set_now(
            "u:b",
            b"v",
            Some(Duration::from_millis(1)),
            None,
            &tags[1..],
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            s.clear_index_now("tag:b", None, &|_| {}),
            0,
            "expired: not counted"
        );
        assert!(s.indexes().is_empty());
    }

    #[test]
    fn counters_follow_the_contents() {
        let s = store(50, 2_000);
        for i in 0..500u32 {
            let key = format!("k{}", i % 80);
            match i % 7 {
                0 => {
                    s.delete_now(&key);
                }
                1 => {
                    let _ = s.incr_now(&format!("n{}", i % 5), i64::from(i), None);
                }
                2 => s.set_now(
                    &key,
                    &[0; 3],
                    Some(Duration::from_nanos(1)),
                    Some("idx"),
                    &[],
                ),
                _ => s.set_now(&key, &vec![0; (i % 90) as usize], None, None, &[]),
            }
            assert_eq!(
                (s.entries.load(Relaxed), s.bytes.load(Relaxed)),
                recount(&s)
            );
            assert!(!s.over_budget());
        }
        std::thread::sleep(Duration::from_millis(1));
        let (entries, _) = s.usage_now();
        assert_eq!(s.usage_now(), recount(&s));
        assert_eq!(s.clear_prefix_now(""), entries);
        assert_eq!(s.usage_now(), (0, 0));
        assert!(s.indexes().is_empty());
    }

    #[test]
    fn increments_keep_redis_semantics() {
        let s = store(10, 1 << 20);
        s.set_now("text", b"abc", None, None, &[]);
        assert!(matches!(
            s.incr_now("text", 1, None),
            Err(CacheError::NotACounter(_))
        ));
        s.set_now("max", i64::MAX.to_string().as_bytes(), None, None, &[]);
        assert!(s.incr_now("max", 1, None).is_err());
        assert_eq!(
            s.incr_now("n", -3, Some(Duration::from_secs(60))).unwrap(),
            -3
        );
        let KeyTtl::ExpiresIn(first) = s.ttl_now("n") else {
            panic!("a new counter gets the TTL");
        };
        assert_eq!(
            s.incr_now("n", 5, Some(Duration::from_secs(3_600)))
                .unwrap(),
            2
        );
        assert!(matches!(s.ttl_now("n"), KeyTtl::ExpiresIn(d) if d <= first));
    }
}
